"""Run one client task (query, train, evaluate) from plain values: the ClientApp's real work.

The same function serves the in-process ClientApp (simulation, or a deployment without a
worker) and the node's resident worker (:mod:`fedlora.deploy.worker`), so both paths compute
bit-identical updates. Every reply carries ``base-model-loads`` and ``worker-pid``: the server
writes them to ``clients.jsonl``, which is how a run shows that a node loaded its model once.
"""

from __future__ import annotations

import json
from typing import Any

from fedlora import protocol as P
from fedlora.deploy.messages import ClientTask, TaskReply
from fedlora.logs import setup_logging
from fedlora.lora.wire import state_from_numpy, state_to_numpy
from fedlora.memory import release_freed_memory
from fedlora.training.client_task import (
    RoundPlan,
    config_from_yaml,
    describe,
    evaluate_round,
    node_facts,
    process_facts,
    train_round,
)

KINDS = ("query", "train", "evaluate")


def _labels(config: dict[str, Any]) -> list[str] | None:
    return [str(x) for x in config[P.LABELS]] if P.LABELS in config else None


def _patterns(config: dict[str, Any]) -> tuple[dict[str, int] | None, dict[str, float] | None]:
    ranks = json.loads(str(config[P.RANK_PATTERN])) if P.RANK_PATTERN in config else None
    alphas = json.loads(str(config[P.ALPHA_PATTERN])) if P.ALPHA_PATTERN in config else None
    return ranks, alphas


def run_task(task: ClientTask) -> TaskReply:
    """Answer ``task`` as this node (its node config decides its data, device and rank).

    The process that answers keeps serving (a Ray worker, a node's worker), so the heap pages the
    task freed go back to the OS before it waits for the next one (:mod:`fedlora.memory`).

    Raises
    ------
    ValueError
        For an unknown task kind, a missing config record, or a node config that does not fit the run.
    """
    try:
        return _run(task)
    finally:
        release_freed_memory()


def _run(task: ClientTask) -> TaskReply:
    setup_logging()
    if task.kind not in KINDS:
        raise ValueError(f"unknown task kind {task.kind!r}; expected one of {list(KINDS)}")
    if P.CONFIG not in task.configs:
        raise ValueError(f"the message holds no ConfigRecord {P.CONFIG!r}")
    config = task.configs[P.CONFIG]
    raw = config[P.CFG_YAML]
    cfg = config_from_yaml(raw.decode() if isinstance(raw, bytes) else str(raw))
    facts = node_facts(cfg, task.node_config)
    labels = _labels(config)
    if task.kind == "query":
        return TaskReply(configs={P.CAPS: {**describe(cfg, facts, labels), **process_facts()}})
    wire = str(config[P.WIRE_DTYPE])
    start = state_from_numpy(task.arrays[P.ARRAYS], wire)
    if task.kind == "train":
        frozen = task.arrays.get(P.FROZEN)
        plan = RoundPlan(
            server_round=int(config[P.SERVER_ROUND]), lr=float(config[P.LR]), rank=int(config[P.RANK]),
            alpha=float(config[P.ALPHA]), labels=labels,
            frozen=state_from_numpy(frozen, wire) if frozen is not None else None,
            freeze_a=bool(config.get(P.FREEZE_A, False)), a_rank_max=int(config.get(P.A_RANK_MAX, 0)),
            dp_b_weight=float(config.get(P.DP_B_WEIGHT, 0.0)),
        )
        state, metrics = train_round(cfg, facts, start, plan)
        return TaskReply(metrics={P.METRICS: {**metrics, **process_facts()}},
                         arrays={P.ARRAYS: state_to_numpy(state, wire)})
    ranks, alphas = _patterns(config)
    metrics = evaluate_round(cfg, facts, start, rank=int(config[P.RANK]), alpha=float(config[P.ALPHA]),
                             labels=labels, rank_pattern=ranks, alpha_pattern=alphas)
    return TaskReply(metrics={P.METRICS: {**metrics, **process_facts()}})
