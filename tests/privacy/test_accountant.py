"""The accountant's epsilon is dp-accounting's RDP epsilon of the mechanism docs/privacy.md names,
composed here directly from dp_accounting's events (not through Flower's or fedlora's accountant)."""

from __future__ import annotations

import itertools
import logging

import dp_accounting as dpa
import pytest
from dp_accounting.privacy_accountant import NeighboringRelation
from dp_accounting.rdp import RdpAccountant

from fedlora.config import compose
from fedlora.strategies.privacy_accountant import Accountant


def _direct_epsilon(event: dpa.DpEvent, rounds: int, delta: float, replace_one: bool = False) -> float:
    """Epsilon of ``rounds`` self-compositions of ``event`` at ``delta``, composed one event at a time
    on dp_accounting's own RDP accountant (add/remove neighbours unless ``replace_one``)."""
    logging.getLogger("absl").setLevel(logging.ERROR)
    relation = NeighboringRelation.REPLACE_ONE if replace_one else NeighboringRelation.ADD_OR_REMOVE_ONE
    accountant = RdpAccountant(neighboring_relation=relation)
    for _ in range(rounds):
        accountant.compose(event)
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize(("sigma", "k", "n", "rounds"), [(1.0, 4, 10, 5), (0.8, 10, 100, 20), (2.0, 1, 4, 3)])
def test_central_default_is_sampling_without_replacement_at_half_the_multiplier(
        sigma: float, k: int, n: int, rounds: int):
    """k of n drawn without replacement, neighbours replace one client: the sum's sensitivity is 2C."""
    delta = 1e-5
    want = _direct_epsilon(dpa.SampledWithoutReplacementDpEvent(n, k, dpa.GaussianDpEvent(sigma / 2)),
                           rounds, delta, replace_one=True)
    acc = Accountant("central", sigma, delta, k, n)
    assert acc.method == "without_replacement"
    assert acc.epsilon_after(rounds) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize(("sigma", "k", "n", "rounds"), [(1.0, 4, 10, 5), (0.8, 1, 10, 20), (2.0, 1, 4, 3)])
def test_central_poisson_is_the_poisson_sampled_gaussian(sigma: float, k: int, n: int, rounds: int):
    delta = 1e-5
    want = _direct_epsilon(dpa.PoissonSampledDpEvent(k / n, dpa.GaussianDpEvent(sigma)), rounds, delta)
    got = Accountant("central", sigma, delta, k, n, "poisson").epsilon_after(rounds)
    assert got == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize(("sigma", "rounds"), [(1.0, 1), (1.0, 2), (3.0, 10)])
def test_central_without_amplification_is_the_plain_gaussian(sigma: float, rounds: int):
    delta = 1e-5
    want = _direct_epsilon(dpa.GaussianDpEvent(sigma), rounds, delta)
    # Poisson at q = 1 is the same mechanism: both must agree with the accountant
    also = _direct_epsilon(dpa.PoissonSampledDpEvent(1.0, dpa.GaussianDpEvent(sigma)), rounds, delta)
    got = Accountant("central", sigma, delta, 4, 10, "no_amplification").epsilon_after(rounds)
    assert got == pytest.approx(want, rel=1e-9)
    assert got == pytest.approx(also, rel=1e-6)
    assert Accountant("central", sigma, delta, 10, 10, "poisson").epsilon_after(rounds) == pytest.approx(
        want, rel=1e-6)


@pytest.mark.parametrize(("sigma", "rounds"), [(1.0, 2), (4.0, 5)])
def test_local_is_the_gaussian_at_half_the_noise_multiplier(sigma: float, rounds: int):
    delta = 1e-6
    want = _direct_epsilon(dpa.GaussianDpEvent(sigma / 2), rounds, delta)
    got = Accountant("local", sigma, delta, 3, 10).epsilon_after(rounds)  # no sampling amplification
    assert got == pytest.approx(want, rel=1e-9)
    assert got > Accountant("central", sigma, delta, 10, 10, "no_amplification").epsilon_after(rounds)


