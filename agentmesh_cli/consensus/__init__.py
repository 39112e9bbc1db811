"""Bee consensus: the pure core (waggle dance, proposal state machine) and the manager process."""
