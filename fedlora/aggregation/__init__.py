"""Aggregation strategies, one per module, registered by name (no Flower, no PEFT).

Importing this package registers every strategy; :func:`get_aggregator` looks one up.
"""

from fedlora.aggregation import fedit, ffa, flexlora, flora, hetlora  # noqa: F401  (register the strategies)
from fedlora.aggregation.base import Aggregator, ClientSpec, ClientUpdate, GlobalAdapter
from fedlora.aggregation.registry import AGGREGATORS, get_aggregator, register

__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "ClientSpec",
    "ClientUpdate",
    "GlobalAdapter",
    "get_aggregator",
    "register",
]
