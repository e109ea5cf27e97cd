"""The ``compare`` section of ``conf/compare.yaml``: which scenarios, strategies, seeds, baselines.

Kept apart from :class:`fedlora.config.schema.RunConfig` on purpose: a comparison is a set of
ordinary runs, each composed from ``conf/config.yaml`` exactly as ``python -m simulations.run``
would compose it, so a run of a comparison can always be reproduced on its own. Like the run
schema, every problem of the section is reported at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedlora.config.load import ConfigError

BASELINES = ("centralized", "local")


@dataclass(frozen=True)
class Scenario:
    """A named set of Hydra overrides (e.g. ``lora.ranks=[4,8,16]``) and the strategies it suits.

    ``strategies`` is ``None`` when the scenario does not restrict them (any strategy works).
    """

    name: str
    overrides: tuple[str, ...]
    strategies: tuple[str, ...] | None = None
    description: str = ""


@dataclass(frozen=True)
class CompareSettings:
    """A validated ``compare`` section."""

    name: str
    out_dir: str
    seeds: tuple[int, ...]
    scenarios: tuple[Scenario, ...]
    default_strategies: tuple[str, ...]
    strategies: tuple[str, ...] = ()
    baselines: tuple[str, ...] = BASELINES
    metrics: tuple[str, ...] = ()
    reference: str = "fedit"
    confidence: float = 0.95
    run_overrides: tuple[str, ...] = ()
    max_runs: int = 0
    fail_fast: bool = False
    verbose: bool = False
    catalog: Mapping[str, Scenario] = field(default_factory=dict)

    def strategies_for(self, scenario: Scenario) -> tuple[str, ...]:
        """``compare.strategies`` if given, else the scenario's own list, else the defaults."""
        if self.strategies:
            return self.strategies
        return scenario.strategies if scenario.strategies is not None else self.default_strategies


