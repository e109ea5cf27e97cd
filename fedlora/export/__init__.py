"""The run's result as a standard PEFT adapter directory (plus model card and checksums)."""

from fedlora.export.adapter import load_exported, save_adapter

__all__ = ["load_exported", "save_adapter"]
