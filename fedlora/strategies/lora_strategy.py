"""A Flower strategy that drives a fedlora aggregator.

Flower's ``Strategy.start`` runs the round loop; this class decides who trains (seeded sampling
over the nodes discovered by the query round, so the same seed picks the same partitions), what
each of them receives (the aggregator's per-client payload, so ranks may differ), and what is
accepted back (:func:`validate_reply`). Bytes are measured on the records actually sent and
received. The maths stays in :mod:`fedlora.aggregation`.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedlora import protocol as P
from fedlora.aggregation import Aggregator, ClientSpec, ClientUpdate
from fedlora.config.schema import RunConfig
from fedlora.lora.codec import record_nbytes, to_arrayrecord
from fedlora.results import RunRecorder
from fedlora.strategies.audit import Auditor
from fedlora.strategies.validation import BadReply, validate_reply
from fedlora.training.schedule import lr_for_round

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeInfo:
    """What the query round learned about a connected node."""

    node_id: int
    partition_id: int
    rank: int
    device: str
    num_train_examples: int


@dataclass
class _Sent:
    spec: ClientSpec
    shapes: dict[str, tuple[int, ...]]
    nbytes: int
    partition_id: int


class LoraStrategy(FedAvg):
    """Federated LoRA with per-client payloads, strict reply checks and byte accounting."""

    def __init__(
        self,
        *,
        cfg: RunConfig,
        aggregator: Aggregator,
        nodes: dict[int, NodeInfo],
        recorder: RunRecorder,
        shared_config: dict[str, Any],
        round_offset: int = 0,
        global_rank: int = 0,
        auditor: Auditor | None = None,
    ):
        fed = cfg.federation
        super().__init__(
            fraction_train=fed.fraction_train,
            fraction_evaluate=fed.fraction_evaluate,
            min_train_nodes=fed.min_train_clients,
            min_evaluate_nodes=fed.min_evaluate_clients,
            min_available_nodes=fed.min_train_clients,
        )
        self.cfg = cfg
        self.aggregator = aggregator
        self.nodes = nodes
        self.recorder = recorder
        self.shared_config = shared_config
        self.round_offset = round_offset
        self.global_rank = global_rank or max(n.rank for n in nodes.values())
        self.auditor = auditor
        self._sent: dict[int, _Sent] = {}

    def _check_frozen_a(self, spec: ClientSpec, metrics: MetricRecord) -> str:
        """FFA-LoRA: the A a client trained against must be the shared one (by its hash)."""
        if not self.aggregator.freeze_a:
            return ""
        expected = self.aggregator.a_hash(spec.rank)  # type: ignore[attr-defined]
        got = metrics.get(P.A_HASH)
        if got is None or int(got) != expected:
            return f"{P.A_HASH} {got!r} does not match the shared A of rank {spec.rank} ({expected})"
        return ""

    # -- sampling and payloads ---------------------------------------------------------------
    def spec_of(self, node: NodeInfo) -> ClientSpec:
        return ClientSpec(client_id=str(node.partition_id), rank=node.rank, alpha=self.cfg.lora.alpha)

    def sample(self, grid: Grid, server_round: int, fraction: float, minimum: int) -> list[NodeInfo]:
        """Seeded sample over connected nodes ordered by partition id (reproducible runs)."""
        connected = set(grid.get_node_ids())
        pool = sorted((n for n in self.nodes.values() if n.node_id in connected),
                      key=lambda n: n.partition_id)
        k = min(len(pool), max(math.ceil(fraction * len(pool)), minimum))
        rng = random.Random(f"{self.cfg.federation.seed}-{server_round}")
        return sorted(rng.sample(pool, k), key=lambda n: n.partition_id)

    def _message(
        self, node: NodeInfo, record: ArrayRecord, extra: dict[str, Any], kind: str,
        frozen: ArrayRecord | None = None,
    ) -> Message:
        config = ConfigRecord({**self.shared_config, **extra})
        content = RecordDict({P.ARRAYS: record, P.CONFIG: config})
        if frozen is not None:
            content[P.FROZEN] = frozen
        return Message(content, dst_node_id=node.node_id, message_type=kind)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        rnd = server_round + self.round_offset
        self.recorder.start_round(rnd)
        lr = lr_for_round(self.cfg.train, rnd, self.cfg.federation.num_rounds)
        chosen = self.sample(grid, rnd, self.fraction_train, self.min_train_nodes)
        self.aggregator.begin_round(rnd)
        wire = self.cfg.federation.wire_dtype
        self._sent, messages = {}, []
        for node in chosen:
            spec = self.spec_of(node)
            payload = self.aggregator.payload(spec)
            frozen_state = self.aggregator.frozen(spec)
            record = to_arrayrecord(payload, wire)
            frozen = to_arrayrecord(frozen_state, wire) if frozen_state is not None else None
            shapes = {k: tuple(v.shape) for k, v in self.aggregator.reply_template(spec, payload).items()}
            nbytes = record_nbytes(record) + (record_nbytes(frozen) if frozen is not None else 0)
            self._sent[node.node_id] = _Sent(spec, shapes, nbytes, node.partition_id)
            extra: dict[str, Any] = {P.SERVER_ROUND: rnd, P.LR: lr, P.RANK: spec.rank, P.ALPHA: spec.alpha}
            if self.aggregator.freeze_a:
                extra.update({P.FREEZE_A: True, P.A_RANK_MAX: self.global_rank})
            messages.append(self._message(node, record, extra, MessageType.TRAIN, frozen))
        log.info(
            "round %d: training on %d/%d clients (partitions %s), lr %.2e",
            rnd, len(chosen), len(self.nodes), [n.partition_id for n in chosen], lr,
        )
        self.recorder.add(lr=lr, bytes_down=sum(s.nbytes for s in self._sent.values()),
                          **_snake(self.aggregator.payload_metrics()))
        if self.auditor is not None:
            self.auditor.start_round(rnd, self.aggregator)
        return messages

    # -- aggregation -----------------------------------------------------------------------
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rnd = server_round + self.round_offset
        updates, losses, bytes_up, answered = [], [], 0, set()
        max_bytes = int(self.cfg.federation.max_reply_mb * 1e6)
        for msg in replies:
            node_id = msg.metadata.src_node_id
            sent = self._sent.get(node_id)
            if sent is None:
                self.recorder.add_rejected(
                    {"round": rnd, "node_id": node_id, "reason": "reply from a node not sampled"}
                )
                continue
            answered.add(node_id)
            try:
                state, metrics, nbytes = validate_reply(
                    msg, expected_shapes=sent.shapes, wire_dtype=self.cfg.federation.wire_dtype,
                    max_bytes=max_bytes,
                )
            except BadReply as err:
                self.recorder.add_rejected(
                    {"round": rnd, "node_id": node_id, "partition_id": sent.partition_id, "reason": str(err)}
                )
                continue
            reason = self._check_frozen_a(sent.spec, metrics)
            if reason:
                self.recorder.add_rejected(
                    {"round": rnd, "node_id": node_id, "partition_id": sent.partition_id, "reason": reason}
                )
                continue
            n = int(metrics[P.NUM_EXAMPLES])
            updates.append(ClientUpdate(spec=sent.spec, state=state, num_examples=n))
            losses.append((n, float(metrics.get(P.TRAIN_LOSS, math.nan))))
            bytes_up += nbytes
            self.recorder.add_client(_client_row(rnd, node_id, sent, metrics, nbytes))
        for node_id in set(self._sent) - answered:
            self.recorder.add_rejected(
                {"round": rnd, "node_id": node_id, "partition_id": self._sent[node_id].partition_id,
                 "reason": "no reply before the round timeout"}
            )
        self.recorder.add(clients=len(updates), rejected=len(self._sent) - len(updates), bytes_up=bytes_up)
        if len(updates) < self.min_train_nodes:
            log.error(
                "round %d: only %d good replies (federation.min_train_clients=%d); global state unchanged",
                rnd, len(updates), self.min_train_nodes,
            )
            return None, None
        agg_metrics = self.aggregator.aggregate(updates)
        if self.auditor is not None:
            self.auditor.write(updates, self.aggregator)
        total = sum(n for n, _ in losses)
        train_loss = sum(n * loss for n, loss in losses) / total
        self.recorder.add(train_loss=train_loss, **_snake(agg_metrics))
        record = to_arrayrecord(self.aggregator.global_adapter().state, self.cfg.federation.wire_dtype)
        return record, MetricRecord({P.TRAIN_LOSS: train_loss, **agg_metrics})

    # -- federated evaluation on clients' held-out splits -------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.fraction_evaluate == 0.0:
            return []
        rnd = server_round + self.round_offset
        adapter = self.aggregator.global_adapter()
        record = to_arrayrecord(adapter.state, self.cfg.federation.wire_dtype)
        chosen = self.sample(grid, rnd, self.fraction_evaluate, self.min_evaluate_nodes)
        extra: dict[str, Any] = {P.SERVER_ROUND: rnd, P.RANK: adapter.rank, P.ALPHA: adapter.alpha}
        if adapter.rank_pattern or adapter.alpha_pattern:
            extra[P.RANK_PATTERN] = json.dumps(adapter.rank_pattern)
            extra[P.ALPHA_PATTERN] = json.dumps(adapter.alpha_pattern)
        return [self._message(n, record, extra, MessageType.EVALUATE) for n in chosen]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        good = [m for m in replies if not m.has_error() and P.METRICS in m.content.metric_records]
        for m in replies:
            if m.has_error():
                log.warning("evaluation reply from node %s failed: %s",
                            m.metadata.src_node_id, m.error.reason)
        if not good:
            return None
        weights = [int(m.content.metric_records[P.METRICS][P.NUM_EXAMPLES]) for m in good]
        keys = [k for k in good[0].content.metric_records[P.METRICS] if k != P.NUM_EXAMPLES]
        out = {}
        for key in keys:
            vals = [float(m.content.metric_records[P.METRICS][key]) for m in good]
            out[key] = sum(w * v for w, v in zip(weights, vals, strict=True)) / sum(weights)
        self.recorder.add(**{f"fed_{k.replace('-', '_')}": v for k, v in out.items()})
        return MetricRecord(out)

    def summary(self) -> None:
        log.info(
            "LoraStrategy(%s): %d nodes, fraction_train=%.2f, min_train_clients=%d, wire=%s",
            self.aggregator.name, len(self.nodes), self.fraction_train, self.min_train_nodes,
            self.cfg.federation.wire_dtype,
        )


def _snake(metrics: dict[str, float]) -> dict[str, float]:
    """Flower's kebab-case metric names as the snake_case columns of the metric files."""
    return {k.replace("-", "_"): v for k, v in metrics.items()}


def _client_row(rnd: int, node_id: int, sent: _Sent, metrics: MetricRecord, nbytes: int) -> dict[str, Any]:
    row: dict[str, Any] = {
        "round": rnd, "node_id": node_id, "partition_id": sent.partition_id, "rank": sent.spec.rank,
        "bytes_down": sent.nbytes, "bytes_up": nbytes,
    }
    row.update(_snake(dict(metrics)))
    return row
