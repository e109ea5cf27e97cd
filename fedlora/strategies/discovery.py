"""The query round: learn every node's partition, rank and data size, and refuse bad reports.

A node's capabilities (``caps``) come from its own node config, i.e. from outside the server's
control, and they size everything after: the largest rank sizes the global adapter, the data size
weights the node's updates, the partition id decides which examples it trains on. So each report
is checked here, before any payload is built: a node that fails a check is dropped with its reason
(a ``rejected.jsonl`` row, stage ``discovery``, round 0) and is never sampled, instead of an
uncaught ``ValueError`` ending the run or a bogus rank reaching the aggregator. Only when fewer
than ``federation.min_train_clients`` good nodes remain does discovery raise.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedlora import protocol as P
from fedlora.aggregation.registry import mixed_ranks_problem
from fedlora.config.schema import RunConfig
from fedlora.results import RunRecorder
from fedlora.strategies.lora_strategy import NodeInfo
from fedlora.strategies.run_state import RunFailed
from fedlora.strategies.validation import short_reason

log = logging.getLogger(__name__)

QUERY_TIMEOUT_MIN_S = 120.0
"""The query round waits at least this long: it is where simulation workers start cold (a fresh
process importing torch and transformers can take tens of seconds on a busy CPU), so a short
``federation.round_timeout_s`` meant for training rounds must not drop every node before round 1."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_caps(caps: Any, node_id: int, cfg: RunConfig) -> tuple[NodeInfo | None, str]:
    """``(NodeInfo, "")`` for a good report, else ``(None, reason)``.

    Checks: the report is a ConfigRecord; ``partition-id`` a non-negative integer; ``rank`` an
    integer in ``1..lora.max_rank`` and, for a strategy that does not accept mixed ranks (fedit),
    equal to ``lora.r``; ``num-train-examples`` a positive integer; ``num-eval-examples`` (optional)
    a non-negative integer (a node without held-out data is not asked to evaluate).
    """
    if not isinstance(caps, ConfigRecord):
        return None, f"the query reply holds no ConfigRecord {P.CAPS!r}"
    pid, rank, n = caps.get(P.PARTITION_ID), caps.get(P.RANK), caps.get(P.NUM_TRAIN_EXAMPLES)
    if not _is_int(pid) or pid < 0:
        return None, f"{P.PARTITION_ID!r} must be a non-negative integer, got {pid!r}"
    max_rank = cfg.lora.max_rank
    if not _is_int(rank) or not 1 <= rank <= max_rank:
        return None, f"{P.RANK!r} must be an integer in 1..lora.max_rank={max_rank}, got {rank!r}"
    if problem := mixed_ranks_problem(cfg.strategy.name, [cfg.lora.r, rank]):
        return None, f"rank {rank} (node config lora-rank) with lora.r={cfg.lora.r}: {problem}"
    if not _is_int(n) or n <= 0:
        return None, f"{P.NUM_TRAIN_EXAMPLES!r} must be a positive integer, got {n!r}"
    n_eval = caps.get(P.NUM_EVAL_EXAMPLES, -1)
    if not _is_int(n_eval) or n_eval < -1:
        return None, f"{P.NUM_EVAL_EXAMPLES!r} must be a non-negative integer, got {n_eval!r}"
    info = NodeInfo(node_id=node_id, partition_id=pid, rank=rank, device=str(caps.get(P.DEVICE, "?")),
                    num_train_examples=n, num_eval_examples=n_eval)
    return info, ""


def _wait_for_nodes(grid: Grid, want: int, wait_s: float) -> list[int]:
    deadline = time.monotonic() + wait_s
    while len(ids := list(grid.get_node_ids())) < want:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(ids)} of federation.num_clients={want} nodes connected")
        time.sleep(0.5)
    return ids


def discover_nodes(
    grid: Grid, cfg: RunConfig, shared: dict[str, Any], recorder: RunRecorder | None = None,
    wait_s: float = 600.0,
) -> dict[int, NodeInfo]:
    """Wait for ``federation.num_clients`` nodes, ask each for its caps, keep the good ones.

    Every dropped node (failed or missing query reply, bad caps, a partition id another node of the
    shared corpus already claims) is recorded through ``recorder`` (and logged).

    Raises
    ------
    RunFailed
        (a RuntimeError) If fewer than ``federation.min_train_clients`` nodes pass, naming every reason.
    TimeoutError
        If fewer than ``federation.num_clients`` nodes connect within ``wait_s``.
    """
    ids = _wait_for_nodes(grid, cfg.federation.num_clients, wait_s)
    messages = [
        Message(RecordDict({P.CONFIG: ConfigRecord(shared)}), dst_node_id=nid, message_type=MessageType.QUERY)
        for nid in ids
    ]
    dropped: list[dict[str, Any]] = []

    def drop(node_id: int, reason: str, partition_id: Any = None) -> None:
        row: dict[str, Any] = {"stage": "discovery", "round": 0, "node_id": node_id}
        if _is_int(partition_id):
            row["partition_id"] = partition_id
        row["reason"] = reason
        dropped.append(row)
        if recorder is not None:
            recorder.add_rejected(row)
        else:
            log.warning("discovery: dropped node %s: %s", node_id, reason)

    good: list[tuple[NodeInfo, bool]] = []
    answered: set[int] = set()
    timeout = max(cfg.federation.round_timeout_s, QUERY_TIMEOUT_MIN_S)
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node_id = reply.metadata.src_node_id
        answered.add(node_id)
        if reply.has_error():
            drop(node_id, f"the query round failed: {short_reason(reply.error.reason)}")
            continue
        caps = reply.content.config_records.get(P.CAPS)
        info, reason = check_caps(caps, node_id, cfg)
        if info is None:
            drop(node_id, reason, caps.get(P.PARTITION_ID) if isinstance(caps, ConfigRecord) else None)
            continue
        good.append((info, bool(caps.get(P.OWN_DATA, False))))
    for node_id in sorted(set(ids) - answered):
        drop(node_id, f"no reply to the query round within {timeout:g} s")

    nodes: dict[int, NodeInfo] = {}
    claimed: dict[int, int] = {}  # partition id of the shared corpus -> node id holding it
    for info, own_data in sorted(good, key=lambda g: g[0].node_id):
        holder = claimed.get(info.partition_id)
        if not own_data and holder is not None:
            drop(info.node_id, f"partition-id {info.partition_id} is already claimed by node {holder}: "
                               "two nodes would train on the same partition of the shared data",
                 info.partition_id)
            continue
        if not own_data:
            claimed[info.partition_id] = info.node_id
        nodes[info.node_id] = info

    need = cfg.federation.min_train_clients
    if len(nodes) < need:
        reasons = "; ".join(f"node {r['node_id']}: {r['reason']}" for r in dropped)
        raise RunFailed(f"discovery: only {len(nodes)} of {len(ids)} nodes passed the query round, fewer "
                           f"than federation.min_train_clients={need}. Dropped: {reasons or 'none'}")
    log.info("discovered %d nodes: %s", len(nodes),
             ", ".join(f"p{n.partition_id}(r={n.rank},{n.device},n={n.num_train_examples})"
                       for n in sorted(nodes.values(), key=lambda n: n.partition_id)))
    return nodes
