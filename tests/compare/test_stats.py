"""The Student-t quantile and interval against published table values (no scipy here)."""

import math

import pytest

from fedlora.compare.stats import betainc, mean_ci, t_cdf, t_quantile

# Two-sided 95% (p = 0.975) and 99% (p = 0.995) critical values, from any t table.
T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 9: 2.2622, 19: 2.0930, 29: 2.0452,
        120: 1.9799}
T995 = {1: 63.6567, 2: 9.9248, 4: 4.6041, 10: 3.1693}


@pytest.mark.parametrize(("df", "value"), sorted(T975.items()))
def test_t_quantile_975_matches_table(df, value):
    assert t_quantile(0.975, df) == pytest.approx(value, abs=5e-5)


@pytest.mark.parametrize(("df", "value"), sorted(T995.items()))
def test_t_quantile_995_matches_table(df, value):
    assert t_quantile(0.995, df) == pytest.approx(value, abs=5e-5)


def test_t_quantile_is_symmetric_and_tends_to_normal():
    assert t_quantile(0.025, 4) == pytest.approx(-t_quantile(0.975, 4))
    assert t_quantile(0.5, 7) == 0.0
    assert t_quantile(0.975, 100000) == pytest.approx(1.95996, abs=1e-4)


def test_cdf_closed_forms():
    # df=1 is the Cauchy distribution; df=2 has F(t) = 1/2 + t / (2 sqrt(2 + t^2)).
    for t in (-3.0, -0.5, 0.0, 0.7, 5.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    assert betainc(2.0, 3.0, 0.4) == pytest.approx(0.5248, abs=1e-12)  # 1 - (0.6^4 + 4*0.4*0.6^3)


def test_mean_ci_by_hand():
    ci = mean_ci([0.50, 0.60, 0.70])
    # mean 0.6, sd 0.1, half = 4.3027 * 0.1 / sqrt(3)
    assert ci.mean == pytest.approx(0.6)
    assert ci.sd == pytest.approx(0.1)
    assert ci.half == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-6)
    assert (ci.lo, ci.hi, ci.n) == (pytest.approx(0.6 - ci.half), pytest.approx(0.6 + ci.half), 3)


def test_mean_ci_edge_cases():
    one = mean_ci([0.3])
    assert one.mean == 0.3 and one.n == 1 and math.isnan(one.half)
    assert mean_ci([]).n == 0 and math.isnan(mean_ci([]).mean)
    assert mean_ci([1.0, float("nan"), 3.0]).n == 2  # a run without the value does not count
    same = mean_ci([2.0, 2.0, 2.0])
    assert same.half == 0.0 and same.lo == same.hi == 2.0
    with pytest.raises(ValueError, match="confidence"):
        mean_ci([1.0, 2.0], confidence=1.5)
