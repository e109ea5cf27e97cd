"""Every conf/ option composes and validates; bad configs report every problem at once."""

from pathlib import Path

import pytest

from fedlora.config import ConfigError, compose, from_yaml, to_yaml
from fedlora.config.load import CONF_DIR
from fedlora.config.run_config import config_from_run_config

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_groups_mirror_packages():
    assert set(GROUPS) >= {"model", "lora", "data", "train", "strategy", "federation", "export", "preset"}


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in _options(g)])
def test_every_option_composes_and_validates(group, option):
    overrides = [f"{group}={option}"]
    # Options whose data needs a path: give one, as a user must.
    if group == "data" and option in ("files", "hf"):
        overrides.append("data.path=some/file.jsonl")
    # Data and model must agree on the task: pair causal-LM data with a causal-LM model.
    if group == "data" and option in ("foldoc", "foldoc_acronyms", "chitchat"):
        overrides += ["model=tiny_llama", "lora=llama"]
    if group == "model" and option in ("smollm2", "tiny_llama"):
        overrides += ["data=foldoc", "lora=llama"]
    cfg = compose(overrides)
    assert from_yaml(to_yaml(cfg)) == cfg


def test_invalid_config_reports_all_problems_at_once():
    with pytest.raises(ConfigError) as info:
        compose(["train.lr=-1", "lora.r=abc", "federation.fraction_train=2", "+model.bogus=1",
                 "strategy.name=nope", "data.partitioner=random"])
    problems = info.value.problems
    assert len(problems) == 6
    for field in ("train.lr", "lora.r", "federation.fraction_train", "model.bogus", "strategy.name",
                  "data.partitioner"):
        assert any(p.startswith(field) for p in problems), field


def test_fedit_with_mixed_ranks_is_refused_naming_alternatives():
    with pytest.raises(ConfigError, match=r"lora\.ranks: .* does not support"):
        compose(["lora.ranks=[4,8,16]"])


def test_task_mismatch_is_reported():
    with pytest.raises(ConfigError, match=r"data\.source: 'foldoc' provides causal_lm"):
        compose(["data=foldoc"])


def test_resume_needs_a_checkpoint(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"resume: .* no checkpoint/"):
        compose([f"resume={tmp_path}"])


def test_run_config_bridge_uses_the_same_composition():
    cfg = config_from_run_config(
        {"hydra-overrides": "preset=smoke federation.num_rounds=4 'lora.target_modules=[query,value]'"}
    )
    assert cfg.federation.num_rounds == 4
    assert cfg.model.source == "tiny:bert"
    assert cfg.lora.target_modules == ["query", "value"]


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in _options(g)])
def test_every_schema_field_is_in_the_composed_tree(group, option):
    """A field the YAML leaves out cannot be overridden without Hydra's ``+`` (``model.x=1`` is refused
    as "Could not override"): every dataclass field must be present whatever the group option."""
    import dataclasses
    import typing

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from fedlora.config.schema import RunConfig

    with initialize_config_dir(str(CONF_DIR), version_base=None):
        tree = OmegaConf.to_container(hydra_compose("config", overrides=[f"{group}={option}"]), resolve=True)
    missing = []

    def walk(cls: type, node: dict, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in node:
                missing.append(prefix + f.name)
            elif dataclasses.is_dataclass(hints[f.name]) and isinstance(node[f.name], dict):
                walk(hints[f.name], node[f.name], f"{prefix}{f.name}.")

    walk(RunConfig, tree, "")
    assert missing == []
