"""The Cognition service's pure text cores (tokens, polarity, BM25 ranking, recency,
summaries) by exact tables."""

from __future__ import annotations

import math
from typing import Any

import jsonschema
import pytest

from agentmesh_cli.errors import ConfigError
from agentmesh_cli.services.cognition import TOOL_EXAMPLES, create_app
from agentmesh_cli.services.text import (
    bm25_scores,
    content_terms,
    index_terms,
    polarity_counts,
    query_terms,
    rank_items,
    recency_score,
    search_items,
    sentiment,
    summary,
    tokenise,
    topics,
)
from tests.helpers.services import TOKEN


# pure cores -------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "tokens"), [
    ("Hello, World!", ["hello", "world"]),
    ("I DON'T like it\u2014it\u2019s not good", ["i", "don't", "like", "it", "it's", "not", "good"]),
    ("snake_case e-mail 42x 3.14", ["snake", "case", "e", "mail", "42x", "3", "14"]),
    ("Ünïcode straße", ["ünïcode", "straße"]),
    ("  ''  ", []),
])
def test_tokenise(text: str, tokens: list[str]) -> None:
    assert tokenise(text) == tokens


@pytest.mark.parametrize(("text", "index", "content", "query"), [
    ("Alice's cat and the dog", ["alice", "cat", "and", "the", "dog"], ["alice", "cat", "dog"],
     ["alice", "cat", "dog"]),
    ("the who", ["the", "who"], [], ["the", "who"]),  # only stopwords: kept to search at all
    ("cat cat 42 I", ["cat", "cat", "42", "i"], ["cat", "cat"], ["cat"]),
    ("it's not there", ["it's", "not", "there"], [], ["it's", "not", "there"]),
])
def test_terms(text: str, index: list[str], content: list[str], query: list[str]) -> None:
    assert index_terms(text) == index
    assert content_terms(text) == content
    assert query_terms(text) == query


@pytest.mark.parametrize(("text", "counts"), [
    ("I like this", (1, 0, 0)),
    ("I dislike this", (0, 1, 0)),  # a word, not a substring: no "like" in "dislike"
    ("That is likely", (0, 0, 0)),
    ("not good", (0, 1, 1)),
    ("I don't like it", (0, 1, 1)),
    ("This is not bad at all, it is great", (2, 0, 1)),
    ("not the best. But fine", (1, 1, 1)),  # the clause ends the negation
    ("no, good", (1, 0, 0)),
    ("never would I have thought it good", (1, 0, 0)),  # past the negation's 3 words
    ("GREAT! Terrible? awful", (1, 2, 0)),
])
def test_polarity_counts(text: str, counts: tuple[int, int, int]) -> None:
    assert polarity_counts(text) == counts


def item(mid: str, ts: float, content: str, user: str = "u",
         conversation: str | None = "c") -> dict[str, Any]:
    return {"message_id": mid, "user_id": user, "conversation_id": conversation, "timestamp": ts,
            "content": content, "metadata": {}}


def test_sentiment_of_messages() -> None:
    items = [item("m1", 3, "I dislike this"), item("m2", 2, "great, really great", "v"),
             item("m3", 1, "not good and not helpful"), item("m4", 0, "ok then")]
    assert sentiment(items) == {
        "message_count": 4, "positive": 2, "negative": 3, "negated": 2, "score": -0.2,
        "label": "negative", "messages": [
            {"message_id": "m1", "user_id": "u", "score": -1.0, "label": "negative"},
            {"message_id": "m2", "user_id": "v", "score": 1.0, "label": "positive"},
            {"message_id": "m3", "user_id": "u", "score": -1.0, "label": "negative"},
            {"message_id": "m4", "user_id": "u", "score": 0.0, "label": "neutral"},
        ]}
    assert sentiment([item("m", 0, "I dislike this")])["label"] == "negative"


@pytest.mark.parametrize(("timestamp", "now", "half_life", "expected"), [
    (100.0, 100.0, 10.0, 1.0),
    (90.0, 100.0, 10.0, 0.5),
    (80.0, 100.0, 10.0, 0.25),
    (130.0, 100.0, 10.0, 1.0),  # from the future: as recent as now
    (0.0, 7 * 86400.0, 7 * 86400.0, 0.5),
])
def test_recency_score(timestamp: float, now: float, half_life: float, expected: float) -> None:
    assert recency_score(timestamp, now, half_life) == expected


def lucene_bm25(documents: list[list[str]], term: str, k1: float = 1.5, b: float = 0.75) -> list[float]:
    n, df = len(documents), sum(term in d for d in documents)
    idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
    avgdl = sum(map(len, documents)) / n
    return [idf * d.count(term) / (d.count(term) + k1 * (1 - b + b * len(d) / avgdl)) for d in documents]


CORPUS = [  # newest first, as memory lists them
    item("a", 10000.0, "The cat sat on the mat"),
    item("b", 9900.0, "My cat likes another cat"),
    item("c", 9800.0, "Weather is sunny today", conversation=None),
    item("d", 9700.0, "A cat!", conversation="d"),
]


