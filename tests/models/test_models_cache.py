"""Where the model cache lives, and NF4 base models quantized once, saved there and reused."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedlora.config.schema import ModelConfig
from fedlora.models.build import base_model_loads, clear_caches, load_base_model
from fedlora.models.device import quantization_kwargs
from fedlora.models.quantized import is_complete, nf4_key
from fedlora.models.sources import cache_dir, resolve_model

REPO_ROOT = Path(__file__).resolve().parents[2]
LLAMA_NF4 = ModelConfig(source="tiny:llama", task="causal_lm", quantization="nf4", device="cpu")
BERT_NF4 = ModelConfig(source="tiny:bert", task="classification", quantization="nf4", device="cpu")
IDS = torch.tensor([[1, 5, 9, 13, 17, 21]])
CPU = torch.device("cpu")


def test_cache_dir_uses_xdg_cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FEDLORA_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "fedlora"
    monkeypatch.chdir(tmp_path)  # the working directory plays no part
    assert cache_dir() == tmp_path / "xdg" / "fedlora"


def test_fedlora_cache_wins_over_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("FEDLORA_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_cache_dir_is_the_same_from_an_app_bundle(tmp_path: Path) -> None:
    """Run from a copy laid out like a Flower app bundle (pyproject.toml next to the package, writable,
    also the working directory): the cache is still the user's, not inside the bundle."""
    bundle = tmp_path / "flwr" / "apps" / "0123abcd"
    shutil.copytree(REPO_ROOT / "fedlora", bundle / "fedlora", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", bundle / "pyproject.toml")
    env = {k: v for k, v in os.environ.items() if k not in ("FEDLORA_CACHE", "XDG_CACHE_HOME")}
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=str(bundle))
    code = "import fedlora.models.sources as s; print(s.__file__); print(s.cache_dir())"
    out = subprocess.run([sys.executable, "-c", code], cwd=bundle, env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert Path(out[0]).is_relative_to(bundle)  # really ran the bundle's copy
    assert Path(out[1]) == tmp_path / "home" / ".cache" / "fedlora"


def _bnb_kwargs(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> dict:
    pytest.importorskip("transformers")
    return quantization_kwargs(cfg, CPU, dtype)


def test_nf4_key_is_stable_and_tracks_what_changes_the_weights(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDLORA_CACHE", str(tmp_path))
    resolved = resolve_model(BERT_NF4)
    f32 = _bnb_kwargs(BERT_NF4)
    key = nf4_key(resolved, BERT_NF4, 3, CPU, torch.float32, f32)
    assert len(key) == 16 and key == nf4_key(resolved, BERT_NF4, 3, CPU, torch.float32, _bnb_kwargs(BERT_NF4))
    others = {
        nf4_key(resolved, BERT_NF4, 4, CPU, torch.float32, f32),  # head size
        nf4_key(resolved, BERT_NF4, 3, CPU, torch.bfloat16, _bnb_kwargs(BERT_NF4, torch.bfloat16)),
        nf4_key(resolved, LLAMA_NF4, None, CPU, torch.float32, f32),  # task
        nf4_key(resolved, BERT_NF4, 3, torch.device("cuda", 0), torch.float32, f32),
    }
    f32["quantization_config"].bnb_4bit_use_double_quant = False
    others.add(nf4_key(resolved, BERT_NF4, 3, CPU, torch.float32, f32))
    assert key not in others and len(others) == 5
    # a source rewritten in place (same path and description) gets a new key
    weights = Path(resolved.path) / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert nf4_key(resolved, BERT_NF4, 3, CPU, torch.float32, _bnb_kwargs(BERT_NF4)) != key


def test_is_complete_needs_quantized_config_and_every_weight_file(tmp_path: Path) -> None:
    d = tmp_path / "copy"
    assert not is_complete(d)
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"x")
    assert not is_complete(d)  # no config.json
    (d / "config.json").write_text('{"model_type": "llama"}')
    assert not is_complete(d)  # a plain, not quantized, config
    (d / "config.json").write_text('{"quantization_config": {"quant_method": "bitsandbytes"}}')
    assert is_complete(d)
    (d / "model.safetensors").unlink()
    assert not is_complete(d)
    (d / "model.safetensors.index.json").write_text(
        '{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}')
    (d / "model-00001-of-00002.safetensors").write_bytes(b"x")
    assert not is_complete(d)  # one shard missing
    (d / "model-00002-of-00002.safetensors").write_bytes(b"x")
    assert is_complete(d)
    (d / "config.json").write_text("{not json")
    assert not is_complete(d)


def _load(cfg: ModelConfig, caplog: pytest.LogCaptureFixture, num_labels: int | None = None,
          ) -> tuple[torch.Tensor, str]:
    """Load in a fresh per-process cache; return logits on IDS and the load log line."""
    clear_caches()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fedlora.models.build"):
        model = load_base_model(cfg, num_labels)
    with torch.no_grad():
        logits = model(input_ids=IDS).logits
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded base model")]
    assert len(lines) == 1 and base_model_loads() == 1
    return logits, lines[0]


def _copies(root: Path) -> list[Path]:
    return sorted(p for p in (root / "quantized").iterdir() if p.is_dir() and not p.name.startswith("."))


@pytest.mark.parametrize("cfg, num_labels", [(LLAMA_NF4, None), (BERT_NF4, 3)], ids=["causal_lm", "cls"])
def test_nf4_is_quantized_once_then_read_from_the_copy(
    cfg: ModelConfig, num_labels: int | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bnb = pytest.importorskip("bitsandbytes")
    monkeypatch.setenv("FEDLORA_CACHE", str(tmp_path))
    first, line = _load(cfg, caplog, num_labels)
    (copy,) = _copies(tmp_path)
    assert "nf4 quantized now, saved to" in line and str(copy) in line and is_complete(copy)
    assert (copy / "fedlora_quantized.json").is_file()
    second, line = _load(cfg, caplog, num_labels)
    assert f"nf4 copy from {copy}" in line
    assert torch.equal(first, second)
    assert _copies(tmp_path) == [copy]
    assert not [p for p in (tmp_path / "quantized").iterdir() if ".tmp-" in p.name]
    model = load_base_model(cfg, num_labels)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    if cfg.task == "classification":  # the head stays dense (PEFT's modules_to_save copies it)
        assert type(model.classifier) is torch.nn.Linear


@pytest.mark.parametrize("damage", ["delete_weights", "delete_config", "truncate_weights"])
def test_a_damaged_nf4_copy_is_rebuilt(damage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("bitsandbytes")
    monkeypatch.setenv("FEDLORA_CACHE", str(tmp_path))
    first, _ = _load(LLAMA_NF4, caplog)
    (copy,) = _copies(tmp_path)
    weights = copy / "model.safetensors"
    if damage == "delete_weights":
        weights.unlink()
    elif damage == "delete_config":
        (copy / "config.json").unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:1000])
    rebuilt, line = _load(LLAMA_NF4, caplog)
    assert "nf4 quantized now, saved to" in line and is_complete(copy)
    assert torch.equal(first, rebuilt)
    again, line = _load(LLAMA_NF4, caplog)
    assert f"nf4 copy from {copy}" in line and torch.equal(first, again)
