"""Scaling a replica group of the running mesh: `agentmesh scale GROUP N` and the autoscaler.

Up: the count is written (scalestate.py, Redis), the configs rendered again with the new
replicas, supervisord adds and starts them, and `scale` waits until each is ready.

Down, nothing lost or handled twice:
1. the leaving replicas (the highest-numbered) are marked retiring: no sender routes a new
   conversation to them (within a second, routing/dispatch.py), conversations that stick to
   them stay until they leave, and their roles see `ctx.draining` (no new work of their own);
2. `scale` waits until each is quiet (the drain's rule, quiet.py: everything sent to it
   handled, nothing in flight, over 1.2 s) or `drain_timeout` passed; a replica that is not
   running (crashed, FATAL) is not waited for;
3. they are stopped (each settles its last turn and commits as it leaves), unregistered (one
   killed before it could leave would stay live for every sender) and removed from
   supervisord;
4. what is still unread in a leaving replica's inbox (sent after its quiet spell, at the
   timeout, or left by a crash) is handed over: read from its committed offset to the end,
   sent again with the same ids to the group (routed to the live replicas), and its offset
   committed past it. The group's one ledger skips what was handled already, so a message
   the leaving replica handled but had not committed is not handled twice. Once more 2 s
   later, for a sender that had not yet seen the replica leave.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from agentmesh_cli import constants as C
from agentmesh_cli.agent.resolve import check_replicable, resolve_role
from agentmesh_cli.bus import Bus
from agentmesh_cli.config import AgentSpec
from agentmesh_cli.dozing import ringing
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.errors import AgentMeshError, BusError, ConfigError, SupervisorError, WaitTimeout
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.quiet import QuietWatch, Reading, read
from agentmesh_cli.reader import Reader, committed_offsets
from agentmesh_cli.replicas import Groups
from agentmesh_cli.routing.dispatch import Dispatch
from agentmesh_cli.scalestate import bounds, load_scale, running_counts, save_scale
from agentmesh_cli.signing import mesh_signer
from agentmesh_cli.store import Store
from agentmesh_cli.supervisor.control import Supervisor
from agentmesh_cli.supervisor.render import AGENT_STOPWAITSECS, program_specs, render_all
from agentmesh_cli.waiting import Deadline, wait_until

Say = Callable[[str], None]
POLL_S = 0.25
PROGRESS_EVERY_S = 1.0
SECOND_LOOK_S = 2.0  # the handover reads the inboxes again this long after the first time
END_SETTLE_S = 0.5  # an inbox read to its end: this long after the broker said so
READ_TIMEOUT_S = 30.0
LIVE = ("RUNNING", "STARTING", "BACKOFF")


@dataclass
class Scaled:
    group: str
    before: int
    after: int
    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    quiet: bool = True  # every leaving replica went quiet before it was stopped
    handed_over: Counter[str] = field(default_factory=Counter)  # leaving replica -> messages


def group_spec(mesh: Mesh, group: str) -> AgentSpec:
    groups = mesh.config.groups()
    if group in groups:
        return groups[group]
    where = mesh.config_file.name
    owner = mesh.config.group_name(group)
    if owner is not None:
        raise ConfigError(f"{group} is a replica of {owner}: scale the group, `agentmesh scale {owner} N`")
    if any(a.name == group for a in mesh.config.agents):
        raise ConfigError(f"{group} is not a replica group: give it `replicas: N` in {where} "
                          "(its role must be replicable)")
    names = ", ".join(sorted(groups)) or "none"
    raise ConfigError(f"no replica group {group!r} in {where} (groups: {names})")


def scale(mesh: Mesh, group: str, count: int, drain_timeout: float, timeout: float, say: Say,
          clock: Callable[[], float] = time.monotonic) -> Scaled:
    """Run `count` replicas of `group` (see the module's docstring)."""
    spec = group_spec(mesh, group)
    low, high = bounds(spec)
    if not low <= count <= high:
        key = "replicas.min and replicas.max" if low > 1 or high < 64 else "the count"
        raise ConfigError(f"{group} runs {low} to {high} replicas ({key}); {count} asked")
    if mesh.config.hosts:
        raise ConfigError("`scale` works on a mesh of one host; with `hosts`, set replicas in "
                          "mesh.yaml and run `agentmesh up` on each host")
    if count > 1:
        check_replicable(resolve_role(spec.role), spec, mesh.config.agents.index(spec))
    sup = Supervisor(mesh)
    if not sup.is_running():
        raise SupervisorError(f"mesh {mesh.config.mesh} is not running: `agentmesh up` first")
    scale_now = load_scale(mesh)
    before = running_counts(mesh, scale_now)[group]
    result = Scaled(group, before, count)
    if count == before:
        return result
    store = Store(mesh.redis_url, mesh.config.mesh, timeout=2.0)
    groups = Groups(store)
    after = {**scale_now, group: count}
    try:
        if count > before:
            result.started = spec.replica_names(count)[before:]
            _apply(mesh, sup, after, groups)
            _start(mesh, sup, store, result.started, timeout, say, clock)
        else:
            leaving = spec.replica_names(before)[count:]
            groups.retire(leaving)
            try:
                result.quiet = _wait_retired(mesh, sup, store, leaving, drain_timeout, say, clock)
                programs = [C.agent_program(name) for name in leaving]
                say(f"stopping {', '.join(programs)}")
                late = sup.stop_programs(programs, AGENT_STOPWAITSECS + 5)
                if late:
                    raise SupervisorError(f"{', '.join(late)} did not stop")
                result.stopped = leaving
                # stopped: no longer registered, also when its last process was killed before it
                # could leave (a stale record would keep it live for every sender, and the
                # handover would send its unread messages back into its own inbox)
                for name in leaving:
                    store.unregister_agent(name)
                _apply(mesh, sup, after, groups)
                result.handed_over = hand_over(mesh, store, groups, leaving, say)
            finally:
                groups.unretire(leaving)
    finally:
        store.close()
    return result


def _apply(mesh: Mesh, sup: Supervisor, scale: dict[str, int], groups: Groups) -> None:
    """The new count written, the configs rendered with it, supervisord updated."""
    from agentmesh_cli.lifecycle import write_configs  # lifecycle imports scalestate, not this

    save_scale(mesh, scale)
    groups.set_counts(running_counts(mesh, scale))
    write_configs(mesh, render_all(mesh, program_specs(mesh, sys.executable, scale=scale)))
    sup.apply()


def _start(mesh: Mesh, sup: Supervisor, store: Store, names: list[str], timeout: float, say: Say,
           clock: Callable[[], float]) -> None:
    programs = [C.agent_program(name) for name in names]
    say(f"starting {', '.join(programs)}")
    sup.start_programs(programs)
    waiting = list(programs)

    def ready() -> bool:
        nonlocal waiting
        info = {p["name"]: p for p in sup.processes()}
        for name in list(waiting):
            state = info.get(name, {}).get("statename")
            if state == "FATAL":
                raise SupervisorError(f"{name} is FATAL:\n{sup.log_tail(name)}")
            pid = info.get(name, {}).get("pid")
            try:
                if pid and store.ready_pid(name) == pid:
                    waiting.remove(name)
                    say(f"ready  {name} (pid {pid})")
            except AgentMeshError:
                pass
        return not waiting

    try:
        wait_until(ready, Deadline(timeout, clock), "the new replicas to be ready", interval=POLL_S,
                   clock=clock)
    except WaitTimeout as exc:
        raise SupervisorError(f"{', '.join(waiting)} not ready after {timeout:g} s") from exc


def _wait_retired(mesh: Mesh, sup: Supervisor, store: Store, leaving: list[str], drain_timeout: float,
                  say: Say, clock: Callable[[], float]) -> bool:
    """Wait until the leaving replicas that run are quiet; False at the timeout."""
    states = {p["name"]: p["statename"] for p in sup.processes()}
    running = [name for name in leaving if states.get(C.agent_program(name)) in LIVE]
    for name in sorted(set(leaving) - set(running)):
        say(f"{name} is not running: what it left unread is handed over")
    if not running:
        return True
    watch = QuietWatch()
    started = clock()
    said = -math.inf
    last: Reading | None = None

    def quiet() -> bool:
        nonlocal last, said
        now = clock()
        try:
            last = read(store.all_counters(), store.agents(), running)
        except AgentMeshError:
            return False
        if watch.observe(last, now):
            return True
        if now - said >= PROGRESS_EVERY_S:
            said = now
            busy = {**last.unhandled, **{k: v for k, v in last.in_flight.items() if v}}
            left = ", ".join(f"{k} {v}" for k, v in sorted(busy.items()) if v) or "settling"
            say(f"draining {', '.join(running)}: {left}, {now - started:.1f} s")
        return False

    try:
        wait_until(quiet, Deadline(drain_timeout, clock), "the leaving replicas to be quiet",
                   interval=POLL_S, clock=clock)
    except WaitTimeout:
        say(f"drain timeout after {drain_timeout:g} s: what is unread is handed over")
        return False
    say(f"drained {', '.join(running)} after {clock() - started:.1f} s")
    return True


def hand_over(mesh: Mesh, store: Store, groups: Groups, leaving: list[str], say: Say) -> Counter[str]:
    """Send what the leaving (stopped) replicas left unread to their group again, routed to
    its live replicas with the same ids; commit their offsets past it."""
    handed: Counter[str] = Counter()
    dispatch = Dispatch(mesh.config, groups, C.CLI_COUNTER_OWNER, time.monotonic)
    bus = Bus(mesh.config.kafka, client_id="agentmesh-scale", signer=mesh_signer(mesh))
    ringing(bus, store)  # a sleeping replica is rung (dozing.py)
    try:
        for look in range(2):
            if look:
                time.sleep(SECOND_LOOK_S)
            dispatch.refresh(time.monotonic(), force=True)
            for name in leaving:
                handed[name] += _hand_over_one(mesh, store, bus, dispatch, name, set(leaving))
    finally:
        bus.flush(10)
    for name, n in sorted(handed.items()):
        if n:
            say(f"handed {n} unread messages of {name} over to {mesh.config.group_name(name)}")
    return handed


def _hand_over_one(mesh: Mesh, store: Store, bus: Bus, dispatch: Dispatch, name: str,
                   leaving: set[str]) -> int:
    kafka = mesh.config.kafka
    partition = C.inbox_partition(name, kafka.partitions)
    group_id = C.agent_group(kafka.topic_prefix, name)
    where = (C.TOPIC_MESSAGES, partition)
    start = committed_offsets(kafka, group_id, [where]).get(where, 0)
    reader = Reader(kafka, group_id, [(C.TOPIC_MESSAGES, partition, start)], "agentmesh-scale",
                    signer=mesh_signer(mesh), track_ends=True)
    group = mesh.config.group_name(name) or name
    sent: Counter[str] = Counter()
    try:
        deadline = Deadline(READ_TIMEOUT_S)
        end_at: float | None = None
        next_offset = start
        while end_at is None or time.monotonic() - end_at < END_SETTLE_S:
            if deadline.passed():
                raise BusError(f"reading the inbox of {name} took over {READ_TIMEOUT_S:g} s")
            for record in reader.poll_batch(timeout=0.05):
                next_offset = max(next_offset, record.offset + 1)
                if record.forged is not None:
                    continue  # never the mesh's: its reader dead-letters such records
                try:
                    envelope = Envelope.decode(record.value, max_bytes=kafka.max_record_bytes)
                except AgentMeshError:
                    continue
                if envelope.to_agent_id != name:
                    continue  # another agent's: it shares the partition
                conversation = envelope.meta.get("conversation")
                target = dispatch.target(group, conversation if isinstance(conversation, str) else None)
                if target in leaving:  # never back to a replica that leaves (a stale view of it)
                    stay = [n for n in dispatch.live.get(group, []) if n not in leaving]
                    if not stay:
                        raise BusError(f"no replica of {group} left to hand {name}'s messages to")
                    target = stay[zlib.crc32(envelope.id.encode()) % len(stay)]
                bus.send_message(dataclasses.replace(envelope, to_agent_id=target))
                sent[target] += 1
            if end_at is None and where in reader.at_end:
                end_at = time.monotonic()
        if bus.flush(10) or bus.delivery_failures:
            raise BusError(f"the unread messages of {name} were not all taken by the broker")
        reader.commit({where: next_offset})
    finally:
        reader.close()
    if sent:
        try:
            counts = Counter({C.sent_to_counter(target): n for target, n in sent.items()})
            store.add_counters(C.CLI_COUNTER_OWNER, counts)
        except AgentMeshError:
            pass  # sent; only the backlog figures are low
    return sum(sent.values())
