"""fedlora: federated LoRA fine-tuning on Flower, where only LoRA adapters travel.

The library is importable without Flower where possible; see ``DESIGN.md`` (shared) for the
layering: ``aggregation`` and ``lora`` math use torch only, Flower lives at the edges
(``server/``, ``client/``, ``fedlora.strategies``, ``fedlora.lora.codec``, ``fedlora.config.run_config``).
"""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes, which PEFT imports in every process, warns at import on CPUs with AVX512-BF16 that it
# could not fetch an optional 4-bit CPU kernel from the Hugging Face hub ("pip install kernels").
# fedlora never downloads at run time, so that line would only be noise in every run's console.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
