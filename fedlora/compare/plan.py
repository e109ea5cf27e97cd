"""Expand a comparison into runs (scenarios x seeds x methods) and validate all of them up front.

Why compose every run before running any: a sweep of 40 runs that dies at run 23 on a typo, or on
a strategy another branch has not registered yet, wastes an afternoon. Each run is composed from
``conf/config.yaml`` with Hydra, exactly as ``python -m simulations.run <overrides>`` would, and
validated by :func:`fedlora.config.load.build_config`; every problem of every run is reported at
once, grouped by message.

What a comparison seed varies and what it keeps (so differences come from the strategy): the
seed sets ``seed``, ``lora.init_seed`` (the initial adapter), ``train.seed`` (shuffles, dropout),
``federation.seed`` (client sampling) and ``privacy.noise_seed`` (the DP noise, used only under
``privacy=central|local``); ``data.seed`` is never touched, so every run of a
scenario trains on the same partitions and is scored on the same central test set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fedlora.compare.settings import CompareSettings, Scenario
from fedlora.config.load import CONF_DIR, ConfigError, build_config
from fedlora.config.schema import RunConfig

# privacy.noise_seed: the DP noise, so that two strategies compared under DP draw it the same way per seed.
SEED_FIELDS = ("seed", "lora.init_seed", "train.seed", "federation.seed", "privacy.noise_seed")
RESERVED = ("strategy", "strategy.name", *SEED_FIELDS, "output_dir", "resume")
METRICS = {"classification": ("eval_accuracy", "eval_macro_f1", "eval_loss"),
           # the generation scores (fedlora.training.generation) when federation.generate_samples > 0
           "causal_lm": ("eval_loss", "eval_perplexity", "eval_gen_rouge_l", "eval_gen_exact_match")}
# Fields that change how a run executes or what it writes, not its numbers: not in the fingerprint.
_EXECUTION_ONLY = {"output_dir": None, "resume": None, "export": None, "progress": None, "tensorboard": None,
                   "federation": ("ray_num_cpus", "client_num_cpus", "client_num_gpus", "round_timeout_s"),
                   "train": ("log_every",), "model": ("share_weights",)}


@dataclass(frozen=True)
class RunSpec:
    """One run of the sweep: a federated strategy or a baseline, for one scenario and seed."""

    run_id: str
    scenario: str
    method: str
    kind: str  # "federated" | "centralized" | "local"
    seed: int
    overrides: tuple[str, ...]
    cfg: RunConfig
    fingerprint: str

    @property
    def command(self) -> str:
        """The standalone command that reproduces a federated run (baselines have none)."""
        return "python -m simulations.run " + " ".join(shlex.quote(o) for o in self.overrides)


@dataclass(frozen=True)
class SweepPlan:
    """Every run of a comparison, in execution order (seed-major: seed 0 of everything first)."""

    settings: CompareSettings
    base_overrides: tuple[str, ...]
    runs: tuple[RunSpec, ...]
    metrics: tuple[str, ...]
    task: str

    def methods(self, scenario: str) -> list[str]:
        """Methods of a scenario in table order: strategies as listed, then baselines."""
        seen: list[str] = []
        for run in self.runs:
            if run.scenario == scenario and run.method not in seen:
                seen.append(run.method)
        return sorted(seen, key=lambda m: (m in ("centralized", "local"), seen.index(m)))


def seed_overrides(seed: int) -> list[str]:
    """The overrides a comparison seed sets (``data.seed`` stays fixed)."""
    return [f"{name}={seed}" for name in SEED_FIELDS]


def fingerprint(cfg: RunConfig, kind: str) -> str:
    """Hash of everything that can change a run's numbers; a baseline ignores the strategy."""
    tree: dict[str, Any] = dataclasses.asdict(cfg)
    for section, keys in _EXECUTION_ONLY.items():
        if keys is None:
            tree.pop(section, None)
        else:
            for key in keys:
                tree[section].pop(key, None)
    if kind != "federated":
        tree.pop("strategy")
    tree["kind"] = kind
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16]


