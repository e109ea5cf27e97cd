"""fedlora: federated LoRA fine-tuning on Flower, where only LoRA adapters travel.

The library is importable without Flower where possible; see ``DESIGN.md`` (shared) for the
layering: ``aggregation`` and ``lora`` math use torch only, Flower lives at the edges
(``server/``, ``client/``, ``fedlora.strategies``, ``fedlora.lora.codec``, ``fedlora.config.run_config``).
"""

__version__ = "0.1.0"
