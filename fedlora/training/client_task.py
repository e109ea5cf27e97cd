"""What a client does with a message, without Flower: the ClientApp only decodes and encodes.

Per-node facts come from Flower's node config (:mod:`fedlora.training.node`): in simulation
``partition-id``/``num-partitions`` (injected by the Simulation Engine) and the rank from
``lora.ranks``; in deployment the keys given to ``flower-supernode --node-config``. A node with
``data-path`` trains on that whole file; the others on a partition of the shared corpus. The
base model, the wrapped PeftModel and the tokenized data are cached per process by
:mod:`fedlora.models` and :mod:`fedlora.data`, so a simulation worker loads them once however
many rounds and virtual clients it serves, and a resident node worker
(:mod:`fedlora.deploy.worker`) once for the whole run.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

from fedlora.config.load import from_yaml
from fedlora.config.schema import RunConfig
from fedlora.data import ClientData, load_client_data, load_node_data, make_collator, tokenize_dataset
from fedlora.lora.init import initial_state, state_hash
from fedlora.lora.keys import LoraState, split_key
from fedlora.lora.state import expected_shapes, get_lora_state, set_lora_state, states_equal
from fedlora.models.adapters import activate, freeze_lora_a, load_frozen
from fedlora.models.build import build_lora_model, load_tokenizer
from fedlora.models.targets import resolve_target_modules
from fedlora.privacy.mechanism import noise_generator, privatize_local
from fedlora.protocol import A_HASH as P_A_HASH
from fedlora.protocol import A_RANK_MAX as P_A_RANK_MAX
from fedlora.protocol import DP_B_WEIGHT as P_DP_B_WEIGHT
from fedlora.training.evaluate import evaluate
from fedlora.training.faults import apply_faults
from fedlora.training.local import train_local
from fedlora.training.node import NodeFacts, local_config, node_facts, process_facts

__all__ = ["NodeFacts", "RoundPlan", "describe", "evaluate_round", "local_config", "node_facts",
           "process_facts", "train_round"]


@functools.lru_cache(maxsize=8)
def config_from_yaml(text: str) -> RunConfig:
    """Parse the server's config once per process (messages repeat the same text)."""
    return from_yaml(text)


def describe(cfg: RunConfig, facts: NodeFacts, labels: list[str] | None = None) -> dict[str, Any]:
    """Capabilities reported in the query round (the server sizes and weights this node by them)."""
    data = _client_data(local_config(cfg, facts), facts, labels)
    return {
        "partition-id": facts.partition_id,
        "rank": facts.rank,
        "device": facts.device,
        "quantization": facts.quantization,
        "num-train-examples": len(data.train),
        "num-eval-examples": len(data.heldout),
        "own-data": facts.own_data,  # else a partition of the shared corpus
    }


def _client_data(cfg: RunConfig, facts: NodeFacts, labels: list[str] | None) -> ClientData:
    """The node's own file (whole, less its local validation split) or its partition of the corpus."""
    if facts.own_data:
        return load_node_data(cfg.data, cfg.model.task, facts.data_path,
                              heldout_fraction=facts.heldout_fraction, labels=labels)
    return load_client_data(cfg.data, cfg.model.task, facts.partition_id, facts.num_partitions)


# Tokenized client data, per process: (repr(cfg), repr(node facts), labels) -> datasets, read once per run.
_TOKENIZED: dict[tuple[str, str, tuple[str, ...] | None], tuple[Any, Any, Any]] = {}


def _tokenized(cfg: RunConfig, facts: NodeFacts, labels: list[str] | None) -> tuple[Any, Any, Any]:
    key = (repr(cfg), repr(facts), tuple(labels) if labels else None)
    if key not in _TOKENIZED:
        _TOKENIZED[key] = _tokenize(cfg, facts, labels)
    return _TOKENIZED[key]


def _tokenize(cfg: RunConfig, facts: NodeFacts, labels: list[str] | None) -> tuple[Any, Any, Any]:
    tok = load_tokenizer(cfg.model)
    data = _client_data(cfg, facts, labels)
    max_len = cfg.model.max_length
    train = tokenize_dataset(data.train, tok, cfg.model.task, max_len)
    heldout = tokenize_dataset(data.heldout, tok, cfg.model.task, max_len) if len(data.heldout) else None
    return train, heldout, make_collator(tok, cfg.model.task)


def _model(
    cfg: RunConfig, rank: int, alpha: float, num_labels: int | None,
    rank_pattern: dict[str, int] | None = None, alpha_pattern: dict[str, float] | None = None,
) -> Any:
    lora = dataclasses.replace(cfg.lora, alpha=alpha)
    return build_lora_model(cfg.model, lora, rank=rank, num_labels=num_labels,
                            rank_pattern=rank_pattern, alpha_pattern=alpha_pattern)


@dataclass(frozen=True)
class RoundPlan:
    """What the server asked of this client this round, beyond its starting state."""

    server_round: int
    lr: float
    rank: int
    alpha: float
    labels: list[str] | None = None
    frozen: LoraState | None = None  # flora: the global update, applied as a frozen second adapter
    freeze_a: bool = False  # ffa: A regenerated from lora.init_seed, frozen, not uploaded
    a_rank_max: int = 0  # ffa: rank of the shared A (the client uses its first `rank` rows)
    dp_b_weight: float = 0.0  # privacy=local: B's weight in the space the strategy averages (0: not sent)


