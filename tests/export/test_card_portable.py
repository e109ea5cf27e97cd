"""The card's load snippet works on "another machine": a fresh process that has the base only in its HF cache.

No hub is reachable here, so the other machine is simulated: the tiny Llama is placed in a private
Hugging Face cache under a made-up hub id and commit, fedlora trains-and-exports against that hub
id (resolved from the cache), and the snippet from the exported README runs in a subprocess that
knows nothing but that cache and the adapter directory (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from fedlora.aggregation import GlobalAdapter
from fedlora.config.load import compose
from fedlora.export.adapter import load_exported, save_adapter, state_checksum
from fedlora.models.build import base_model_loads
from fedlora.models.shapes import meta_adapter_shapes
from fedlora.models.sources import resolve_model
from tests.conftest import random_state

HUB_ID = "fedlora-test/tiny-llama"
COMMIT = "1234567890abcdef1234567890abcdef12345678"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def hub_cache(private_model_cache: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HF cache holding the tiny Llama as ``HUB_ID`` at ``COMMIT`` (``refs/main`` points to it)."""
    tiny = Path(resolve_model(compose(["preset=smoke_llm"]).model).path)
    cache = tmp_path / "hub"
    repo = cache / f"models--{HUB_ID.replace('/', '--')}"
    shutil.copytree(tiny, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_card_snippet_loads_the_adapter_elsewhere_from_the_hub_id(hub_cache: Path, tmp_path: Path) -> None:
    cfg = compose(["preset=smoke_llm", f"model.source={HUB_ID}", "federation.central_eval=false",
                   "lora.targets=all-linear"])
    shapes = meta_adapter_shapes(cfg.model, cfg.lora, rank=4)
    adapter = GlobalAdapter(random_state(shapes, 9, torch.float32), 4, cfg.lora.alpha)
    out = save_adapter(cfg, adapter, None, tmp_path / "adapter",
                       {"state_checksum": state_checksum(adapter.state)})
    assert base_model_loads() == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["revision"]) == (HUB_ID, COMMIT)
    card = (out / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert f"from_pretrained('{HUB_ID}', revision='{COMMIT}'" in code and str(hub_cache) not in code

    ids = [[5, 17, 33, 40, 8]]
    script = code.replace("path/to/this/adapter", str(out)) + (
        f"\nmodel.eval()\nwith torch.no_grad():\n    logits = model(input_ids=torch.tensor({ids})).logits"
        f"\ntorch.save(logits, {str(tmp_path / 'logits.pt')!r})\n")
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("FEDLORA_CACHE", None)  # the other machine has no fedlora cache: only the HF cache
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    elsewhere = torch.load(tmp_path / "logits.pt")

    model, _, _ = load_exported(out)  # fedlora's own reload on this machine
    with torch.no_grad():
        here = model(input_ids=torch.tensor(ids)).logits
    assert torch.allclose(elsewhere, here, atol=1e-5)
    assert str(ROOT) not in script
