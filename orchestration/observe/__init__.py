"""Observe: what happened and what is waiting (queries, Prometheus exporter, Flower)."""
