"""Shared fixtures: tiny PEFT models built in code, random LoRA states, an offline environment."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def private_model_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Tiny models go to a per-session temp cache (offline); the test starts and ends with empty
    per-process model caches. Packages whose every test needs it use it autouse in their conftest."""
    from fedlora.models.build import clear_caches

    monkeypatch.setenv("FEDLORA_CACHE", str(tmp_path_factory.getbasetemp() / "fedlora-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clear_caches()
    yield
    clear_caches()


class TinyNet(nn.Module):
    """A Linear layer and a GPT-2 Conv1D (fan_in_fan_out) so both LoRA orientations are covered."""

    def __init__(self) -> None:
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        torch.manual_seed(0)
        self.lin = nn.Linear(12, 10)
        self.conv = Conv1D(9, 12)  # in 12 -> out 9, weight stored (in, out)
        self.head = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lin(x)) + self.conv(x)[..., :3]


def tiny_peft(r: int = 4, alpha: float = 8.0, head: bool = True):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=["lin", "conv"], fan_in_fan_out=False,
                     modules_to_save=["head"] if head else None, lora_dropout=0.0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(TinyNet(), cfg)
    return model


@pytest.fixture
def tiny_peft_model():
    return tiny_peft()


def random_state(shapes: dict[str, tuple[int, ...]], seed: int, dtype: torch.dtype = torch.float64) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen, dtype=dtype) for k, s in shapes.items()}
