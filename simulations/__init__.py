"""Hydra entry points: one simulation (``python -m simulations.run``), a strategy comparison
(``python -m simulations.compare``) and the benchmarks.

The environment defaults below are set here, in the package, because ``python -m simulations.X``
imports this package before the entry point's own imports: transformers and datasets read them
when first imported, which an entry point's ``fedlora`` imports would otherwise do first.
"""

import os

# Offline and quiet by default; a user with network can export HF_HUB_OFFLINE=0.
for _key, _value in {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",  # e.g. the expected "classifier MISSING" load report
    "TQDM_DISABLE": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}.items():
    os.environ.setdefault(_key, _value)
