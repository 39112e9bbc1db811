"""Prometheus metrics of the whole mesh: one scrape URL for every role's counters and gauges.

histogram.py (latency histograms kept as plain counters, used by the roles), families.py
(pure: a reading of Redis and supervisord -> metric families), exporter.py (the `metrics`
program: reads on each scrape, serves /metrics). Only exporter.py and families.py import
prometheus-client, so a role that records a latency does not load it.
"""
