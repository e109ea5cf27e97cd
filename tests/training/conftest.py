"""Fixtures for ``fedlora.training`` tests: offline hub, a private model cache, fresh model caches."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _private_cache(private_model_cache: None) -> None:
    """Every test here gets :func:`tests.conftest.private_model_cache`."""


def pad_collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Right-pad ``input_ids`` (0), ``attention_mask`` (0) and list ``labels`` (-100); int labels stack."""
    width = max(len(e["input_ids"]) for e in examples)
    batch = {
        "input_ids": torch.tensor([e["input_ids"] + [0] * (width - len(e["input_ids"])) for e in examples]),
        "attention_mask": torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"]))
                                        for e in examples]),
    }
    if isinstance(examples[0]["labels"], list):
        batch["labels"] = torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in examples])
    else:
        batch["labels"] = torch.tensor([e["labels"] for e in examples])
    return batch


@pytest.fixture
def collate() -> Callable[[list[dict]], dict[str, torch.Tensor]]:
    return pad_collate
