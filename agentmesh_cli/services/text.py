"""The pure text core of the Cognition service: words, BM25 relevance, recency, ranking,
and conversation analysis (summary, topics, sentiment). Functions of lists of message
dicts with the clock as an argument: no I/O, so they are tested with exact tables.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import bm25s

RECENCY_HALF_LIFE_S = 7 * 86400.0  # a week-old message counts half as recent as a new one
TOP_TERMS = 10  # topics listed by `topics`
KEY_TERMS = 5  # terms listed by `summary`
NEGATION_SCOPE = 3  # a negator flips sentiment words up to this many words after it
SENTIMENT_THRESHOLD = 0.2  # |score| below this is neutral
DIGITS = 6  # scores are rounded to this many decimals (stable orders, exact tests)


# text -----------------------------------------------------------------------------------
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_CLAUSE_BREAK = re.compile(r"[.!?;:,\n]+")
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before
being below between both but by can could did do does doing down during each either else
even ever few for from further get got had has have having he her here hers herself him
himself his how i if in into is it its itself just let me more most much must my myself
of off on once only or other our ours ourselves out over own really same shall she should
so some such than that the their theirs them themselves then there these they this those
through to too under until up upon us very was we were what when where which while who whom
why will with would yet you your yours yourself yourselves
i'm i've i'll i'd you're you've you'll you'd he's she's it's we're we've we'll they're
they've they'll that's there's what's let's
don't doesn't didn't isn't aren't wasn't weren't won't wouldn't can't couldn't shouldn't
haven't hasn't hadn't
""".split())
NEGATORS = frozenset({"not", "no", "never", "none", "nobody", "nothing", "neither", "nor",
                      "cannot", "without", "hardly", "barely"})
POSITIVE = frozenset("""
good great excellent amazing awesome wonderful fantastic perfect brilliant superb nice
love loved loves lovely like liked likes enjoy enjoyed enjoys happy glad pleased delighted
excited thanks thank grateful helpful useful best better beautiful fun cool easy fine
satisfied recommend impressive fast reliable works worked correct
""".split())
NEGATIVE = frozenset("""
bad terrible awful horrible poor worst worse hate hated hates dislike disliked dislikes
sad angry annoyed annoying upset unhappy disappointed disappointing frustrated frustrating
broken fail failed fails failure problem problems wrong error errors slow ugly useless
difficult confusing crash crashed crashes painful sucks
""".split())


def tokenise(text: str) -> list[str]:
    """Lower-case words (letters and digits, inner apostrophes kept: "don't")."""
    return _WORD.findall(text.replace("\u2019", "'").lower())


def _term(token: str) -> str:
    return token[:-2] if token.endswith("'s") and token not in STOPWORDS else token


def index_terms(text: str) -> list[str]:
    """The words of a message as BM25 indexes them (possessive 's dropped)."""
    return [_term(token) for token in tokenise(text)]


def _informative(term: str) -> bool:
    return (len(term) > 1 and term not in STOPWORDS and term not in NEGATORS
            and any(ch.isalpha() for ch in term))


def content_terms(text: str) -> list[str]:
    """The words that say what a text is about: no stopwords, negators or bare numbers."""
    return [term for term in index_terms(text) if _informative(term)]


def query_terms(query: str) -> list[str]:
    """A query's distinct content words; all its distinct words if it has none ("the who")."""
    return list(dict.fromkeys(content_terms(query) or index_terms(query)))


# ranking --------------------------------------------------------------------------------
def bm25_scores(documents: list[list[str]], terms: list[str]) -> list[float]:
    """BM25 of `terms` against each document (lists of index terms); 0.0 where none occur."""
    if not terms or not any(documents):
        return [0.0] * len(documents)
    retriever = bm25s.BM25()
    retriever.index(documents, show_progress=False)
    ids = retriever.get_tokens_ids(terms)
    if not ids:
        return [0.0] * len(documents)
    return [float(score) for score in retriever.get_scores_from_ids(ids)]


def relevance_scores(items: list[dict[str, Any]], terms: list[str]) -> list[float]:
    """BM25 over the items' contents divided by the best, so in [0, 1] (all 0 without a match)."""
    raw = bm25_scores([index_terms(str(item.get("content", ""))) for item in items], terms)
    best = max(raw, default=0.0)
    return [score / best if best > 0 else 0.0 for score in raw]


def recency_score(timestamp: float, now: float, half_life: float = RECENCY_HALF_LIFE_S) -> float:
    """1.0 for now (or a future time), halving every `half_life` seconds of age."""
    return float(0.5 ** (max(0.0, now - timestamp) / half_life))


