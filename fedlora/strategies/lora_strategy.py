"""A Flower strategy that drives a fedlora aggregator.

Flower's ``Strategy.start`` runs the round loop; this class decides who trains (seeded sampling
over the nodes discovered by the query round, so the same seed picks the same partitions), what
each of them receives (the aggregator's per-client payload, so ranks may differ), and what is
accepted back (:mod:`fedlora.strategies.validation`; every rejection is a ``rejected.jsonl`` row
with its stage and reason) and how much each accepted update weighs (``federation.weighting``).
Bytes are measured on the records actually sent and received. The maths stays in
:mod:`fedlora.aggregation`.
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
from fedlora.aggregation.base import client_weights
from fedlora.config.schema import RunConfig
from fedlora.lora.codec import record_nbytes, to_arrayrecord
from fedlora.lora.keys import LoraState
from fedlora.results import RunRecorder
from fedlora.strategies.audit import Auditor
from fedlora.strategies.privacy_guard import PrivacyGuard
from fedlora.strategies.rows import client_row, mean_metrics, snake
from fedlora.strategies.run_state import RunProgress
from fedlora.strategies.server_clock import ServerClock, timed
from fedlora.strategies.validation import BadReply, examples_bound, validate_eval_reply, validate_reply
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
    num_eval_examples: int = -1  # -1: not reported; 0: the node has no held-out data to evaluate on


@dataclass
class _Sent:
    spec: ClientSpec
    shapes: dict[str, tuple[int, ...]]
    nbytes: int
    partition_id: int
    payload: LoraState  # what the client starts from: the reply minus this is its update


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
        progress: RunProgress | None = None,
        privacy: PrivacyGuard | None = None,
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
        self.progress = progress
        self.privacy = privacy  # privacy.mode central/local: clipping, noise, epsilon per round
        self._sent: dict[int, _Sent] = {}
        self._eval_sent: set[int] = set()
        self._pool_size = 0
        self.clock = ServerClock()  # the server's own seconds per round (taken by end_of_round)

    def _check_frozen_a(self, spec: ClientSpec, metrics: MetricRecord) -> str:
        """FFA-LoRA: the A a client trained against must be the shared one (by its hash)."""
        if not self.aggregator.freeze_a:
            return ""
        expected = self.aggregator.a_hash(spec.rank)  # type: ignore[attr-defined]
        got = metrics.get(P.A_HASH)
        if got is None or int(got) != expected:
            return f"{P.A_HASH} {got!r} does not match the shared A of rank {spec.rank} ({expected})"
        return ""

    def _reject(self, stage: str, rnd: int, node_id: int, reason: str) -> None:
        """One ``rejected.jsonl`` row: stage ("train"/"evaluate"), round, node, its partition, why."""
        row: dict[str, Any] = {"stage": stage, "round": rnd, "node_id": node_id}
        if node_id in self.nodes:
            row["partition_id"] = self.nodes[node_id].partition_id
        self.recorder.add_rejected({**row, "reason": reason})

    def _weight_n(self, node_id: int, reported: int) -> int:
        """n_k of p_k = n_k / sum(n) under ``federation.weighting``: the node's dataset size from
        discovery (``dataset``, the FedAvg rule; not the client's claim), the reply's validated
        count (``examples``), or 1 (``uniform``)."""
        basis = self.cfg.federation.weighting
        if basis == "dataset":
            return self.nodes[node_id].num_train_examples
        return reported if basis == "examples" else 1

    # -- sampling and payloads ---------------------------------------------------------------
    def spec_of(self, node: NodeInfo) -> ClientSpec:
        return ClientSpec(client_id=str(node.partition_id), rank=node.rank, alpha=self.cfg.lora.alpha,
                          use_rslora=self.cfg.lora.use_rslora)

    def sample(self, grid: Grid, server_round: int, fraction: float, minimum: int,
               evaluating: bool = False) -> list[NodeInfo]:
        """Seeded sample over connected nodes ordered by partition id (reproducible runs); for
        evaluation only over nodes that have held-out data."""
        connected = set(grid.get_node_ids())
        pool = sorted((n for n in self.nodes.values() if n.node_id in connected
                       and not (evaluating and n.num_eval_examples == 0)), key=lambda n: n.partition_id)
        k = min(len(pool), max(math.ceil(fraction * len(pool)), minimum))
        self._pool_size = len(pool)  # privacy: the sampling rate actually used this round
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

    @timed
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
            self._sent[node.node_id] = _Sent(spec, shapes, nbytes, node.partition_id, payload)
            extra: dict[str, Any] = {P.SERVER_ROUND: rnd, P.LR: lr, P.RANK: spec.rank, P.ALPHA: spec.alpha}
            if self.aggregator.freeze_a:
                extra.update({P.FREEZE_A: True, P.A_RANK_MAX: self.global_rank})
            if self.privacy is not None:
                extra.update(self.privacy.train_config(self.aggregator, spec))
            messages.append(self._message(node, record, extra, MessageType.TRAIN, frozen))
        log.info(
            "round %d: training on %d/%d clients (partitions %s), lr %.2e",
            rnd, len(chosen), len(self.nodes), [n.partition_id for n in chosen], lr,
        )
        if self.privacy is not None:
            self.privacy.sampled((n.partition_id for n in chosen), self._pool_size)
        self.recorder.add(lr=lr, bytes_down=sum(s.nbytes for s in self._sent.values()),
                          **snake(self.aggregator.payload_metrics()))
        if self.auditor is not None:
            self.auditor.start_round(rnd, self.aggregator)
        return messages

    # -- aggregation -----------------------------------------------------------------------
    @timed
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rnd = server_round + self.round_offset
        updates, losses, rows, bytes_up, answered = [], [], [], 0, set()
        fed = self.cfg.federation
        for msg in replies:
            node_id = msg.metadata.src_node_id
            sent = self._sent.get(node_id)
            if sent is None:
                self._reject("train", rnd, node_id, "reply from a node not sampled")
                continue
            answered.add(node_id)
            try:
                state, metrics, nbytes = validate_reply(
                    msg, expected_shapes=sent.shapes, wire_dtype=fed.wire_dtype,
                    max_bytes=int(fed.max_reply_mb * 1e6), sent=sent.payload,
                    max_update_norm=fed.max_update_norm,
                    max_examples=examples_bound(self.cfg.train, self.nodes[node_id].num_train_examples),
                )
                if reason := self._check_frozen_a(sent.spec, metrics):
                    raise BadReply(reason)
            except BadReply as err:
                self._reject("train", rnd, node_id, str(err))
                continue
            n = int(metrics[P.NUM_EXAMPLES])
            if self.privacy is not None:
                state = self.privacy.clip(self.aggregator, sent.spec, state, sent.payload)
            updates.append(ClientUpdate(spec=sent.spec, state=state, num_examples=self._weight_n(node_id, n)))
            losses.append((n, float(metrics.get(P.TRAIN_LOSS, math.nan))))
            bytes_up += nbytes
            rows.append(client_row("train", rnd, node_id, sent.partition_id, sent.spec.rank, metrics,
                                   bytes_down=sent.nbytes, bytes_up=nbytes))
        for node_id in sorted(set(self._sent) - answered):
            self._reject("train", rnd, node_id, "no reply before the round timeout")
        for row, update, p_k in zip(rows, updates, client_weights(updates) if updates else [], strict=True):
            self.recorder.add_client({**row, "weight_basis": fed.weighting, "weight_n": update.num_examples,
                                      "p_k": p_k})
        self.recorder.add(clients=len(updates), rejected=len(self._sent) - len(updates), bytes_up=bytes_up)
        if len(updates) < self.min_train_nodes:
            reason = (f"only {len(updates)} good replies of {len(self._sent)} "
                      f"(federation.min_train_clients={self.min_train_nodes})")
            self.recorder.add(failed=True, failure=reason)
            if self.progress is not None:  # raises RunFailed once too many rounds failed
                rejected = [r for r in self.recorder.rejected if r.get("round") == rnd]
                self.progress.round_failed(rnd, reason, rejected)
            else:
                log.error("round %d: %s; global state unchanged", rnd, reason)
            return None, None
        agg_metrics = self.aggregator.aggregate(updates)
        if self.auditor is not None:  # the audit holds the exact (pre-noise) aggregate of what arrived
            self.auditor.write(updates, self.aggregator)
        if self.privacy is not None:
            agg_metrics.update(self.privacy.add_noise(self.aggregator, updates, rnd))
        total = sum(n for n, _ in losses)
        train_loss = sum(n * loss for n, loss in losses) / total
        self.recorder.add(train_loss=train_loss, **snake(agg_metrics))
        record = to_arrayrecord(self.aggregator.global_adapter().state, self.cfg.federation.wire_dtype)
        return record, MetricRecord({P.TRAIN_LOSS: train_loss, **agg_metrics})

    # -- federated evaluation on clients' held-out splits -------------------------------------
    @timed
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.fraction_evaluate == 0.0:
            return []
        rnd = server_round + self.round_offset
        adapter = self.aggregator.global_adapter()
        record = to_arrayrecord(adapter.state, self.cfg.federation.wire_dtype)
        chosen = self.sample(grid, rnd, self.fraction_evaluate, self.min_evaluate_nodes, evaluating=True)
        extra: dict[str, Any] = {P.SERVER_ROUND: rnd, P.RANK: adapter.rank, P.ALPHA: adapter.alpha}
        if adapter.rank_pattern or adapter.alpha_pattern:
            extra[P.RANK_PATTERN] = json.dumps(adapter.rank_pattern)
            extra[P.ALPHA_PATTERN] = json.dumps(adapter.alpha_pattern)
        self._eval_sent = {n.node_id for n in chosen}
        return [self._message(n, record, extra, MessageType.EVALUATE) for n in chosen]

    @timed
    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Weighted mean (by ``num-examples``) of the good evaluation replies; bad ones are recorded."""
        rnd = server_round + self.round_offset
        good: list[MetricRecord] = []
        rejected_before, answered = len(self.recorder.rejected), set()
        for msg in replies:
            node_id = msg.metadata.src_node_id
            answered.add(node_id)
            try:
                if node_id not in self._eval_sent:
                    raise BadReply("reply from a node not sampled")
                metrics = validate_eval_reply(msg)
                good.append(metrics)
                node = self.nodes[node_id]
                self.recorder.add_client(
                    client_row("evaluate", rnd, node_id, node.partition_id, node.rank, metrics))
            except BadReply as err:
                self._reject("evaluate", rnd, node_id, str(err))
        for node_id in sorted(self._eval_sent - answered):
            self._reject("evaluate", rnd, node_id, "no reply before the round timeout")
        if self._eval_sent or answered:
            self.recorder.add(rejected_evaluate=len(self.recorder.rejected) - rejected_before)
        self._eval_sent = set()
        if not good:
            return None
        out = mean_metrics(good)
        self.recorder.add(**{f"fed_{k.replace('-', '_')}": v for k, v in out.items()})
        return out

    def summary(self) -> None:
        log.info(
            "LoraStrategy(%s): %d nodes, fraction_train=%.2f, min_train_clients=%d, wire=%s",
            self.aggregator.name, len(self.nodes), self.fraction_train, self.min_train_nodes,
            self.cfg.federation.wire_dtype,
        )