def compose_run(overrides: Sequence[str]) -> RunConfig:
    """Compose ``conf/config.yaml`` with ``overrides`` and validate it.

    Inside a ``@hydra.main`` app Hydra is already initialised on ``conf/`` and is reused;
    elsewhere (tests, notebooks) a temporary initialisation is made.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    if GlobalHydra.instance().is_initialized():
        tree = compose(config_name="config", overrides=list(overrides))
    else:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            tree = compose(config_name="config", overrides=list(overrides))
    return build_config(OmegaConf.to_container(tree, resolve=True))  # type: ignore[arg-type]


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _strategy_override(name: str) -> str:
    has_yaml = (CONF_DIR / "strategy" / f"{name}.yaml").exists()
    return f"strategy={name}" if has_yaml else f"strategy.name={name}"


def _shared_sections(cfg: RunConfig) -> dict[str, Any]:
    tree = dataclasses.asdict(cfg)
    for name in SEED_FIELDS:
        section, _, key = name.rpartition(".")
        (tree[section] if section else tree).pop(key)
    tree.pop("strategy")
    tree.pop("output_dir")
    return tree


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{path}{k}.")]
    return [] if a == b else [path.rstrip(".")]


def plan_sweep(settings: CompareSettings, base_overrides: Sequence[str]) -> SweepPlan:
    """Compose and validate every run of the comparison.

    Raises
    ------
    ConfigError
        Listing every problem of every run (grouped by message), including strategies that are
        not registered (naming the registered ones) and command-line overrides that the
        comparison itself decides (strategy, seeds, output directory).
    """
    from fedlora.aggregation import AGGREGATORS

    problems: dict[str, list[str]] = {}

    def problem(message: str, where: str = "") -> None:
        problems.setdefault(message, []).append(where)

    for override in base_overrides:
        if _key(override) in RESERVED:
            problem(f"{override!r}: the comparison sets {_key(override)} itself; use compare.strategies / "
                    "compare.seeds / compare.out_dir instead")
    registered = sorted(AGGREGATORS)
    runs: list[RunSpec] = []
    for seed in settings.seeds:
        for scenario in settings.scenarios:
            strategies = settings.strategies_for(scenario)
            for name in strategies:
                if name not in AGGREGATORS:
                    problem(f"strategy {name!r} is not registered; registered strategies: {registered}",
                            scenario.name)
            usable = [s for s in strategies if s in AGGREGATORS]
            methods = [(s, "federated") for s in usable]
            if usable:
                methods += [(b, b) for b in settings.baselines]
            for method, kind in methods:
                strategy = method if kind == "federated" else usable[0]
                overrides = (*settings.run_overrides, *base_overrides, *scenario.overrides,
                             *seed_overrides(seed), _strategy_override(strategy))
                run_id = f"{scenario.name}/{method}/seed{seed}"
                spec = _compose_spec(run_id, scenario, method, kind, seed, overrides, problem)
                if spec is not None:
                    runs.append(spec)
    _check_consistency(runs, problem)
    tasks = sorted({r.cfg.model.task for r in runs})
    if len(tasks) > 1:
        problem(f"model.task: the runs mix tasks {tasks}; a comparison needs one task to compare metrics")
    if problems:
        raise ConfigError([_grouped(msg, where) for msg, where in problems.items()])
    task = tasks[0]
    return SweepPlan(settings, tuple(base_overrides), tuple(runs), settings.metrics or METRICS[task], task)


def _compose_spec(run_id: str, scenario: Scenario, method: str, kind: str, seed: int,
                  overrides: tuple[str, ...], problem: Any) -> RunSpec | None:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = compose_run(overrides)
    except ConfigError as err:
        for p in err.problems:
            problem(p, run_id)
        return None
    except (HydraException, OmegaConfBaseException) as err:
        problem(f"composing {' '.join(overrides)!r} failed: {str(err).splitlines()[0]}", run_id)
        return None
    if not cfg.federation.central_eval:
        problem("federation.central_eval: must be true in a comparison (the table scores the central "
                "test set)", run_id)
    return RunSpec(run_id, scenario.name, method, kind, seed, overrides, cfg, fingerprint(cfg, kind))


def _check_consistency(runs: list[RunSpec], problem: Any) -> None:
    """Within a scenario, runs may differ only in strategy and seed fields (same data, steps, model)."""
    first: dict[str, RunSpec] = {}
    for run in runs:
        ref = first.setdefault(run.scenario, run)
        diffs = _diff(_shared_sections(ref.cfg), _shared_sections(run.cfg))
        if diffs:
            problem(f"scenario {run.scenario!r}: runs differ in {diffs} (only strategy and seeds may differ)",
                    run.run_id)


def _grouped(message: str, where: list[str]) -> str:
    where = [w for w in dict.fromkeys(where) if w]
    if not where:
        return message
    shown = ", ".join(where[:3]) + (f" (+{len(where) - 3} more)" if len(where) > 3 else "")
    return f"{message} [{shown}]"
