"""The privacy config group composes, and every strategy x privacy rule is enforced at config time
with a message that names the field and the reason (all problems reported at once)."""

from __future__ import annotations

import pytest

from fedlora.config import ConfigError, compose
from fedlora.strategies.privacy_accountant import Accountant

STRATEGIES = ["fedit", "ffa", "hetlora", "flora", "flexlora"]


def _problems(overrides: list[str]) -> list[str]:
    """The problems a config with ``overrides`` is refused with (the test fails if it is accepted)."""
    with pytest.raises(ConfigError) as info:
        compose(overrides)
    assert info.value.problems, "a ConfigError must list its problems"
    return info.value.problems


def _one(problems: list[str], field: str) -> str:
    """The single problem about ``field``."""
    hits = [p for p in problems if p.startswith(f"{field}:")]
    assert len(hits) == 1, problems
    return hits[0]


@pytest.mark.parametrize("mode", ["central", "local"])
@pytest.mark.parametrize("preset", [[], ["preset=smoke"]])
def test_central_and_local_compose_and_set_uniform_weighting(mode: str, preset: list[str]):
    cfg = compose([*preset, f"privacy={mode}"])
    assert cfg.privacy.mode == mode and cfg.privacy.enabled
    assert cfg.federation.weighting == "uniform"
    assert (cfg.privacy.clipping_norm, cfg.privacy.noise_multiplier, cfg.privacy.delta) == (1.0, 1.0, 1e-5)
    assert cfg.privacy.noise_seed == -1 and cfg.privacy.secure_aggregation is False


def test_default_has_no_privacy_and_keeps_dataset_weighting():
    cfg = compose([])
    assert cfg.privacy.mode == "none" and not cfg.privacy.enabled
    assert cfg.federation.weighting == "dataset"


@pytest.mark.parametrize("strategy", ["fedit", "ffa", "hetlora"])
@pytest.mark.parametrize("mode", ["central", "local"])
def test_linear_strategies_accept_privacy(strategy: str, mode: str):
    ranks = [] if strategy == "fedit" else ["lora.ranks=[4,8]"]
    cfg = compose([f"strategy={strategy}", f"privacy={mode}", *ranks])
    assert cfg.strategy.name == strategy and cfg.privacy.mode == mode


@pytest.mark.parametrize(("strategy", "reason"), [
    ("flora", "publishes each client's update individually"),
    ("flexlora", "re-factors their sum by SVD"),
])
@pytest.mark.parametrize("mode", ["central", "local"])
def test_flora_and_flexlora_refuse_privacy_with_the_reason(strategy: str, reason: str, mode: str):
    problem = _one(_problems([f"strategy={strategy}", f"privacy={mode}"]), "privacy.mode")
    assert f"strategy {strategy!r} does not support differential privacy" in problem
    assert reason in problem


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("mode", ["none", "central"])
def test_secure_aggregation_is_refused_with_every_strategy(strategy: str, mode: str):
    problems = _problems([f"strategy={strategy}", f"privacy={mode}", "privacy.secure_aggregation=true"])
    problem = _one(problems, "privacy.secure_aggregation")
    assert f"strategy {strategy!r}" in problem
    assert "SecAgg+" in problem


@pytest.mark.parametrize("weighting", ["dataset", "examples"])
@pytest.mark.parametrize("mode", ["central", "local"])
def test_non_uniform_weighting_is_refused_under_privacy(weighting: str, mode: str):
    problem = _one(_problems([f"privacy={mode}", f"federation.weighting={weighting}"]),
                   "federation.weighting")
    assert "'uniform'" in problem and repr(weighting) in problem


def test_weighting_is_free_without_privacy():
    assert compose(["federation.weighting=examples"]).federation.weighting == "examples"


def test_hetlora_norm_weighting_is_refused_under_privacy():
    problem = _one(_problems(["strategy=hetlora", "strategy.norm_weighted=true", "privacy=central"]),
                   "strategy.norm_weighted")
    assert "set strategy.norm_weighted=false" in problem
    assert compose(["strategy=hetlora", "strategy.norm_weighted=true"]).strategy.norm_weighted  # fine without


