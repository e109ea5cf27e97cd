"""Audit mode: write every round's inputs and outputs of the aggregation to disk.

With ``export.audit=true`` each round gets ``audit/round-NNNN/`` holding

* ``client-<partition>.safetensors``: the accepted client adapter exactly as aggregated (for
  FFA-LoRA, whose clients upload B only, the shared A rows they trained against are added), with
  metadata ``rank``, ``alpha``, ``scaling``, ``weight`` (p_k), ``num_examples`` (n_k of
  ``p_k = n_k / sum(n)`` over the round's accepted clients, per ``federation.weighting``);
* ``global-before.safetensors`` / ``global-after.safetensors``: the global update as factors with
  the scaling folded in (keys ``<module>.B`` and ``<module>.A``, so the update is ``B @ A``) plus
  any head tensor under its own key.

So anyone can recompute ``sum_k p_k s_k B_k A_k`` and compare it with the strategy's result
without running fedlora's code (safetensors + numpy suffice).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from fedlora.aggregation import Aggregator, ClientUpdate
from fedlora.aggregation.base import client_weights
from fedlora.lora.keys import LoraState, a_key, extra_keys, lora_modules, split_key


def folded_tensors(aggregator: Aggregator) -> dict[str, torch.Tensor]:
    """The global update's folded factors (and head) as a flat tensor dict."""
    adapter = aggregator.global_adapter()
    out = {k: adapter.state[k] for k in extra_keys(adapter.state)}
    for module, f in adapter.factors().items():
        out[f"{module}.B"], out[f"{module}.A"] = f.B, f.A
    return out


def _save(tensors: dict[str, torch.Tensor], path: Path, meta: dict[str, object]) -> None:
    contiguous = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_file(contiguous, str(path), metadata={k: json.dumps(v) for k, v in meta.items()})


class Auditor:
    """Writes the audit files of a run under ``<run dir>/audit``."""

    def __init__(self, run_dir: Path):
        self.root = Path(run_dir) / "audit"
        self._dir: Path | None = None

    def start_round(self, server_round: int, aggregator: Aggregator) -> None:
        self._dir = self.root / f"round-{server_round:04d}"
        self._dir.mkdir(parents=True, exist_ok=True)
        _save(folded_tensors(aggregator), self._dir / "global-before.safetensors", {"round": server_round})

    def write(self, updates: Sequence[ClientUpdate], aggregator: Aggregator) -> None:
        if self._dir is None:
            raise RuntimeError("Auditor.write before start_round")
        shared = aggregator.global_adapter().state if aggregator.freeze_a else {}
        for update, p in zip(updates, client_weights(updates), strict=True):
            state: LoraState = dict(update.state)
            for key in list(state):
                module, kind = split_key(key)
                if kind == "B" and a_key(module) not in state:
                    state[a_key(module)] = shared[a_key(module)][: update.spec.rank]
            lora_modules(state)  # every module must now have both factors
            meta = {"client_id": update.spec.client_id, "rank": update.spec.rank, "alpha": update.spec.alpha,
                    "scaling": update.spec.scaling, "weight": p, "num_examples": update.num_examples}
            _save(state, self._dir / f"client-{update.spec.client_id}.safetensors", meta)
        _save(folded_tensors(aggregator), self._dir / "global-after.safetensors",
              {"strategy": aggregator.name})
