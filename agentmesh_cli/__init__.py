"""agentmesh: a multi-agent mesh as supervised OS processes over Kafka and Redis."""

__version__ = "0.1.0"
