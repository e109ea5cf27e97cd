"""Shared fixtures of the mixed-rank aggregation tests: float64 states, dense oracles by hand."""

from __future__ import annotations

import torch

from fedlora.aggregation import Aggregator, ClientSpec, ClientUpdate, GlobalAdapter, get_aggregator
from fedlora.lora.init import initial_state
from tests.conftest import random_state

ALPHA = 8.0
R_MAX = 16
MODULES = {"m.sq": (16, 16), "m.wide": (10, 14)}  # module: (out, in)
HEAD = "m.head.weight"


def shapes_at(rank: int, head: bool = True, modules: dict[str, tuple[int, int]] = MODULES) -> dict:
    shapes: dict[str, tuple[int, ...]] = {}
    for m, (out, inn) in modules.items():
        shapes[f"{m}.lora_A.weight"] = (rank, inn)
        shapes[f"{m}.lora_B.weight"] = (out, rank)
    if head:
        shapes[HEAD] = (3, 10)
    return shapes


def initial(head: bool = True, seed: int = 0, modules: dict[str, tuple[int, int]] = MODULES) -> GlobalAdapter:
    """The round-0 adapter at R_MAX as the server builds it (A Kaiming-uniform, B = 0), in float64."""
    state = {k: v.double() for k, v in initial_state(shapes_at(R_MAX, head, modules), seed).items()}
    return GlobalAdapter(state, R_MAX, ALPHA)


def make(name: str, head: bool = True, modules: dict[str, tuple[int, int]] = MODULES, **kwargs) -> Aggregator:
    agg = get_aggregator(name)(alpha=ALPHA, **kwargs)
    agg.init_state(initial(head, modules=modules))
    return agg


def replies(agg: Aggregator, ranks: list[int], counts: list[int], seed: int, ids: list[str] | None = None,
            dtype: torch.dtype = torch.float64) -> list[ClientUpdate]:
    """One round: each client gets its payload and answers random float64 tensors of the expected shapes."""
    ids = ids or [f"c{i}" for i in range(len(ranks))]
    out = []
    for i, (cid, r, n) in enumerate(zip(ids, ranks, counts, strict=True)):
        spec = ClientSpec(cid, r, ALPHA)
        template = agg.reply_template(spec, agg.payload(spec))
        state = random_state({k: tuple(v.shape) for k, v in template.items()}, seed + i, dtype)
        out.append(ClientUpdate(spec, state, n))
    return out


def weights(updates: list[ClientUpdate]) -> list[float]:
    total = sum(u.num_examples for u in updates)
    return [u.num_examples / total for u in updates]


def dense_oracle(updates: list[ClientUpdate], module: str, shared_a: torch.Tensor | None = None,
                 ) -> torch.Tensor:
    """``sum_k p_k s_k B_k A_k`` as a dense matrix (``shared_a[:r_k]`` for FFA's B-only replies)."""
    total = 0
    for pk, u in zip(weights(updates), updates, strict=True):
        A = shared_a[: u.spec.rank] if shared_a is not None else u.state[f"{module}.lora_A.weight"]
        total = total + pk * (ALPHA / u.spec.rank) * u.state[f"{module}.lora_B.weight"] @ A
    return total


def dense_global(agg: Aggregator) -> dict[str, torch.Tensor]:
    """The global update per module, dense, from the adapter (scaling applied)."""
    return {m: f.dense() for m, f in agg.global_adapter().factors().items()}


def rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x - y).norm() / y.norm())