def _str_list(value: Any, where: str, problems: list[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        problems.append(f"{where}: expected a list of non-empty strings, got {value!r}")
        return ()
    return tuple(value)


def _catalog(tree: Any, problems: list[str]) -> dict[str, Scenario]:
    if not isinstance(tree, Mapping) or not tree:
        problems.append("compare.catalog: expected a mapping of scenario name -> {overrides, strategies}")
        return {}
    out = {}
    for name, entry in tree.items():
        where = f"compare.catalog.{name}"
        if "+" in name or "/" in name:
            problems.append(f"{where}: scenario names may not contain '+' or '/' "
                            "(they join scenarios and paths)")
        if not isinstance(entry, Mapping):
            problems.append(f"{where}: expected a mapping with 'overrides' (and optionally 'strategies')")
            continue
        unknown = set(entry) - {"overrides", "strategies", "description"}
        if unknown:
            problems.append(f"{where}: unknown keys {sorted(unknown)} "
                            "(expected overrides, strategies, description)")
        strategies = entry.get("strategies")
        out[name] = Scenario(
            name=name,
            overrides=_str_list(entry.get("overrides", []), f"{where}.overrides", problems),
            strategies=None if strategies is None else _str_list(strategies, f"{where}.strategies", problems),
            description=str(entry.get("description", "")),
        )
    return out


def combine(names: str, catalog: Mapping[str, Scenario]) -> Scenario:
    """``"heterogeneous+partial"`` -> one scenario: overrides concatenated, strategies intersected."""
    parts = [catalog[n] for n in names.split("+")]
    overrides = tuple(o for p in parts for o in p.overrides)
    allowed = [p.strategies for p in parts if p.strategies is not None]
    strategies = None
    if allowed:
        strategies = tuple(s for s in allowed[0] if all(s in a for a in allowed[1:]))
    return Scenario(names, overrides, strategies, "; ".join(p.description for p in parts if p.description))


def parse_settings(tree: Mapping[str, Any]) -> CompareSettings:
    """Validate the ``compare`` mapping (after OmegaConf resolution).

    Raises
    ------
    ConfigError
        Listing every problem, e.g. an unknown scenario name together with a bad seed list.
    """
    problems: list[str] = []
    known = set(CompareSettings.__dataclass_fields__)
    unknown = set(tree) - known
    if unknown:
        problems.append(f"compare: unknown keys {sorted(unknown)} (expected one of {sorted(known)})")
    catalog = _catalog(tree.get("catalog"), problems)
    seeds = tree.get("seeds", [0, 1, 2])
    if not isinstance(seeds, list | tuple) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        problems.append(f"compare.seeds: expected a non-empty list of integers >= 0, got {seeds!r}")
        seeds = [0]
    elif len(set(seeds)) != len(seeds):
        problems.append(f"compare.seeds: duplicate seeds in {list(seeds)}")
    names = _str_list(tree.get("scenarios"), "compare.scenarios", problems)
    if not names:
        problems.append("compare.scenarios: name at least one scenario from compare.catalog")
    scenarios = []
    for name in names:
        missing = [n for n in name.split("+") if n not in catalog]
        if missing:
            problems.append(f"compare.scenarios: unknown scenario(s) {missing} in {name!r}; "
                            f"defined in compare.catalog: {sorted(catalog)}")
        else:
            scenarios.append(combine(name, catalog))
    if len(set(names)) != len(names):
        problems.append(f"compare.scenarios: duplicate names in {list(names)}")
    baselines = _str_list(tree.get("baselines", list(BASELINES)), "compare.baselines", problems)
    bad = [b for b in baselines if b not in BASELINES]
    if bad:
        problems.append(f"compare.baselines: unknown {bad}; expected a subset of {list(BASELINES)}")
    confidence = tree.get("confidence", 0.95)
    if not isinstance(confidence, float | int) or isinstance(confidence, bool) or not 0 < confidence < 1:
        problems.append(f"compare.confidence: expected a number in (0, 1), got {confidence!r}")
        confidence = 0.95
    max_runs = tree.get("max_runs", 0)
    if not isinstance(max_runs, int) or isinstance(max_runs, bool) or max_runs < 0:
        problems.append(f"compare.max_runs: expected an integer >= 0 (0: no limit), got {max_runs!r}")
        max_runs = 0
    flags = {}
    for key in ("fail_fast", "verbose"):
        flags[key] = tree.get(key, False)
        if not isinstance(flags[key], bool):
            problems.append(f"compare.{key}: expected a boolean, got {flags[key]!r}")
    for key in ("name", "out_dir"):
        if not isinstance(tree.get(key), str) or not tree.get(key):
            problems.append(f"compare.{key}: expected a non-empty string, got {tree.get(key)!r}")
    reference = tree.get("reference", "fedit")
    if not isinstance(reference, str) or not reference:
        problems.append(f"compare.reference: expected a strategy or baseline name, got {reference!r}")
        reference = "fedit"
    settings = CompareSettings(
        name=str(tree.get("name")), out_dir=str(tree.get("out_dir")), seeds=tuple(seeds),
        scenarios=tuple(scenarios),
        default_strategies=_str_list(tree.get("default_strategies"), "compare.default_strategies", problems),
        strategies=_str_list(tree.get("strategies"), "compare.strategies", problems),
        baselines=baselines, metrics=_str_list(tree.get("metrics"), "compare.metrics", problems),
        reference=reference, confidence=float(confidence),
        run_overrides=_str_list(tree.get("run_overrides"), "compare.run_overrides", problems),
        max_runs=max_runs, catalog=catalog, **flags,
    )
    for sc in settings.scenarios:
        if not settings.strategies_for(sc):
            problems.append(f"compare.scenarios: scenario {sc.name!r} leaves no strategy to run "
                            "(its parts allow none in common; set compare.strategies)")
    if problems:
        raise ConfigError(problems)
    return settings


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """Command-line overrides -> (``compare.*`` ones, the ones meant for every run)."""
    mine, runs = [], []
    for o in overrides:
        (mine if o.lstrip("+~").split("=", 1)[0].split(".", 1)[0] == "compare" else runs).append(o)
    return mine, runs


def compose_settings(overrides: Sequence[str] = ()) -> tuple[CompareSettings, list[str]]:
    """Compose ``conf/compare.yaml`` like ``python -m simulations.compare <overrides>`` (for tests and
    notebooks); return the settings and the overrides meant for the runs."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from fedlora.config.load import CONF_DIR

    mine, runs = split_overrides(overrides)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="compare", overrides=mine)
    GlobalHydra.instance().clear()
    return parse_settings(OmegaConf.to_container(cfg.compare, resolve=True)), runs  # type: ignore[arg-type]
