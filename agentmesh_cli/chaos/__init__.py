"""`agentmesh chaos`: the fault-injection suite.

It runs a workload (the demo roles' own traffic plus a probe stream of its own with
known ids) on a mesh while it kills each kind of program in turn (the gateway while asks
go through it over HTTP, an llm agent while it streams answers to chats, the replicas of a
group while it is scaled down and up, the host's inbox reader that every agent reads
through), restarts Redis and the broker, kills an agent and Redis while the agents sleep,
stalls an agent and writes garbage to every topic, then reports what was lost, handled
twice and decided twice, and how long each fault took to be detected and recovered from.

- mesh.py: a throwaway embedded mesh (free loopback ports, short heartbeats), torn down by pid
- probes.py: the probe stream and what the agents' ledgers say about it
- observe.py: the consensus topic's decisions per proposal, and `status` against supervisord
- faults.py: the faults, the plan `--faults` names, what a fault may look at
- watches.py: injecting a fault; when it counts as detected and as recovered from
- gateway.py: the gateway fault (kill -9 under asks over HTTP) and its verdict
- http_asks.py: asks through the gateway over HTTP, retried with their Idempotency-Key
- llm.py: the llm fault (kill -9 of the Concierge mid-answer under chats) and its verdict
- chats.py: what a chat's user saw: the streamed deltas, the conversation's log
- replicas.py: the replicas fault (kill -9 of a group's replicas mid-work, the group scaled
  down and up, under asks to the group over HTTP); replica_tally.py: its pure parts, verdict;
  scale_step.py: one `scale` of the group in a thread, while the fault goes on
- sleepers.py: the doze fault (kill -9 of a sleeping agent, and of Redis, on a quiet mesh
  whose agents all sleep; how fast the sleepers woke); sleep_tally.py: its pure parts, verdict
- inbox.py: the inbox fault (with kafka.inbox_reader: host, kill -9 of the host's inbox reader
  under load; how long each agent went unserved); inbox_tally.py: its pure parts, verdict
- runner.py: one run, start to end
- figures.py: the run's figures as one JSON-able result
- report.py: the result as one table
"""
