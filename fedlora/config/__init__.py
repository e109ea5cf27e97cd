"""Typed, validated configuration: schema dataclasses and the Hydra bridge."""

from fedlora.config.load import ConfigError, build_config, compose, from_yaml, to_yaml
from fedlora.config.schema import RunConfig

__all__ = ["ConfigError", "RunConfig", "build_config", "compose", "from_yaml", "to_yaml"]
