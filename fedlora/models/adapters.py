"""Several LoRA adapters on one cached base model, switched per client and round.

A simulation worker serves clients of different ranks (``lora.ranks=[4, 8, 16]``), the server
evaluates global adapters whose module ranks differ (``rank_pattern``), and FLoRA clients apply
the global update as a second, frozen adapter. Loading the base model again for each of these
would cost a full load per shape; instead every shape is a *named PEFT adapter* on the one
wrapped model (``PeftModel.add_adapter``), and the right ones are activated per call.

* :class:`AdapterSpec` names an adapter by everything that changes its tensors' shapes or init,
  so the same request finds the same adapter again.
* The frozen adapter (:data:`FROZEN`) carries an update with the scaling folded in: every module
  gets ``alpha == rank`` (scaling 1) and dropout 0, so ``B @ A`` is added to the output as is.
  It is activated on the LoRA layers only: PEFT's ``modules_to_save`` head wrapper accepts one
  active adapter, which stays the trainable one.
* Adapters with a ``rank_pattern`` (one per global shape) are dropped when the next one is
  added, so a growing FLoRA global state does not accumulate adapters round after round.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import peft
import torch
from peft.tuners.lora import LoraLayer
from peft.utils.other import ModulesToSaveWrapper

from fedlora.config.schema import LoraConfig
from fedlora.lora.keys import LoraState, lora_modules

PEFT_PREFIX = "base_model.model."
"""Prefix of PEFT state-dict keys that module names in ``rank_pattern`` must not carry."""

FROZEN = "fedlora_frozen"
"""Name of the frozen second adapter (FLoRA's global update)."""

_PATTERNED = "pat_"


@dataclass(frozen=True)
class AdapterSpec:
    """Shape and init of one LoRA adapter.

    ``rank_pattern``/``alpha_pattern`` are PEFT's per-module overrides, keyed by module names
    *without* :data:`PEFT_PREFIX`, as sorted tuples so that the spec is hashable. ``use_rslora``
    (scaling ``alpha / sqrt(r)``) and ``use_dora`` (a ``lora_magnitude_vector`` per module) change
    the adapter's maths and keys, so they are part of its name too.
    """

    rank: int
    alpha: float
    dropout: float
    init_seed: int
    rank_pattern: tuple[tuple[str, int], ...] = ()
    alpha_pattern: tuple[tuple[str, float], ...] = ()
    use_rslora: bool = False
    use_dora: bool = False

    @property
    def name(self) -> str:
        plain = f"r{self.rank}_a{self.alpha:g}_d{self.dropout:g}_s{self.init_seed}"
        plain += ("_rs" if self.use_rslora else "") + ("_dora" if self.use_dora else "")
        plain = plain.replace(".", "p").replace("-", "m")
        if not (self.rank_pattern or self.alpha_pattern):
            return plain
        digest = hashlib.sha1(repr((self.rank_pattern, self.alpha_pattern)).encode()).hexdigest()[:12]
        return f"{_PATTERNED}{plain}_{digest}"


def patterns_from(
    rank: int, alpha: float, rank_pattern: Mapping[str, int], alpha_pattern: Mapping[str, float]
) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, float], ...]]:
    """PEFT-ready patterns: prefix stripped, entries equal to the defaults dropped, sorted."""
    ranks = tuple(sorted((k.removeprefix(PEFT_PREFIX), int(v)) for k, v in rank_pattern.items() if v != rank))
    alphas = tuple(
        sorted((k.removeprefix(PEFT_PREFIX), float(v)) for k, v in alpha_pattern.items() if v != alpha)
    )
    return ranks, alphas


def adapter_spec(
    lora_cfg: LoraConfig, rank: int | None = None,
    rank_pattern: Mapping[str, int] | None = None, alpha_pattern: Mapping[str, float] | None = None,
) -> AdapterSpec:
    """The spec of an adapter of ``rank`` (``None``: ``lora.r``) for ``lora_cfg``, as
    the loaded model (:func:`fedlora.models.build.build_lora_model`) and its weightless twin
    (:mod:`fedlora.models.shapes`) both name and shape it."""
    rank = lora_cfg.r if rank is None else rank
    if rank < 1:
        raise ValueError(f"lora.r / lora.ranks: expected a positive rank, got {rank}")
    ranks, alphas = patterns_from(rank, float(lora_cfg.alpha), rank_pattern or {}, alpha_pattern or {})
    return AdapterSpec(rank=rank, alpha=float(lora_cfg.alpha), dropout=float(lora_cfg.dropout),
                       init_seed=lora_cfg.init_seed, rank_pattern=ranks, alpha_pattern=alphas,
                       use_rslora=lora_cfg.use_rslora, use_dora=lora_cfg.use_dora)