def test_every_problem_is_reported_at_once():
    problems = _problems(["strategy=flora", "privacy=central", "federation.weighting=dataset",
                          "privacy.secure_aggregation=true", "privacy.delta=2"])
    for field in ("privacy.mode", "federation.weighting", "privacy.secure_aggregation", "privacy.delta"):
        _one(problems, field)


def test_a_target_below_the_first_round_is_refused():
    cfg = compose(["privacy=central"])
    first = Accountant.from_config(cfg).epsilon_after(1)  # q = 0.4 of the default federation
    problem = _one(_problems(["privacy=central", f"privacy.target_epsilon={first * 0.9}"]),
                   "privacy.target_epsilon")
    assert "exceeded by the first round" in problem and f"{first:.3g}" in problem
    ok = compose(["privacy=central", f"privacy.target_epsilon={first * 1.01}"])
    assert ok.privacy.target_epsilon == pytest.approx(first * 1.01)


def test_a_local_target_below_the_first_release_is_refused():
    first = Accountant("local", 1.0, 1e-5).epsilon_after(1)
    _one(_problems(["privacy=local", f"privacy.target_epsilon={first / 2}"]), "privacy.target_epsilon")
    compose(["privacy=local", f"privacy.target_epsilon={first * 1.01}"])


def test_a_target_needs_privacy():
    problem = _one(_problems(["privacy.target_epsilon=5"]), "privacy.target_epsilon")
    assert "central or local" in problem


@pytest.mark.parametrize(("override", "field"), [
    ("privacy.clipping_norm=0", "privacy.clipping_norm"),
    ("privacy.clipping_norm=-1.5", "privacy.clipping_norm"),
    ("privacy.clipping_norm=inf", "privacy.clipping_norm"),
    ("privacy.noise_multiplier=0", "privacy.noise_multiplier"),
    ("privacy.noise_multiplier=-0.1", "privacy.noise_multiplier"),
    ("privacy.delta=0", "privacy.delta"),
    ("privacy.delta=1", "privacy.delta"),
    ("privacy.delta=1.5", "privacy.delta"),
    ("privacy.delta=-1e-5", "privacy.delta"),
    ("privacy.target_epsilon=-1", "privacy.target_epsilon"),
    ("privacy.mode=trusted", "privacy.mode"),
])
def test_bad_privacy_fields_name_the_field(override: str, field: str):
    problems = _problems(["privacy=central", override])
    value = override.split("=", 1)[1]
    problem = _one(problems, field)
    shown = problem.rsplit(" ", 1)[-1].strip("'")  # the message ends with the offending value
    if field == "privacy.mode":
        assert shown == value
    else:
        assert "got" in problem and float(shown) == float(value)


@pytest.mark.parametrize("accounting", ["poisson", "without_replacement"])
def test_local_dp_cannot_claim_sampling_amplification(accounting: str):
    problem = _one(_problems(["privacy=local", f"privacy.accounting={accounting}"]), "privacy.accounting")
    assert accounting in problem and "local DP" in problem
    cfg = compose(["privacy=local", "privacy.accounting=no_amplification"])
    assert cfg.privacy.accounting == "no_amplification"


def test_an_unknown_accounting_is_named():
    problem = _one(_problems(["privacy=central", "privacy.accounting=prv"]), "privacy.accounting")
    assert "'prv'" in problem and "poisson" in problem


@pytest.mark.parametrize(("mode", "accounting", "method"), [
    ("central", "auto", "without_replacement"), ("local", "auto", "no_amplification"),
    ("central", "poisson", "poisson"), ("central", "no_amplification", "no_amplification")])
def test_auto_accounting_resolves_per_mode(mode: str, accounting: str, method: str):
    cfg = compose([f"privacy={mode}", f"privacy.accounting={accounting}"])
    assert Accountant.from_config(cfg).method == method
