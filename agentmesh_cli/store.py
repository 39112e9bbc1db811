"""The Redis layer: every key from `constants.Keys`, redis-py errors wrapped in StoreError."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import orjson
import redis

from agentmesh_cli.constants import OPERATOR_SENDERS, Keys
from agentmesh_cli.envelope import is_agent_name
from agentmesh_cli.errors import SnapshotError, StoreError

T = TypeVar("T")

# Record a batch of handled message ids in an agent's ledger and count them, atomically:
# an id the ledger already holds is counted as handled twice, not as handled.
# A batch carries a token: a batch whose reply was lost (Redis killed mid-answer) and which
# is sent again (by the agent or redis-py's retry) is recognised and not counted twice.
# KEYS: ledger, counters, counter owners, last batch token;
# ARGV: owner, window, first score, token, then id, sender pairs.
_RECORD_HANDLED = """
if redis.call('GET', KEYS[4]) == ARGV[4] then return {0, 0} end
redis.call('SET', KEYS[4], ARGV[4])
local new, twice, from = 0, 0, {}
local score = tonumber(ARGV[3])
for i = 5, #ARGV, 2 do
  if redis.call('ZADD', KEYS[1], 'NX', score, ARGV[i]) == 1 then
    new = new + 1
    from[ARGV[i + 1]] = (from[ARGV[i + 1]] or 0) + 1
  else
    twice = twice + 1
  end
  score = score + 1
end
for sender, n in pairs(from) do
  redis.call('HINCRBY', KEYS[2], 'handled_from:' .. sender, n)
end
if new > 0 then redis.call('HINCRBY', KEYS[2], 'messages_in', new) end
if twice > 0 then redis.call('HINCRBY', KEYS[2], 'handled_twice', twice) end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[2]) - 1)
redis.call('SADD', KEYS[3], ARGV[1])
return {new, twice}
"""

# KEYS: replies hash, its order zset; ARGV: window, score, then (request id, reply) pairs
# KEYS: the epoch; ARGV: the epoch read before the topics were made ("" for none), the new one
_NEW_EPOCH = """
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('PUBLISH', KEYS[2], 'epoch ' .. ARGV[2])
  return ARGV[2]
