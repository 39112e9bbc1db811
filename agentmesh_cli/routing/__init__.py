"""Routing among the replicas of an agent (issue 21): which replica a sender gives a new
conversation to. The cores here are pure: no I/O, no clock reads, no global random state;
every call takes `now` (monotonic seconds) and a router that draws gets its `random.Random`
handed in, so a scripted history gives the same picks every time.

    ewma.py       the bookkeeping every router keeps: a peak-EWMA of each replica's round
                  trips and its requests in flight, oldest first
    models.py     the Router interface, round robin (smooth weighted), power of two choices
                  over peak-EWMA cost, and `make_router` (mesh.yaml `routing.model` -> a router)
    physarum.py   the flux model of Tero et al. 2010 with a load-aware length
    simulate.py   a seeded discrete-event model of three single-server replicas, to choose
                  physarum's defaults and compare the models (docs/routing.md)
"""
