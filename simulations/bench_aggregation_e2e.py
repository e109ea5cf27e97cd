"""The end-to-end half of :mod:`simulations.bench_aggregation`: every registered aggregator (payloads,
aggregate, all metrics) per 4096 x 4096 module vs its dense method. Run through that module's CLI."""

from __future__ import annotations

import statistics
import time

import torch

from fedlora.aggregation import GlobalAdapter, get_aggregator
from fedlora.lora.factored import Factors
from simulations.bench_aggregation import ALPHA, CAP, RANKS, _updates, client_factors, weights

STRATEGIES = ["fedit", "ffa", "flexlora", "flora", "hetlora"]
STRATEGY_RANKS = {"fedit": [16] * 10}  # fedit needs one rank: all 10 clients at 16 (sum 160)
TARGET = 300  # issue "Performance at scale": every registered aggregator, end to end, vs its dense method


def aggregator_run(name: str, mods: list[int], dim: int, repeat: int) -> list[float]:
    """Seconds per module of the registered aggregator's round 2 (round 1 untimed, so the global is
    nonzero and flora's G full at the cap): begin_round, the 10 payloads, payload_metrics, aggregate."""
    ranks = STRATEGY_RANKS.get(name, RANKS)
    g = torch.Generator().manual_seed(3000)
    init = {}
    for m in mods:  # Kaiming-uniform A (ffa's shared A, the fresh slots of the others), B = 0
        init[f"l{m}.lora_A.weight"] = (torch.rand(max(ranks), dim, generator=g) * 2 - 1) / dim**0.5
        init[f"l{m}.lora_B.weight"] = torch.zeros(dim, max(ranks))
    agg = get_aggregator(name)(alpha=ALPHA, rank_cap=CAP if name == "flora" else 0)
    agg.init_state(GlobalAdapter(init, max(ranks), ALPHA))
    updates = _updates(mods, dim, ranks)
    times = []
    for rnd in range(1, repeat + 2):
        t0 = time.perf_counter()
        agg.begin_round(rnd)
        for u in updates:
            agg.payload(u.spec)
        agg.payload_metrics()
        agg.aggregate(updates)
        times.append((time.perf_counter() - t0) / len(mods))
    return times[1:]


def _gap(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(x - y) / torch.linalg.matrix_norm(y))


def dense_method(name: str, parts: list[Factors], shared_a: torch.Tensor) -> dict[str, float]:
    """The same round and metrics on dense out x in matrices (fedit, hetlora, ffa; ``parts`` folded):
    the dense oracle sum_k p_k s_k B_k A_k, the strategy's global B_g A_g and its gap, and (hetlora,
    ffa) each payload's prefix truncation error ||G - B_g[:, :r] A_g[:r]|| / ||G||."""
    p, r_max = weights(), max(f.rank for f in parts)
    A_k = [shared_a[: f.rank] for f in parts] if name == "ffa" else [f.A for f in parts]
    oracle = sum(pk * f.B @ a for pk, f, a in zip(p, parts, A_k, strict=True))
    pad = torch.nn.functional.pad
    B_g = sum(pk * pad(f.B, (0, r_max - f.rank)) for pk, f in zip(p, parts, strict=True))
    A_g = shared_a if name == "ffa" else sum(pk * pad(f.A, (0, 0, 0, r_max - f.rank))
                                             for pk, f in zip(p, parts, strict=True))
    G = B_g @ A_g
    out = {"agg-rel-error": _gap(G, oracle)}
    if name != "fedit":
        out["trunc"] = max(_gap(B_g[:, :f.rank] @ A_g[:f.rank], G) for f in parts)
    return out


def e2e_child(path: str, mods: int, repeat: int, dim: int) -> dict[str, list[float]]:
    """Per-module seconds of every registered aggregator end to end (``e2e``), or of the dense method
    of the strategies without an SVD (``dense-e2e``; flexlora/flora's dense rows are the SVD paths)."""
    if path == "e2e":
        return {name: aggregator_run(name, list(range(mods)), dim, repeat) for name in STRATEGIES}
    out: dict[str, list[float]] = {}
    for name in ("fedit", "hetlora", "ffa"):
        out[name] = []
        for m in range(mods):
            parts = client_factors(m, dim, STRATEGY_RANKS.get(name, RANKS))
            g = torch.Generator().manual_seed(m)
            shared = (torch.rand(max(RANKS), dim, generator=g) * 2 - 1) / dim**0.5
            for _ in range(repeat):
                t0 = time.perf_counter()
                dense_method(name, parts, shared)
                out[name].append(time.perf_counter() - t0)
    return out


def e2e_table(res: dict) -> tuple[str, str]:
    """Every registered aggregator end to end vs its dense method, and which reach ``TARGET``."""
    lines = ["| strategy | client ranks | registered aggregator s/module (min-max) | dense method s/module "
             "(min-max) | speed-up | >= 300x |", "|" + "---|" * 6]
    short = []
    for name in STRATEGIES:
        fact = res["e2e"][name]
        dense = res[f"dense-{name}"]["times"] if name in ("flexlora", "flora") else res["dense-e2e"][name]
        tf, td = statistics.median(fact), statistics.median(dense)
        ranks = "16 x 10" if name in STRATEGY_RANKS else "4..64"
        reach = "yes" if td >= TARGET * tf else "no"
        lines.append(f"| {name} | {ranks} | {tf:.4f} ({min(fact):.4f}-{max(fact):.4f}) | {td:.3f} "
                     f"({min(dense):.3f}-{max(dense):.3f}) | {td / tf:,.0f}x | {reach} |")
        short += [] if td / tf >= TARGET else [name]
    return "\n".join(lines), "PASS" if not short else f"FAIL ({', '.join(short)} below {TARGET}x)"
