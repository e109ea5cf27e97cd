"""fedlora ClientApp: decode the message, call :mod:`fedlora.training.client_task`, encode the reply.

The run config arrives in every message (as YAML bytes), so the same ClientApp serves the
in-process simulation and ``flwr run`` deployments; per-node facts come from the node config.
"""

from __future__ import annotations

import json

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedlora import protocol as P
from fedlora.config.schema import RunConfig
from fedlora.logs import setup_logging
from fedlora.lora.codec import from_arrayrecord, to_arrayrecord
from fedlora.training.client_task import (
    NodeFacts,
    RoundPlan,
    config_from_yaml,
    describe,
    evaluate_round,
    node_facts,
    train_round,
)

app = ClientApp()


def _decode(msg: Message, context: Context) -> tuple[RunConfig, NodeFacts, ConfigRecord]:
    setup_logging()
    config = msg.content.config_records[P.CONFIG]
    cfg = config_from_yaml(bytes(config[P.CFG_YAML]).decode())
    return cfg, node_facts(cfg, context.node_config), config


def _labels(config: ConfigRecord) -> list[str] | None:
    return [str(x) for x in config[P.LABELS]] if P.LABELS in config else None


@app.query()
def query(msg: Message, context: Context) -> Message:
    cfg, facts, _ = _decode(msg, context)
    return Message(RecordDict({P.CAPS: ConfigRecord(describe(cfg, facts))}), reply_to=msg)


def _patterns(config: ConfigRecord) -> tuple[dict[str, int] | None, dict[str, float] | None]:
    ranks = json.loads(str(config[P.RANK_PATTERN])) if P.RANK_PATTERN in config else None
    alphas = json.loads(str(config[P.ALPHA_PATTERN])) if P.ALPHA_PATTERN in config else None
    return ranks, alphas


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, facts, config = _decode(msg, context)
    wire = str(config[P.WIRE_DTYPE])
    frozen = msg.content.array_records.get(P.FROZEN)
    plan = RoundPlan(
        server_round=int(config[P.SERVER_ROUND]), lr=float(config[P.LR]), rank=int(config[P.RANK]),
        alpha=float(config[P.ALPHA]), labels=_labels(config),
        frozen=from_arrayrecord(frozen, wire) if frozen is not None else None,
        freeze_a=bool(config.get(P.FREEZE_A, False)), a_rank_max=int(config.get(P.A_RANK_MAX, 0)),
    )
    start = from_arrayrecord(msg.content.array_records[P.ARRAYS], wire)
    state, metrics = train_round(cfg, facts, start, plan)
    reply = RecordDict({P.ARRAYS: to_arrayrecord(state, wire), P.METRICS: MetricRecord(metrics)})
    return Message(reply, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg, facts, config = _decode(msg, context)
    wire = str(config[P.WIRE_DTYPE])
    ranks, alphas = _patterns(config)
    metrics = evaluate_round(
        cfg, facts, from_arrayrecord(msg.content.array_records[P.ARRAYS], wire),
        rank=int(config[P.RANK]), alpha=float(config[P.ALPHA]), labels=_labels(config),
        rank_pattern=ranks, alpha_pattern=alphas,
    )
    return Message(RecordDict({P.METRICS: MetricRecord(metrics)}), reply_to=msg)
