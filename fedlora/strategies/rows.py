"""Rows for ``clients.jsonl`` and the federated mean of evaluation metrics.

Every accepted reply, training or evaluation, becomes one ``clients.jsonl`` row with its
``stage``: that is where a run shows, per reply, which process answered (``worker_pid``) and how
many base models it had loaded (``base_model_loads``). Those two are facts about a process, not
metrics, so they are kept out of the federated means.
"""

from __future__ import annotations

from typing import Any

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fedlora import protocol as P

PROCESS_KEYS = (P.BASE_MODEL_LOADS, P.WORKER_PID)


def snake(metrics: dict[str, Any]) -> dict[str, Any]:
    """Flower's kebab-case metric names as the snake_case columns of the metric files."""
    return {k.replace("-", "_"): v for k, v in metrics.items()}


def mean_metrics(records: list[MetricRecord]) -> MetricRecord:
    """Flower's ``num-examples``-weighted mean over the metrics every record holds (a metric only
    some clients report would otherwise be averaged with the others' weights missing); process
    facts (:data:`PROCESS_KEYS`) are not averaged."""
    common = set.intersection(*(set(r) for r in records)) - set(PROCESS_KEYS)
    dicts = [RecordDict({P.METRICS: MetricRecord({k: v for k, v in r.items() if k in common})})
             for r in records]
    return aggregate_metricrecords(dicts, P.NUM_EXAMPLES)


def client_row(stage: str, rnd: int, node_id: int, partition_id: int, rank: int, metrics: MetricRecord,
               **extra: Any) -> dict[str, Any]:
    """One ``clients.jsonl`` row: who answered, at which stage and round, and what it reported."""
    row: dict[str, Any] = {"stage": stage, "round": rnd, "node_id": node_id, "partition_id": partition_id,
                           "rank": rank, **extra}
    row.update(snake(dict(metrics)))
    return row
