"""The mesh's replica groups in Redis: how many replicas each runs, which are retiring,
the sticky conversation->replica table and the senders' routing state (docs/routing.md).

A group `Support` of mesh.yaml (`replicas:`) runs agents `Support-1..N`; each registers
with `group` and `replica` in its registry record. `up` writes mesh.yaml's counts,
`agentmesh scale` (and the autoscaler) change them.
"""

from __future__ import annotations

import json
from typing import Any

from agentmesh_cli.config import MeshConfig
from agentmesh_cli.store import Store, redis_errors

# Route a conversation of a group: keep the replica it sticks to while that replica is
# live (renewing the idle expiry), else stick it to the candidate. One script, so two
# senders of one conversation agree on its replica.
# KEYS: the route key; ARGV: candidate, idle ms, then the live replicas.
_ROUTE = """
local current = redis.call('GET', KEYS[1])
if current then
  for i = 3, #ARGV do
    if ARGV[i] == current then
      redis.call('PEXPIRE', KEYS[1], ARGV[2])
      return current
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"""


class Groups:
    """Replica groups' shared state, over a Store's connection."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.redis = store.redis
        self.keys = store.keys
        self._route = store.redis.register_script(_ROUTE)

    def store_agents(self) -> dict[str, dict[str, Any]]:
        """The registry (Store.agents)."""
        return self.store.agents()

    def counts(self) -> dict[str, int]:
        """group -> replicas it runs now (groups never scaled since `up`: absent)."""
        with redis_errors("read replica counts"):
            raw = self.redis.hgetall(self.keys.replicas)
        return {str(group): int(n) for group, n in raw.items()}

    def set_counts(self, counts: dict[str, int]) -> None:
        if counts:
            with redis_errors("write replica counts"):
                self.redis.hset(self.keys.replicas, mapping={g: str(n) for g, n in counts.items()})

    def retiring(self) -> set[str]:
        with redis_errors("read retiring replicas"):
            return {str(n) for n in self.redis.smembers(self.keys.retiring)}

    def retire(self, names: list[str]) -> None:
        if names:
            with redis_errors("mark replicas retiring"):
                self.redis.sadd(self.keys.retiring, *names)

    def unretire(self, names: list[str]) -> None:
        if names:
            with redis_errors("clear retiring replicas"):
                self.redis.srem(self.keys.retiring, *names)

    def route(self, group: str, conversation: str, candidate: str, live: list[str], idle_s: float) -> str:
        """The replica conversation `conversation` of `group` goes to: the one it sticks
        to if live, else `candidate` (which it sticks to from now on)."""
        with redis_errors("route a conversation"):
            return str(self._route(keys=[self.keys.route(group, conversation)],
                                   args=[candidate, max(1, int(idle_s * 1000)), *live]))

    def publish_routing(self, sender: str, state: dict[str, Any]) -> None:
        with redis_errors("write routing state"):
            self.redis.hset(self.keys.routing, sender, json.dumps(state))

    def routing(self) -> dict[str, dict[str, Any]]:
        """sender -> {ts, model, groups: {group: {replica: snapshot}}}."""
        with redis_errors("read routing state"):
            raw = self.redis.hgetall(self.keys.routing)
        return {str(sender): json.loads(value) for sender, value in raw.items()}


def running_agents(config: MeshConfig, counts: dict[str, int]) -> list[str]:
    """Every concrete agent the mesh runs now: groups as `counts` says, else as declared."""
    return [name for name, _ in config.concrete_agents(counts)]