def folded_spec(state: LoraState) -> AdapterSpec:
    """The spec of a scaling-folded state (alpha == rank per module, dropout 0)."""
    ranks = {m: pair.rank for m, pair in lora_modules(state).items()}
    top = max(ranks.values())
    rank_pattern, _ = patterns_from(top, float(top), ranks, {})
    alpha_pattern = tuple((m, float(r)) for m, r in rank_pattern)
    return AdapterSpec(rank=top, alpha=float(top), dropout=0.0, init_seed=0,
                       rank_pattern=rank_pattern, alpha_pattern=alpha_pattern)


def lora_config(spec: AdapterSpec, task: str, target_modules: list[str]) -> peft.LoraConfig:
    """The PEFT config of ``spec``."""
    return peft.LoraConfig(
        task_type=peft.TaskType.SEQ_CLS if task == "classification" else peft.TaskType.CAUSAL_LM,
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(target_modules),
        rank_pattern=dict(spec.rank_pattern),
        alpha_pattern=dict(spec.alpha_pattern),
        use_rslora=spec.use_rslora,
        use_dora=spec.use_dora,
    )


def add_adapter(
    model: peft.PeftModel, spec: AdapterSpec, config: peft.LoraConfig, name: str | None = None
) -> str:
    """Add ``spec`` as a new adapter (LoRA A drawn under ``init_seed``); return its name."""
    name = name or spec.name
    if name.startswith(_PATTERNED):
        for old in [n for n in model.peft_config if n.startswith(_PATTERNED)]:
            model.delete_adapter(old)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.init_seed)
        model.add_adapter(name, config)
    return name


def activate(model: peft.PeftModel, name: str, *, with_frozen: bool = False) -> None:
    """Make ``name`` the trainable adapter; optionally also apply :data:`FROZEN`, frozen.

    ``set_adapter`` also turns on ``requires_grad`` for the adapter's A and B (undoing any
    freeze of an earlier round) and off for every other adapter.
    """
    model.set_adapter(name)
    if not with_frozen:
        return
    if FROZEN not in model.peft_config:
        raise KeyError("activate: no frozen adapter has been loaded")
    for module in model.modules():
        if isinstance(module, LoraLayer) and FROZEN in module.lora_A:
            module.set_adapter([name, FROZEN])
            for layer in (module.lora_A[FROZEN], module.lora_B[FROZEN]):
                layer.requires_grad_(False)


def freeze_lora_a(model: peft.PeftModel, name: str) -> int:
    """Freeze the A factors of adapter ``name`` (FFA-LoRA); return how many were frozen."""
    count = 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and name in module.lora_A:
            module.lora_A[name].requires_grad_(False)
            count += 1
    return count


def drop_frozen(model: peft.PeftModel) -> None:
    """Remove the frozen adapter, if any (the active adapter is restored by :func:`activate`)."""
    if FROZEN in model.peft_config:
        model.delete_adapter(FROZEN)


def load_frozen(model: peft.PeftModel, state: LoraState, task: str, target_modules: list[str]) -> None:
    """Replace the frozen adapter by ``state`` (scaling folded; module ranks may differ)."""
    from fedlora.lora.state import check_state_fits, expected_shapes

    drop_frozen(model)
    spec = folded_spec(state)
    add_adapter(model, spec, lora_config(spec, task, target_modules), name=FROZEN)
    # PEFT gives every seq-cls adapter its own head copy; the frozen adapter must not have one
    # (the head trains in the trainable adapter, and a copy would expect head keys on load).
    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper) and FROZEN in module.modules_to_save:
            del module.modules_to_save[FROZEN]
            module._adapters.discard(FROZEN)
    model.peft_config[FROZEN].modules_to_save = None
    check_state_fits(state, expected_shapes(model, FROZEN))
    result = peft.set_peft_model_state_dict(model, state, adapter_name=FROZEN)
    if result.unexpected_keys:
        raise ValueError(f"frozen adapter: PEFT did not accept keys {sorted(result.unexpected_keys)[:5]}")
