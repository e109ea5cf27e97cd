"""rsLoRA (``lora.use_rslora``): every aggregator uses each client's real scaling s_k = alpha / sqrt(r_k).

The float64 oracle is written out here, independently of fedlora's scaling helpers:
``sum_k p_k (alpha / sqrt(r_k)) B_k A_k``. The global adapter's update is read back the way PEFT
applies it, ``alpha_m / sqrt(r_m) * B_m @ A_m`` per module from the adapter's rank/alpha patterns.
Exact strategies must match the oracle within 1e-5 with ranks [2, 4, 8]; inexact ones must report
their true gap as ``agg-rel-error``.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from fedlora.aggregation import ClientSpec, ClientUpdate, GlobalAdapter, get_aggregator
from fedlora.lora.init import initial_state
from tests.aggregation.mixed import ALPHA, MODULES, shapes_at
from tests.conftest import random_state

RANKS, COUNTS = [2, 4, 8], [10, 30, 60]
R_MAX = 8


def _make(name: str, **kwargs) -> tuple:
    agg = get_aggregator(name)(alpha=ALPHA, use_rslora=True, **kwargs)
    state = {k: v.double() for k, v in initial_state(shapes_at(R_MAX), 0).items()}
    agg.init_state(GlobalAdapter(state, R_MAX, ALPHA, use_rslora=True))
    return agg, state


def _replies(agg, ranks, counts, seed) -> list[ClientUpdate]:
    out = []
    for i, (r, n) in enumerate(zip(ranks, counts, strict=True)):
        spec = ClientSpec(f"c{i}", r, ALPHA, use_rslora=True)
        template = agg.reply_template(spec, agg.payload(spec))
        shapes = {k: tuple(v.shape) for k, v in template.items()}
        out.append(ClientUpdate(spec, random_state(shapes, seed + i), n))
    return out


def _factor(u: ClientUpdate, module: str, kind: str, shared_a: torch.Tensor | None) -> torch.Tensor:
    if kind == "A" and shared_a is not None:  # ffa: B-only replies, A is the shared draw's first r rows
        return shared_a[: u.spec.rank]
    return u.state[f"{module}.lora_{kind}.weight"]


def oracle(updates: list[ClientUpdate], module: str, shared_a=None, rslora: bool = True) -> torch.Tensor:
    """sum_k p_k s_k B_k A_k, dense, with s_k = ALPHA / sqrt(r_k) (or ALPHA / r_k to show the difference)."""
    total = sum(u.num_examples for u in updates)
    out = torch.zeros(1, dtype=torch.float64)
    for u in updates:
        s = ALPHA / math.sqrt(u.spec.rank) if rslora else ALPHA / u.spec.rank
        B, A = _factor(u, module, "B", shared_a), _factor(u, module, "A", shared_a)
        out = out + (u.num_examples / total) * s * B @ A
    return out


def applied(adapter: GlobalAdapter, module: str) -> torch.Tensor:
    """The update PEFT applies for this module under rsLoRA: alpha_m / sqrt(r_m) * B @ A."""
    assert adapter.use_rslora
    r = adapter.rank_pattern.get(module, adapter.rank)
    alpha = adapter.alpha_pattern.get(module, adapter.alpha)
    B, A = adapter.state[f"{module}.lora_B.weight"], adapter.state[f"{module}.lora_A.weight"]
    assert A.shape[0] == r
    return (alpha / math.sqrt(r)) * B @ A


def _rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x - y).norm() / y.norm())


@pytest.mark.parametrize("name", ["ffa", "flora", "flexlora"])
def test_exact_strategies_match_the_rslora_oracle_with_ranks_2_4_8(name):
    agg, init = _make(name)
    shared = {m: init[f"{m}.lora_A.weight"] for m in MODULES} if name == "ffa" else {}
    for rnd, (ranks, counts) in enumerate([(RANKS, COUNTS), ([8, 2], [3, 1])], start=1):
        agg.begin_round(rnd)
        before = agg.global_adapter()
        updates = _replies(agg, ranks, counts, seed=10 * rnd)
        metrics = agg.aggregate(updates)
        after = agg.global_adapter()
        assert after.use_rslora
        for m in MODULES:
            got = applied(after, m) - (applied(before, m) if name == "flora" else 0)
            want = oracle(updates, m, shared.get(m))
            assert _rel(got, want) <= 1e-5
            # the plain-LoRA scaling alpha / r would be far off: the test tells the two apart
            assert _rel(oracle(updates, m, shared.get(m), rslora=False), want) > 0.1
        assert metrics["agg-rel-error"] <= 1e-7  # float64 Gram norms resolve gaps to ~sqrt(eps64)


def test_folded_global_adapters_carry_alpha_sqrt_r_per_module():
    """flora/flexlora fold the scaling into B: under rsLoRA alpha_m = sqrt(r_m) makes PEFT's scaling 1."""
    for name in ("flora", "flexlora"):
        agg, _ = _make(name)
        agg.begin_round(1)
        agg.aggregate(_replies(agg, RANKS, COUNTS, seed=1))
        ga = agg.global_adapter()
        ranks = {m: ga.rank_pattern.get(m, ga.rank) for m in MODULES}
        assert ga.alpha == math.sqrt(ga.rank)
        for m, r in ranks.items():
            alpha = ga.alpha_pattern.get(m, ga.alpha)
            assert alpha / math.sqrt(r) == 1.0
            B, A = ga.state[f"{m}.lora_B.weight"], ga.state[f"{m}.lora_A.weight"]
            torch.testing.assert_close(applied(ga, m), B @ A, rtol=0, atol=0)