def shared_a(cfg: RunConfig, shapes: dict[str, tuple[int, ...]], rank: int, rank_max: int) -> LoraState:
    """FFA-LoRA's shared A, regenerated exactly as the server drew its initial adapter.

    The server draws the round-0 adapter at the largest rank with :func:`initial_state` over all
    keys in sorted order, so the client rebuilds that same key set at ``rank_max`` and keeps
    the first ``rank`` rows of every A.
    """
    if rank_max < rank:
        raise ValueError(f"{P_A_RANK_MAX}={rank_max} is smaller than this client's rank {rank}")
    at_max = {}
    for key, shape in shapes.items():
        kind = split_key(key)[1]
        at_max[key] = (rank_max, shape[1]) if kind == "A" else (shape[0], rank_max) if kind == "B" else shape
    drawn = initial_state(at_max, cfg.lora.init_seed)
    return {k: v[:rank].clone() for k, v in drawn.items() if split_key(k)[1] == "A"}


def train_round(
    cfg: RunConfig, facts: NodeFacts, state: LoraState, plan: RoundPlan
) -> tuple[LoraState, dict[str, float | int]]:
    """Warm-start from ``state`` (plus a frozen adapter or shared A), train locally, return the new state."""
    cfg = local_config(cfg, facts)
    model = _model(cfg, plan.rank, plan.alpha, len(plan.labels) if plan.labels else None)
    trainable = model.active_adapter
    a_part: LoraState = {}
    if plan.freeze_a:
        a_part = shared_a(cfg, expected_shapes(model), plan.rank, plan.a_rank_max)
    set_lora_state(model, {**state, **a_part})
    if plan.frozen is not None:
        load_frozen(model, plan.frozen, cfg.model.task, resolve_target_modules(model, cfg.lora))
        activate(model, trainable, with_frozen=True)
    if plan.freeze_a:
        freeze_lora_a(model, trainable)
    train, _, collate = _tokenized(cfg, facts, plan.labels)
    seed = cfg.train.seed + 1000 * plan.server_round + facts.partition_id
    label = f"client {facts.partition_id} round {plan.server_round}"
    result = train_local(model, train, collate, cfg.train, lr=plan.lr, seed=seed, label=label)
    metrics: dict[str, float | int] = {
        "num-examples": result.num_examples,
        "train-loss": result.loss,
        "train-steps": result.steps,
        "train-seconds": result.seconds,
        "train-rows": len(train),  # this node's whole training split (its own file, or its partition)
    }
    out = get_lora_state(model)
    if plan.freeze_a:
        a_now = {k: v for k, v in out.items() if k in a_part}
        if not states_equal(a_now, a_part):
            raise RuntimeError(f"[{label}] the frozen A changed during training")
        metrics[P_A_HASH] = state_hash(a_now)
        out = {k: v for k, v in out.items() if k not in a_part}
    activate(model, trainable)  # leave no frozen adapter active for the next caller
    if cfg.privacy.mode == "local":
        out = _release_locally(cfg, out, state, plan, facts.partition_id)
    return apply_faults(cfg, facts.partition_id, plan.server_round, out, metrics)  # simulated bad clients


def _release_locally(cfg: RunConfig, out: LoraState, start: LoraState, plan: RoundPlan,
                     partition_id: int) -> LoraState:
    """``privacy=local``: clip this client's update and add its Gaussian noise before anything leaves."""
    if plan.dp_b_weight <= 0:
        raise ValueError("privacy.mode=local, but the train message carries no positive "
                         f"{P_DP_B_WEIGHT!r}: the server must run fedlora with the same privacy config")
    priv = cfg.privacy
    generator = noise_generator(priv.noise_seed, "local", plan.server_round, partition_id)
    released, _ = privatize_local(out, start, bound=priv.clipping_norm,
                                  noise_multiplier=priv.noise_multiplier, b_weight=plan.dp_b_weight,
                                  generator=generator)
    return released


def evaluate_round(
    cfg: RunConfig, facts: NodeFacts, state: LoraState, *, rank: int, alpha: float, labels: list[str] | None,
    rank_pattern: dict[str, int] | None = None, alpha_pattern: dict[str, float] | None = None,
) -> dict[str, float | int]:
    """Evaluate a global adapter on this client's held-out split."""
    cfg = local_config(cfg, facts)
    model = _model(cfg, rank, alpha, len(labels) if labels else None, rank_pattern, alpha_pattern)
    set_lora_state(model, state)
    _, heldout, collate = _tokenized(cfg, facts, labels)
    if heldout is None:
        raise ValueError("this client has no held-out split to evaluate on (data.heldout_fraction is 0, or "
                         "its own data-path has no heldout-fraction in its node config)")
    metrics = evaluate(model, heldout, collate, task=cfg.model.task, batch_size=cfg.train.eval_batch_size)
    return {"num-examples": len(heldout),
            **{f"eval-{k}": v for k, v in metrics.items() if k != "num_examples"}}
