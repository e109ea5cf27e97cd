"""Every strategy's metrics (now from Gram matrices and the SVD already computed) against the QR-based
definitions they replaced, on float32 and float64 mixed-rank rounds."""

import pytest
import torch

from fedlora.aggregation import ClientUpdate
from fedlora.aggregation.base import client_weights, oracle_factors
from fedlora.lora.factored import Factors
from tests.aggregation.mixed import MODULES, make, replies
from tests.lora.test_lora_gram_norms import _as64, _old_norm, _old_relative_error, _old_tail


def _old_gap(updates, result: dict[str, Factors]) -> dict[str, float]:
    p = client_weights(updates)
    d2 = x2 = worst = 0.0
    for m, approx in result.items():
        diff, exact = _old_relative_error(_as64(approx), _as64(oracle_factors(updates, p, m)))
        d2, x2, worst = d2 + diff**2, x2 + exact**2, max(worst, diff / exact)
    return {"agg-rel-error": (d2 / x2) ** 0.5, "agg-rel-error-max": worst}


def _with_shared_a(agg, updates):
    """FFA's B-only replies with the shared A they were trained against (the oracle's A_k)."""
    out = []
    for u in updates:
        dtype = next(iter(u.state.values())).dtype
        shared = {k: v.to(dtype) for k, v in agg.shared_a(u.spec.rank).items()}
        out.append(ClientUpdate(u.spec, {**u.state, **shared}, u.num_examples))
    return out


CASES = [("fedit", [16, 16, 16]), ("hetlora", [4, 8, 16]), ("ffa", [4, 8, 16]), ("flexlora", [4, 8, 16])]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(("name", "ranks"), CASES, ids=[c[0] for c in CASES])
def test_gap_and_truncation_metrics_match_the_qr_definitions(name, ranks, dtype):
    agg = make(name)
    exact = agg.exact
    for rnd in (1, 2):
        agg.begin_round(rnd)
        G = {m: Factors(B=f.B.to(dtype), A=f.A.to(dtype)) for m, f in agg.global_adapter().factors().items()}
        updates = replies(agg, ranks, [10, 30, 60], seed=10 * rnd, dtype=dtype)
        payload = agg.payload_metrics()
        if name in ("hetlora", "ffa") and rnd == 2:  # prefix truncations of the (nonzero) global
            errs = [_old_tail(_as64(g), r) / _old_norm(_as64(g)) for r in ranks for g in G.values()]
            assert payload["trunc-rel-error-max"] == pytest.approx(max(errs), rel=1e-5)
            assert payload["trunc-rel-error-mean"] == pytest.approx(sum(errs) / len(errs), rel=1e-5)
        metrics = agg.aggregate(updates)
        result = {m: f for m, f in agg.global_adapter().factors().items() if m in MODULES}
        ref = _old_gap(_with_shared_a(agg, updates) if name == "ffa" else updates, result)
        for key in ("agg-rel-error", "agg-rel-error-max"):
            if exact:  # round-off either way: the old definition evaluated in float64 agrees to 1e-6
                assert metrics[key] == pytest.approx(ref[key], abs=1e-6)
                assert metrics[key] < (2e-6 if dtype == torch.float32 else 1e-7)
            else:  # a real gap (fedit/hetlora: ~0.1-1 here)
                assert ref[key] > 1e-2
                assert metrics[key] == pytest.approx(ref[key], rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_flora_capped_gap_matches_the_qr_definition(dtype):
    agg = make("flora", rank_cap=6)
    for rnd in (1, 2):
        agg.begin_round(rnd)
        old = {m: Factors(B=f.B.double(), A=f.A.double()) for m, f in agg.global_adapter().factors().items()}
        updates = replies(agg, [4, 8, 16], [10, 30, 60], seed=7 * rnd, dtype=dtype)
        metrics = agg.aggregate(updates)
        new = agg.global_adapter().factors()
        p = client_weights(updates)
        d2 = x2 = 0.0
        for m in MODULES:
            inc = _as64(oracle_factors(updates, p, m))
            step = Factors(B=torch.cat([new[m].B.double(), -old[m].B], 1),
                           A=torch.cat([new[m].A.double(), old[m].A]))  # G_new - G_old
            diff, norm = _old_relative_error(step, inc)
            d2, x2 = d2 + diff**2, x2 + norm**2
        assert metrics["agg-rel-error"] == pytest.approx((d2 / x2) ** 0.5, rel=1e-4)
        assert metrics["agg-rel-error"] > 0.01