def _overall(diffs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    num = sum(float((g - w).norm()) ** 2 for g, w in diffs)
    den = sum(float(w.norm()) ** 2 for _, w in diffs)
    return math.sqrt(num / den)


def test_hetlora_reports_its_true_gap_under_rslora():
    agg, _ = _make("hetlora")
    updates = _replies(agg, RANKS, COUNTS, seed=3)
    metrics = agg.aggregate(updates)
    ga = agg.global_adapter()
    p = [n / sum(COUNTS) for n in COUNTS]
    diffs = []
    for m in MODULES:
        # the paper's rule by hand: zero-pad s_k B_k and A_k to r_max, weighted mean of each
        pad = [R_MAX - u.spec.rank for u in updates]
        B = sum(pk * (ALPHA / math.sqrt(u.spec.rank)) * F.pad(u.state[f"{m}.lora_B.weight"], (0, n))
                for pk, u, n in zip(p, updates, pad, strict=True))
        A = sum(pk * F.pad(u.state[f"{m}.lora_A.weight"], (0, 0, 0, n))
                for pk, u, n in zip(p, updates, pad, strict=True))
        assert _rel(applied(ga, m), B @ A) <= 1e-12
        diffs.append((applied(ga, m), oracle(updates, m)))
    true_gap = _overall(diffs)
    assert true_gap > 1e-2  # inexact, and visibly so
    assert metrics["agg-rel-error"] == pytest.approx(true_gap, rel=1e-9)
    assert metrics["agg-rel-error-max"] == pytest.approx(max(_rel(g, w) for g, w in diffs), rel=1e-9)


def test_fedit_reports_its_true_gap_under_rslora():
    agg, _ = _make("fedit")
    updates = _replies(agg, [8, 8, 8], COUNTS, seed=5)
    metrics = agg.aggregate(updates)
    ga = agg.global_adapter()
    p = [n / sum(COUNTS) for n in COUNTS]
    diffs = []
    for m in MODULES:
        B = sum(pk * u.state[f"{m}.lora_B.weight"] for pk, u in zip(p, updates, strict=True))
        A = sum(pk * u.state[f"{m}.lora_A.weight"] for pk, u in zip(p, updates, strict=True))
        assert _rel(applied(ga, m), (ALPHA / math.sqrt(8)) * B @ A) <= 1e-12
        diffs.append((applied(ga, m), oracle(updates, m)))
    assert metrics["agg-rel-error"] == pytest.approx(_overall(diffs), rel=1e-9)
    assert metrics["agg-rel-error"] > 1e-2


def test_payloads_divide_by_the_clients_own_rslora_scaling():
    """A client's starting update s_k B A equals the global update restricted to its slots."""
    agg, _ = _make("hetlora")
    agg.aggregate(_replies(agg, RANKS, COUNTS, seed=7))
    ga = agg.global_adapter()
    for r in RANKS:
        payload = agg.payload(ClientSpec("x", r, ALPHA, use_rslora=True))
        for m in MODULES:
            start = (ALPHA / math.sqrt(r)) * payload[f"{m}.lora_B.weight"] @ payload[f"{m}.lora_A.weight"]
            g_B = (ALPHA / math.sqrt(R_MAX)) * ga.state[f"{m}.lora_B.weight"][:, :r]
            torch.testing.assert_close(start, g_B @ ga.state[f"{m}.lora_A.weight"][:r])


def test_an_initial_adapter_of_the_other_scaling_rule_is_refused():
    agg = get_aggregator("ffa")(alpha=ALPHA, use_rslora=True)
    state = initial_state(shapes_at(R_MAX), 0)
    with pytest.raises(ValueError, match="use_rslora=False but the aggregator was built with use_rslora=Tr"):
        agg.init_state(GlobalAdapter(state, R_MAX, ALPHA))
