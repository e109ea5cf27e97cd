"""Planning a comparison: scenarios x seeds x methods, validated before anything runs."""

import pytest

from fedlora.compare.plan import plan_sweep, seed_overrides
from fedlora.compare.settings import compose_settings
from fedlora.config import ConfigError, compose

SMOKE = ["preset=smoke", "compare.out_dir=/tmp/unused"]


def _plan(*overrides):
    settings, runs = compose_settings([*SMOKE, *overrides])
    return plan_sweep(settings, runs)


def test_default_comparison_is_the_acceptance_sweep():
    settings, runs = compose_settings([])
    assert settings.seeds == (0, 1, 2)
    assert [s.name for s in settings.scenarios] == ["homogeneous", "heterogeneous"]
    assert settings.strategies_for(settings.scenarios[0]) == ("fedit", "ffa", "flora", "flexlora", "hetlora")
    assert settings.strategies_for(settings.scenarios[1]) == ("ffa", "flora", "flexlora", "hetlora")
    assert settings.baselines == ("centralized", "local") and runs == []


def test_main_run_composition_is_untouched_by_compare_yaml():
    cfg = compose([])
    assert cfg.model.name == "minilm" and cfg.strategy.name == "fedit"


def test_runs_share_data_and_steps_and_seeds_vary_only_what_they_should():
    plan = _plan("compare.strategies=[fedit]", "compare.scenarios=[natural,iid]")
    assert len(plan.runs) == 2 * 3 * 3  # scenarios x seeds x (fedit + 2 baselines)
    assert plan.runs[0].run_id == "natural/fedit/seed0" and plan.runs[-1].run_id == "iid/local/seed2"
    assert plan.task == "classification" and plan.metrics[0] == "eval_accuracy"
    for scenario in ("natural", "iid"):
        runs = [r for r in plan.runs if r.scenario == scenario]
        assert len({repr(r.cfg.data) for r in runs}) == 1  # same partitions and test set for every run
        shared = {(r.cfg.train.local_steps, r.cfg.federation.num_rounds, r.cfg.model.source) for r in runs}
        assert len(shared) == 1
        for r in runs:
            assert (r.cfg.lora.init_seed, r.cfg.train.seed, r.cfg.federation.seed) == (r.seed,) * 3
            assert r.cfg.data.seed == 42
    assert {r.cfg.data.partitioner for r in plan.runs} == {"by_field", "iid"}
    assert plan.methods("iid") == ["fedit", "centralized", "local"]
    # Baselines ignore the strategy; federated fingerprints differ by seed.
    assert len({r.fingerprint for r in plan.runs}) == len(plan.runs)
    assert seed_overrides(3) == ["seed=3", "lora.init_seed=3", "train.seed=3", "federation.seed=3",
                                 "privacy.noise_seed=3"]


def test_every_run_is_reproducible_with_simulations_run():
    plan = _plan("compare.strategies=[fedit]", "compare.scenarios=[partial]", "compare.seeds=[1]")
    fed = next(r for r in plan.runs if r.kind == "federated")
    assert fed.command.startswith("python -m simulations.run preset=smoke")
    assert compose(list(fed.overrides)) == fed.cfg
    assert fed.cfg.federation.fraction_train == 0.3


def test_combined_scenarios_join_overrides_and_intersect_strategies():
    settings, _ = compose_settings([*SMOKE, "compare.scenarios=[heterogeneous+partial,homogeneous+iid]"])
    het, hom = settings.scenarios
    assert het.overrides == ("lora.ranks=[4,8,16]", "federation.fraction_train=0.3")
    assert het.strategies == ("ffa", "flora", "flexlora", "hetlora")
    assert "data.partitioner=iid" in hom.overrides and "fedit" in hom.strategies


def test_unregistered_strategy_fails_up_front_naming_the_registered_ones():
    with pytest.raises(ConfigError) as info:
        _plan("compare.strategies=[fedit,nosuch]", "compare.scenarios=[natural,iid]")
    text = str(info.value)
    assert "strategy 'nosuch' is not registered; registered strategies: [" in text
    assert "'fedit'" in text and "natural" in text and "iid" in text
    assert len(info.value.problems) == 1  # one message for the whole sweep, not one per run


def test_every_problem_of_the_sweep_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        _plan("compare.strategies=[fedit]", "compare.scenarios=[heterogeneous]", "strategy=fedit",
              "train.lr=-1")
    problems = info.value.problems
    assert any(p.startswith("'strategy=fedit': the comparison sets strategy itself") for p in problems)
    assert any(p.startswith("lora.ranks: [4, 8, 16] mixes ranks") for p in problems)  # fedit cannot
    assert any(p.startswith("train.lr:") for p in problems)


def test_bad_compare_section_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        compose_settings(["compare.scenarios=[homogeneous,nowhere]", "compare.seeds=[]",
                          "compare.confidence=2", "compare.baselines=[oracle]"])
    problems = " | ".join(info.value.problems)
    for needle in ("unknown scenario(s) ['nowhere']", "compare.seeds", "compare.confidence", "['oracle']"):
        assert needle in problems


def test_acceptance_plan_on_the_default_preset_composes():
    settings, runs = compose_settings([])
    plan = plan_sweep(settings, runs)
    federated = [r for r in plan.runs if r.kind == "federated"]
    assert len(federated) == 3 * (5 + 4) and len(plan.runs) == 3 * (5 + 4 + 2 + 2)
    het = [r for r in federated if r.scenario == "heterogeneous"]
    assert {r.cfg.lora.ranks == [4, 8, 16] for r in het} == {True}
    assert {r.cfg.strategy.name for r in het} == {"ffa", "flora", "flexlora", "hetlora"}
    assert {r.cfg.model.name for r in plan.runs} == {"minilm"}


def test_every_catalog_scenario_composes():
    settings, _ = compose_settings(SMOKE)
    names = [n for n in settings.catalog if n != "heterogeneous"]
    plan = _plan("compare.strategies=[fedit]", "compare.seeds=[0]", f"compare.scenarios=[{','.join(names)}]")
    partitioners = {r.scenario: r.cfg.data.partitioner for r in plan.runs}
    assert partitioners["iid"] == "iid" and partitioners["dirichlet01"] == "dirichlet"
    assert {r.cfg.data.dirichlet_alpha for r in plan.runs if r.scenario == "dirichlet01"} == {0.1}


def test_causal_lm_comparisons_report_the_generation_scores():
    """A causal-LM comparison scores the loss first and also carries the generation metrics."""
    settings, runs = compose_settings(["preset=smoke_llm", "compare.out_dir=/tmp/unused",
                                       "compare.strategies=[fedit]", "compare.scenarios=[iid]",
                                       "compare.seeds=[0]", "compare.baselines=[]"])
    plan = plan_sweep(settings, runs)
    assert plan.task == "causal_lm"
    assert plan.metrics == ("eval_loss", "eval_perplexity", "eval_gen_rouge_l", "eval_gen_exact_match")


def test_dp_scenarios_draw_the_same_noise_per_seed_for_every_strategy():
    plan = _plan("compare.scenarios=[dp_central]", "compare.baselines=[]")
    assert {r.method for r in plan.runs} == {"fedit", "ffa"}
    for r in plan.runs:
        assert r.cfg.privacy.mode == "central" and r.cfg.privacy.noise_seed == r.seed
        assert r.cfg.federation.weighting == "uniform"
