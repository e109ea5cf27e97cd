"""fedlora ClientApp: decode the message, call :mod:`fedlora.training.client_task`, encode the reply.

The run config arrives in every message (as YAML bytes), so the same ClientApp serves the
in-process simulation and ``flwr run`` deployments; per-node facts come from the node config.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedlora import protocol as P
from fedlora.config.schema import RunConfig
from fedlora.lora.codec import from_arrayrecord, to_arrayrecord
from fedlora.logs import setup_logging
from fedlora.training.client_task import (
    NodeFacts,
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


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, facts, config = _decode(msg, context)
    wire = str(config[P.WIRE_DTYPE])
    state, metrics = train_round(
        cfg, facts, from_arrayrecord(msg.content.array_records[P.ARRAYS], wire),
        server_round=int(config[P.SERVER_ROUND]), lr=float(config[P.LR]),
        rank=int(config[P.RANK]), alpha=float(config[P.ALPHA]), labels=_labels(config),
    )
    reply = RecordDict({P.ARRAYS: to_arrayrecord(state, wire), P.METRICS: MetricRecord(metrics)})
    return Message(reply, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg, facts, config = _decode(msg, context)
    wire = str(config[P.WIRE_DTYPE])
    metrics = evaluate_round(
        cfg, facts, from_arrayrecord(msg.content.array_records[P.ARRAYS], wire),
        rank=int(config[P.RANK]), alpha=float(config[P.ALPHA]), labels=_labels(config),
    )
    return Message(RecordDict({P.METRICS: MetricRecord(metrics)}), reply_to=msg)
