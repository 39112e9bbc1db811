"""Agents: the runtime of one agent process, the Role base class and the demo roles."""
