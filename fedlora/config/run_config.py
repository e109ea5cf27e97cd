"""Flower ``run_config`` -> validated :class:`RunConfig` (the deployment bridge).

Flower's run_config holds flat scalars only, so the whole Hydra tree travels as one string of
overrides: ``flwr run . <federation> -c 'hydra-overrides="strategy=fedit federation.num_rounds=5"'``.
The ServerApp composes ``conf/`` with them exactly as the simulation entry point does.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from fedlora.config.load import compose
from fedlora.config.schema import RunConfig

OVERRIDES_KEY = "hydra-overrides"


def config_from_run_config(run_config: Mapping[str, Any]) -> RunConfig:
    """Compose the Hydra config from the ``hydra-overrides`` string in ``run_config``."""
    raw = run_config.get(OVERRIDES_KEY, "")
    if not isinstance(raw, str):
        raise TypeError(f"run_config[{OVERRIDES_KEY!r}]: expected a string of Hydra overrides, got {raw!r}")
    return compose(shlex.split(raw))
