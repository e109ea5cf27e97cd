"""Flower strategies that drive a :mod:`fedlora.aggregation` aggregator over the Message API."""