end
return current
"""

_CACHE_REPLIES = """
local score = tonumber(ARGV[2])
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[2], score, ARGV[i])
end
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[1])
if over > 0 then
  local old = redis.call('ZRANGE', KEYS[2], 0, over - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
  redis.call('HDEL', KEYS[1], unpack(old))
end
return over
"""

PROPOSALS_KEPT = 1000  # proposals listed in the time index
PROPOSAL_TTL_S = 86_400  # a proposal record lives a day


AUTH_REFUSED = ("Redis refused the mesh's password: the embedded Valkey's is in the mesh's "
                "secrets file (.agentmesh/secrets.json) unless AGENTMESH_REDIS_PASSWORD "
                "overrides it; an external Redis takes it in redis.url")


def check_snapshot(raw: str | bytes | None) -> dict[str, Any] | None:
    """The topology snapshot key's value as the manager's JSON object, None when there is
    none yet; SnapshotError when it holds something else."""
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError as exc:  # json.JSONDecodeError, or bytes that are not UTF-8
        raise SnapshotError(f"malformed topology snapshot in Redis: not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SnapshotError(f"malformed topology snapshot in Redis: not a JSON object but "
                            f"{type(data).__name__}")
    return data


def auth_refused(exc: BaseException) -> bool:
    """Is this redis-py error Redis refusing us for a missing or wrong password?"""
    if isinstance(exc, redis.AuthenticationError | redis.AuthenticationWrongNumberOfArgsError):
        return True
    text = str(exc)
    return isinstance(exc, redis.ResponseError) and text.startswith(("NOAUTH", "WRONGPASS"))


@contextmanager
def redis_errors(action: str) -> Iterator[None]:
    """A redis-py error inside becomes a StoreError naming `action` (a refused password
    says so, and how to fix it)."""
    try:
        yield
    except redis.RedisError as exc:
        if auth_refused(exc):
            raise StoreError(f"Redis {action} failed: {AUTH_REFUSED}") from exc
        raise StoreError(f"Redis {action} failed: {exc}") from exc


class Store:
    """Typed access to one mesh's keys."""

    def __init__(self, url: str, mesh: str, timeout: float = 5.0) -> None:
        self.keys = Keys(mesh)
        self.mesh = mesh
        with redis_errors("connect"):
            self.redis = redis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True
            )
        self._record_handled = self.redis.register_script(_RECORD_HANDLED)
        self._cache_replies = self.redis.register_script(_CACHE_REPLIES)
        self._new_epoch = self.redis.register_script(_NEW_EPOCH)

    def _call(self, action: str, fn: Callable[[], T]) -> T:
        with redis_errors(action):
            return fn()

    def ping(self) -> bool:
        return self.problem() is None

    def problem(self) -> str | None:
        """None when Redis answers PING; else why not, in a few words."""
        try:
            return None if self.redis.ping() else "no PONG"
        except redis.RedisError as exc:
            return AUTH_REFUSED if auth_refused(exc) else "no answer"

    # registry ------------------------------------------------------------------
    def register_agent(self, name: str, record: dict[str, Any]) -> None:
        """Write an agent's registry record (at join and every heartbeat) and remember, for
        good, that it joined (`members`), in one round trip."""
        with redis_errors("register"):
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(self.keys.agents, name, json.dumps(record))
            pipe.sadd(self.keys.members, name)
            pipe.execute()

    def set_accepts(self, name: str, schemas: dict[str, Any]) -> None:
        """What agent `name`'s role accepts (message type -> JSON schema), for the gateway."""
        if schemas:
            self._call("write accepts", lambda: self.redis.hset(self.keys.accepts, name, json.dumps(schemas)))
        else:
            self._call("write accepts", lambda: self.redis.hdel(self.keys.accepts, name))

    def accepts(self) -> dict[str, dict[str, Any]]:
        """Every agent's published accepts: agent -> message type -> JSON schema."""
        raw = self._call("read accepts", lambda: self.redis.hgetall(self.keys.accepts))
        return {str(name): json.loads(value) for name, value in raw.items()}

    def unregister_agent(self, name: str) -> None:
        self._call("unregister", lambda: self.redis.hdel(self.keys.agents, name))

    def is_member(self, name: str) -> bool:
        """Has `name` ever joined?"""
        return bool(self._call("read members", lambda: self.redis.sismember(self.keys.members, name)))

    def may_answer(self, name: str, declared: Iterable[str]) -> bool:
        """May an ask go to `name` (ctx.ask, `agentmesh ask`): declared in mesh.yaml, or
        joined once (an agent that is only restarting is waited for). True while Redis
        cannot tell: the ask is sent, and its timeout answers."""
        if name in declared:
            return True
        try:
            return self.is_member(name)
        except StoreError:
            return True

    def joined_check(self) -> Callable[[str], bool]:
        """A check of senders for the roles that read what agents write: has the sender
        joined once, or is it an operator's tool (`cli`, `chaos`)? Answers are cached; a
        name that can never be an agent's costs no round trip; while Redis cannot tell,
        the sender is let through rather than a real message dropped."""
        known = set(OPERATOR_SENDERS)

        def joined(sender: str) -> bool:
            if sender in known:
                return True
            if not is_agent_name(sender):
                return False
            try:
                member = self.is_member(sender)
            except StoreError:
                return True
            if member:
                known.add(sender)
            return member

        return joined

    def agents(self) -> dict[str, dict[str, Any]]:
        raw = self._call("read registry", lambda: self.redis.hgetall(self.keys.agents))
        return {str(name): json.loads(value) for name, value in raw.items()}

    # readiness -----------------------------------------------------------------
    def mark_ready(self, program: str, pid: int) -> None:
        record = json.dumps({"pid": pid, "ts": time.time()})
        self._call("mark ready", lambda: self.redis.set(self.keys.ready(program), record))

    def ready_pid(self, program: str) -> int | None:
        raw = self._call("read readiness", lambda: self.redis.get(self.keys.ready(program)))
        return int(json.loads(raw)["pid"]) if raw else None

    # draining ------------------------------------------------------------------
    def set_draining(self, on: bool) -> None:
        """Mark the mesh as draining (`agentmesh down`), or clear the mark (`up`)."""
        key = self.keys.draining

        def write() -> None:
            pipe = self.redis.pipeline(transaction=True)
            pipe.set(key, "1") if on else pipe.delete(key)
            pipe.publish(self.keys.mesh_channel, f"draining {int(on)}")  # the doorbells follow it
            pipe.execute()
        self._call("set draining", write)

    def draining(self) -> bool:
        return bool(self._call("read draining", lambda: self.redis.exists(self.keys.draining)))

    # broker epoch ----------------------------------------------------------------
    def kafka_epoch(self) -> str | None:
        epoch = self._call("read epoch", lambda: self.redis.get(self.keys.kafka_epoch))
        return None if epoch is None else str(epoch)

    def new_kafka_epoch(self, seen: str | None) -> str:
        """A new epoch in place of `seen`, the one read before the topics were made. When
        another process replaced it meanwhile (roles starting at once on an empty broker
        each made the topics), theirs: one epoch, not one each, or each would rewind."""
        keys, new = [self.keys.kafka_epoch, self.keys.mesh_channel], uuid.uuid4().hex
        return str(self._call("write epoch", lambda: self._new_epoch(keys=keys, args=[seen or "", new])))

    # counters ------------------------------------------------------------------
    def add_counters(self, owner: str, counts: Counter[str]) -> None:
        """Add a batch of counts in one round trip (roles batch, never one call a message)."""
        if not counts:
            return
        with redis_errors("count"):
            pipe = self.redis.pipeline(transaction=False)
            for name, value in counts.items():
                pipe.hincrby(self.keys.counters(owner), name, value)
            pipe.sadd(self.keys.counter_owners, owner)
            pipe.execute()

    def counters(self, owner: str) -> dict[str, int]:
        raw = self._call("read counters", lambda: self.redis.hgetall(self.keys.counters(owner)))
        return {str(name): int(value) for name, value in raw.items()}

    def all_counters(self) -> dict[str, dict[str, int]]:
        """Every owner's counters in two round trips (one per owner was ~0.25 s at 128 agents)."""
        owners = sorted(str(o) for o in self._call("read counters",
                                                   lambda: self.redis.smembers(self.keys.counter_owners)))
        with redis_errors("read counters"):
            pipe = self.redis.pipeline(transaction=False)
            for owner in owners:
                pipe.hgetall(self.keys.counters(owner))
            hashes = pipe.execute() if owners else []
        return {owner: {str(name): int(value) for name, value in raw.items()}
                for owner, raw in zip(owners, hashes, strict=True)}

    # an agent's ledger of handled messages ---------------------------------------
    def record_handled(self, agent: str, handled: list[tuple[str, str]], first_score: int,
                       window: int, ledger: str | None = None) -> tuple[int, int]:
        """Add (message id, sender) pairs to the ledger (the agent's, or its replica group's
        `ledger`) and count them in the agent's counters in one atomic step; return (newly
        recorded, already recorded = handled twice)."""
        if not handled:
            return 0, 0
        args: list[Any] = [agent, window, first_score, f"{first_score}:{handled[0][0]}"]
        for message_id, sender in handled:
            args += [message_id, sender]
        book = self.keys.handled(ledger or agent)
        keys = [book, self.keys.counters(agent), self.keys.counter_owners,
                book + ":batch" + (f":{agent}" if ledger and ledger != agent else "")]
        with redis_errors("record handled messages"):
            result = self._record_handled(keys=keys, args=args)
        return int(result[0]), int(result[1])

    def cache_replies(self, agent: str, replies: list[tuple[str, str]], window: int) -> None:
        """Keep (request id, reply as JSON) pairs in the agent's reply cache (the newest
        `window`), in one atomic step."""
        if not replies:
            return
        args: list[Any] = [window, time.time_ns() // 1000]
        for request_id, reply in replies:
            args += [request_id, reply]
        with redis_errors("cache replies"):
            self._cache_replies(keys=[self.keys.replies(agent), self.keys.replies_order(agent)], args=args)

    def once_get(self, agent: str, message_id: str, key: str) -> str | None:
        name = self.keys.once(agent, message_id)
        raw = self._call("read a step's result", lambda: self.redis.hget(name, key))
        return None if raw is None else str(raw)

    def once_put(self, agent: str, message_id: str, key: str, value: str, ttl_s: int) -> None:
        """Keep a step's result for a re-run of the handler, for `ttl_s` at most."""
        name = self.keys.once(agent, message_id)
        with redis_errors("keep a step's result"):
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(name, key, value)
            pipe.expire(name, ttl_s)
            pipe.execute()

    def once_forget(self, agent: str, message_ids: list[str]) -> None:
        if message_ids:
            self._call("forget steps' results",
                       lambda: self.redis.delete(*(self.keys.once(agent, m) for m in message_ids)))

    def cached_reply(self, agent: str, request_id: str) -> str | None:
        raw = self._call("read reply cache", lambda: self.redis.hget(self.keys.replies(agent), request_id))
        return None if raw is None else str(raw)

    def was_handled(self, ledger: str, message_id: str) -> bool:
        """Does ledger `ledger` hold `message_id` (a replica asks its group's)?"""
        return self._call("read the ledger",
                          lambda: self.redis.zscore(self.keys.handled(ledger), message_id)) is not None

    def handled_ids(self, agent: str, window: int) -> tuple[list[str], int]:
        """The newest `window` ids of the agent's ledger, oldest first, and the last score."""
        raw: list[Any] = self._call(
            "read handled messages",
            lambda: list(self.redis.zrange(self.keys.handled(agent), -window, -1, withscores=True)))
        return [str(pair[0]) for pair in raw], int(raw[-1][1]) if raw else 0

    # service clients -------------------------------------------------------------
    def set_service_clients(self, owner: str, state: dict[str, Any]) -> None:
        data = orjson.dumps(state)
        self._call("write service clients", lambda: self.redis.hset(self.keys.service_clients, owner, data))

    def service_clients(self) -> dict[str, dict[str, Any]]:
        raw = self._call("read service clients", lambda: self.redis.hgetall(self.keys.service_clients))
        return {str(owner): json.loads(value) for owner, value in raw.items()}

    # topology snapshot ---------------------------------------------------------
    def save_snapshot(self, snapshot: dict[str, Any]) -> None:
        self.save_json(self.keys.topology_snapshot, snapshot)

    def load_snapshot(self) -> dict[str, Any] | None:
        """The topology manager's latest snapshot, None before its first; SnapshotError when
        the key holds something else than a JSON object."""
        key = self.keys.topology_snapshot
        try:
            raw = self._call(f"read {key}", lambda: self.redis.get(key))
        except ValueError as exc:  # bytes that are not UTF-8
            raise SnapshotError(f"malformed topology snapshot in Redis: not JSON: {exc}") from exc
        return check_snapshot(raw)

    def push_topology_point(self, point: dict[str, Any], keep: int) -> None:
        """Add a stats point to the front of topology:history, keeping the newest `keep`."""
        with redis_errors("write topology history"):
            pipe = self.redis.pipeline(transaction=False)
            pipe.lpush(self.keys.topology_history, orjson.dumps(point))
            pipe.ltrim(self.keys.topology_history, 0, keep - 1)
            pipe.execute()

    def topology_history(self, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` stats points, oldest first."""
        raw = self._call("read topology history",
                         lambda: self.redis.lrange(self.keys.topology_history, 0, limit - 1))
        return [json.loads(r) for r in reversed(raw)]

    def save_json(self, key: str, value: Any) -> None:
        data = json.dumps(value, separators=(",", ":"))
        self._call(f"write {key}", lambda: self.redis.set(key, data))

    def load_json(self, key: str) -> Any:
        raw = self._call(f"read {key}", lambda: self.redis.get(key))
        return json.loads(raw) if raw else None

    # proposals -----------------------------------------------------------------
    def save_consensus(self, snapshot: dict[str, Any] | bytes | None, proposals: Iterable[dict[str, Any]],
                       encoded: Iterable[tuple[str, int, bytes]] = ()) -> None:
        """Write proposal records (and their time index) and the manager's snapshot in one
        round trip; the index keeps the newest PROPOSALS_KEPT. `encoded`: records already
        encoded, as (id, created_at, JSON), written before `proposals`; a snapshot given as
        bytes is its JSON."""
        with redis_errors("save proposals"):
            pipe = self.redis.pipeline(transaction=False)
            index: dict[str, int] = {}
            for pid, created_at, data in encoded:
                pipe.set(self.keys.proposal(pid), data, ex=PROPOSAL_TTL_S)
                index[pid] = created_at
            for record in proposals:
                pipe.set(self.keys.proposal(record["id"]), orjson.dumps(record), ex=PROPOSAL_TTL_S)
                index[record["id"]] = record["created_at"]
            if index:  # one command for the whole batch
                pipe.zadd(self.keys.proposals, index)
                pipe.zremrangebyrank(self.keys.proposals, 0, -PROPOSALS_KEPT - 1)
            if isinstance(snapshot, bytes):
                pipe.set(self.keys.consensus_snapshot, snapshot)
            elif snapshot is not None:
                pipe.set(self.keys.consensus_snapshot, json.dumps(snapshot, separators=(",", ":")))
            pipe.execute()

    def proposal(self, proposal_id: str) -> dict[str, Any] | None:
        return self.load_json(self.keys.proposal(proposal_id))  # type: ignore[no-any-return]

    def recent_proposals(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest proposals first."""
        ids = self._call("read proposals", lambda: self.redis.zrevrange(self.keys.proposals, 0, limit - 1))
        if not ids:
            return []
        raw = self._call("read proposals", lambda: self.redis.mget([self.keys.proposal(str(i)) for i in ids]))
        return [json.loads(r) for r in raw if r]

    def close(self) -> None:
        self.redis.close()