def test_bm25_is_the_lucene_formula() -> None:
    documents = [index_terms(i["content"]) for i in CORPUS]
    assert bm25_scores(documents, ["cat"]) == pytest.approx(lucene_bm25(documents, "cat"), rel=1e-6)
    assert bm25_scores(documents, ["unknown"]) == [0.0] * 4
    assert bm25_scores([], ["cat"]) == [] and bm25_scores([[], []], ["cat"]) == [0.0, 0.0]
    assert bm25_scores(documents, []) == [0.0] * 4


@pytest.mark.parametrize(("weight", "expected"), [
    # (message_id, score, relevance, recency); half-life 100 s, now 10000
    (0.0, [("b", 1.0, 1.0, 0.5), ("d", 0.971042, 0.971042, 0.125), ("a", 0.624069, 0.624069, 1.0)]),
    (0.25, [("b", 0.875, 1.0, 0.5), ("d", 0.759532, 0.971042, 0.125), ("a", 0.718052, 0.624069, 1.0),
            ("c", 0.0625, 0.0, 0.25)]),
    (1.0, [("a", 1.0, 0.624069, 1.0), ("b", 0.5, 1.0, 0.5), ("c", 0.25, 0.0, 0.25),
           ("d", 0.125, 0.971042, 0.125)]),
])
def test_rank_items_blends_relevance_and_recency(weight: float, expected: list[tuple[Any, ...]]) -> None:
    ranked = rank_items(CORPUS, query_terms("the cat"), 10000.0, weight, 10, half_life=100.0)
    assert [(e["item"]["message_id"], e["score"], e["relevance"], e["recency"]) for e in ranked] == expected
    assert ranked[0]["item"] == next(i for i in CORPUS if i["message_id"] == expected[0][0])


def test_rank_items_without_a_query_is_recency_and_limit_cuts() -> None:
    ranked = rank_items(list(reversed(CORPUS)), [], 10000.0, 0.3, 3, half_life=100.0)
    assert [(e["item"]["message_id"], e["score"], e["relevance"], e["recency"]) for e in ranked] == [
        ("a", 1.0, None, 1.0), ("b", 0.5, None, 0.5), ("c", 0.25, None, 0.25)]
    # decayed to nothing, still newest first
    assert [e["item"]["message_id"] for e in rank_items(CORPUS, [], 1e12, 1.0, 10)] == ["a", "b", "c", "d"]
    assert rank_items([], ["cat"], 0.0, 0.5, 10) == []


def test_search_items_keeps_matches_best_first_and_newer_on_ties() -> None:
    corpus = [item("new", 20, "red shoes"), item("old", 10, "red shoes"), item("x", 30, "blue hat"),
              item("y", 5, "red red red shoes shoes")]
    assert [(e["item"]["message_id"], e["score"]) for e in search_items(corpus, ["red"], 10)] == [
        ("y", 1.0), ("new", 0.823834), ("old", 0.823834)]
    assert [e["item"]["message_id"] for e in search_items(corpus, ["red"], 1)] == ["y"]
    assert search_items(corpus, ["green"], 10) == []


CONVERSATION = [  # newest first
    item("m3", 1300.0, "Shipping was slow but the shoes are great", "u"),
    item("m2", 1200.0, "Sorry about the shipping delay with your shoes", "agent"),
    item("m1", 1000.0, "Where are my shoes? Shipping takes forever", "u"),
]


def test_topics_and_summary() -> None:
    assert topics(CONVERSATION, top=4) == {
        "message_count": 3, "term_count": 12, "topics": [
            {"term": "shipping", "count": 3, "weight": 0.25},
            {"term": "shoes", "count": 3, "weight": 0.25},
            {"term": "delay", "count": 1, "weight": 0.083333},
            {"term": "forever", "count": 1, "weight": 0.083333}]}
    assert summary(CONVERSATION) == {
        "message_count": 3,
        "participants": [{"user_id": "u", "message_count": 2}, {"user_id": "agent", "message_count": 1}],
        "time_span": {"start": 1000.0, "end": 1300.0, "seconds": 300.0},
        "first_message": CONVERSATION[2],
        "last_message": CONVERSATION[0],
        "key_terms": ["shipping", "shoes", "delay", "forever", "great"],
    }


def test_an_app_with_nowhere_to_read_memory_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="needs a mesh or a memory_url"):
        create_app(service_token=TOKEN)


def test_catalogue_describes_every_tool_and_resource() -> None:
    app = create_app(memory_url="http://127.0.0.1:1", service_token=TOKEN)
    catalogue = app.state.catalogue
    assert catalogue.service == "cognition"
    assert list(catalogue.tools) == ["get_context", "search_history", "analyze_conversation"]
    for name, spec in catalogue.tools.items():
        jsonschema.Draft202012Validator.check_schema(spec.input_schema)
        jsonschema.validate(TOOL_EXAMPLES[name], spec.input_schema)
        assert spec.input_schema["additionalProperties"] is False
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"user_id": "u", "limit": 0}, catalogue.tools["get_context"].input_schema)
    assert [r.template for r in catalogue.resources] == [
        "context/{user_id}", "conversation_analysis/{conversation_id}/{analysis_type}"]