def _ranked(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best score first; equal scores newer first (the sort is stable beyond that)."""
    return sorted(entries, key=lambda e: (-e["score"], -float(e["item"].get("timestamp", 0.0))))


def rank_items(items: list[dict[str, Any]], terms: list[str], now: float, recency_weight: float,
               limit: int, half_life: float = RECENCY_HALF_LIFE_S) -> list[dict[str, Any]]:
    """get_context's ranking: [{item, score, relevance, recency}] best first, at most `limit`.
    Without terms, relevance is None and the score is the recency."""
    relevance: list[float | None] = (list(relevance_scores(items, terms)) if terms
                                     else [None] * len(items))
    entries = []
    for item, rel in zip(items, relevance, strict=True):
        rec = recency_score(float(item.get("timestamp", 0.0)), now, half_life)
        if rel is None:
            score = rec
        elif recency_weight == 0 and rel == 0:
            continue  # relevance only, and this one shares no word with the query
        else:
            score = (1 - recency_weight) * rel + recency_weight * rec
        entries.append({"item": item, "score": round(score, DIGITS),
                        "relevance": None if rel is None else round(rel, DIGITS),
                        "recency": round(rec, DIGITS)})
    return _ranked(entries)[:limit]


def search_items(items: list[dict[str, Any]], terms: list[str], limit: int) -> list[dict[str, Any]]:
    """search_history's ranking: the items sharing a word with the query, [{item, score}]
    (BM25 relative to the best match), best first, at most `limit`."""
    entries = [{"item": item, "score": round(rel, DIGITS)}
               for item, rel in zip(items, relevance_scores(items, terms), strict=True) if rel > 0]
    return _ranked(entries)[:limit]


# analysis -------------------------------------------------------------------------------
def _chronological(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(items, key=lambda item: float(item.get("timestamp", 0.0)))


def term_counts(items: list[dict[str, Any]]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for item in items:
        counts.update(content_terms(str(item.get("content", ""))))
    return counts


def topics(items: list[dict[str, Any]], top: int = TOP_TERMS) -> dict[str, Any]:
    """The most frequent content words, weight = share of all content words."""
    counts = term_counts(items)
    total = sum(counts.values())
    best = sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))[:top]
    return {"message_count": len(items), "term_count": total,
            "topics": [{"term": term, "count": count, "weight": round(count / total, DIGITS)}
                       for term, count in best]}


def summary(items: list[dict[str, Any]], key_terms: int = KEY_TERMS) -> dict[str, Any]:
    """Counts, participants (most messages first), time span, first and last message, key words."""
    ordered = _chronological(items)
    senders = Counter(str(item.get("user_id")) for item in items)
    participants = sorted(senders.items(), key=lambda pair: (-pair[1], pair[0]))
    first, last = (ordered[0], ordered[-1]) if ordered else (None, None)
    start = float(first["timestamp"]) if first else None
    end = float(last["timestamp"]) if last else None
    return {
        "message_count": len(items),
        "participants": [{"user_id": user, "message_count": n} for user, n in participants],
        "time_span": {"start": start, "end": end,
                      "seconds": (end - start) if start is not None and end is not None else 0.0},
        "first_message": first,
        "last_message": last,
        "key_terms": [t["term"] for t in topics(items, key_terms)["topics"]],
    }


def _negates(token: str) -> bool:
    return token in NEGATORS or token.endswith("n't")


def polarity_counts(text: str) -> tuple[int, int, int]:
    """(positive, negative, negated) sentiment words of a text. A negator flips the sentiment
    words up to NEGATION_SCOPE words after it within its clause ("not good" is negative)."""
    positive = negative = negated = 0
    for clause in _CLAUSE_BREAK.split(text):
        scope = 0
        for token in tokenise(clause):
            if _negates(token):
                scope = NEGATION_SCOPE
                continue
            polarity = 1 if token in POSITIVE else -1 if token in NEGATIVE else 0
            if polarity and scope:
                polarity, negated = -polarity, negated + 1
            positive += polarity > 0
            negative += polarity < 0
            scope = max(0, scope - 1)
    return positive, negative, negated


def _score_and_label(positive: int, negative: int) -> tuple[float, str]:
    score = (positive - negative) / (positive + negative) if positive + negative else 0.0
    label = ("positive" if score >= SENTIMENT_THRESHOLD
             else "negative" if score <= -SENTIMENT_THRESHOLD else "neutral")
    return round(score, DIGITS), label


def sentiment(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Positive and negative word counts, score (pos - neg) / (pos + neg) in [-1, 1], a label;
    the same per message (in the given order)."""
    totals = [0, 0, 0]
    messages = []
    for item in items:
        counts = polarity_counts(str(item.get("content", "")))
        totals = [a + b for a, b in zip(totals, counts, strict=True)]
        score, label = _score_and_label(counts[0], counts[1])
        messages.append({"message_id": item.get("message_id"), "user_id": item.get("user_id"),
                         "score": score, "label": label})
    score, label = _score_and_label(totals[0], totals[1])
    return {"message_count": len(items), "positive": totals[0], "negative": totals[1],
            "negated": totals[2], "score": score, "label": label, "messages": messages}


ANALYSES: dict[str, Callable[[list[dict[str, Any]]], dict[str, Any]]] = {
    "summary": summary, "topics": topics, "sentiment": sentiment,
}


def takes_part(items: list[dict[str, Any]], user_id: str) -> bool:
    return any(item.get("user_id") == user_id for item in items)