def test_sampling_is_credited_in_the_order_the_models_promise():
    """Same sigma, 4 of 10, 5 rounds: Poisson < no amplification (add/remove), and sampling without
    replacement (replace-one) costs more than either (its sensitivity is 2C)."""
    eps = {m: Accountant("central", 1.0, 1e-5, 4, 10, m).epsilon_after(5)
           for m in ("poisson", "no_amplification", "without_replacement")}
    assert eps["poisson"] < eps["no_amplification"] < eps["without_replacement"], eps


def test_no_releases_cost_nothing():
    assert Accountant("central", 1.0, 1e-5, 4, 10).epsilon_after(0) == 0.0
    assert Accountant("local", 1.0, 1e-5).epsilon_after(0) == 0.0


def test_an_unknown_mode_has_no_accounting():
    with pytest.raises(ValueError, match="no accounting"):
        Accountant("none", 1.0, 1e-5).epsilon_after(1)


@pytest.mark.parametrize("mode", ["central", "local"])
def test_epsilon_grows_with_rounds(mode: str):
    acc = Accountant(mode, 1.5, 1e-5, 4, 10)
    eps = [acc.epsilon_after(r) for r in range(0, 12)]
    assert all(b > a for a, b in itertools.pairwise(eps)), eps


SCAN = Accountant("central", 1.2, 1e-5, 5, 10, "poisson")
SCAN_ROUNDS = 10


@pytest.fixture(scope="module")
def scan_epsilons() -> list[float]:
    """``epsilon_after(r)`` for r = 0..SCAN_ROUNDS, computed once (each value costs an RDP run)."""
    return [SCAN.epsilon_after(r) for r in range(SCAN_ROUNDS + 1)]


@pytest.mark.parametrize("target", [0.01, 0.5, 2.0, 3.3, 100.0])
def test_rounds_within_is_the_last_round_inside_the_target(target: float, scan_epsilons: list[float]):
    scan = max((r for r in range(SCAN_ROUNDS + 1) if scan_epsilons[r] <= target), default=0)
    assert SCAN.rounds_within(target, SCAN_ROUNDS) == scan
    if 0 < scan < SCAN_ROUNDS:
        assert scan_epsilons[scan] <= target < scan_epsilons[scan + 1]


def test_rounds_within_targets_cover_every_outcome(scan_epsilons: list[float]):
    """The targets above hit none, some and all rounds (else the scan would test little)."""
    within = [sum(e <= t for e in scan_epsilons[1:]) for t in (0.01, 0.5, 2.0, 3.3, 100.0)]
    assert within[0] == 0 and within[-1] == SCAN_ROUNDS and any(0 < w < SCAN_ROUNDS for w in within)


def test_rounds_within_at_exactly_an_epsilon_keeps_that_round():
    acc = Accountant("local", 2.0, 1e-5)
    assert acc.rounds_within(acc.epsilon_after(4), 10) == 4


def test_from_config_uses_the_fraction_sampled():
    cfg = compose(["privacy=central"])
    assert cfg.federation.num_clients == 10 and cfg.federation.fraction_train == 0.4
    acc = Accountant.from_config(cfg)
    assert acc.sampling_rate == pytest.approx(0.4) and (acc.sample_size, acc.population) == (4, 10)
    assert (acc.mode, acc.noise_multiplier, acc.delta) == ("central", 1.0, 1e-5)
    assert acc.method == "without_replacement"


def test_from_config_counts_min_train_clients_and_caps_at_one():
    # fraction 0.1 of 10 is 1 client, but at least min_train_clients=3 are sampled
    cfg = compose(["privacy=central", "federation.fraction_train=0.1", "federation.min_train_clients=3"])
    assert Accountant.from_config(cfg).sampling_rate == pytest.approx(0.3)
    smoke = compose(["preset=smoke", "privacy=local", "privacy.noise_multiplier=2.5", "privacy.delta=1e-6"])
    acc = Accountant.from_config(smoke)
    assert (acc.mode, acc.noise_multiplier, acc.delta, acc.sampling_rate) == ("local", 2.5, 1e-6, 1.0)
