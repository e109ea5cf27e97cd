"""Exported rsLoRA and DoRA adapters are what the server evaluated.

In process, on the tiny random Llama: a global adapter built by the real aggregators is written by
:func:`save_adapter`, reloaded the way a user would (fresh base + ``PeftModel.from_pretrained``),
and compared with the server's own model (the cached PeftModel with the adapter loaded), with
the update computed by hand from the factors, and with the config PEFT wrote.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from fedlora.aggregation import ClientSpec, ClientUpdate, GlobalAdapter, get_aggregator
from fedlora.config import compose
from fedlora.export.adapter import load_exported, save_adapter
from fedlora.export.compress import compress_adapter
from fedlora.lora.init import initial_state
from fedlora.lora.keys import magnitude_keys
from fedlora.lora.state import base_magnitudes, expected_shapes, set_lora_state
from fedlora.models.build import build_lora_model
from tests.conftest import random_state

IDS = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29], [2, 4, 6, 8, 10, 12, 14, 16]])


pytestmark = pytest.mark.usefixtures("private_model_cache")


def _server_logits(cfg, adapter: GlobalAdapter) -> torch.Tensor:
    """What the server's central evaluation runs: the cached model with the adapter loaded strictly."""
    lora = dataclasses.replace(cfg.lora, alpha=adapter.alpha)
    model = build_lora_model(cfg.model, lora, rank=adapter.rank, rank_pattern=adapter.rank_pattern,
                             alpha_pattern=adapter.alpha_pattern)
    set_lora_state(model, adapter.state)
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _reloaded(out: Path):
    model, _, manifest = load_exported(out)
    with torch.no_grad():
        return model, model(input_ids=IDS).logits, manifest


def _round(agg, ranks: list[int], scale: float, use_rslora: bool = False) -> None:
    """One round of replies: each client's payload plus a random step (large enough to matter)."""
    agg.begin_round(1)
    updates = []
    for i, r in enumerate(ranks):
        spec = ClientSpec(f"c{i}", r, agg.alpha, use_rslora=use_rslora)
        start = agg.reply_template(spec, agg.payload(spec))
        step = random_state({k: tuple(v.shape) for k, v in start.items()}, 11 + i, torch.float32)
        updates.append(ClientUpdate(spec, {k: v + scale * step[k] for k, v in start.items()}, 10 * (i + 1)))
    agg.aggregate(updates)


def test_rslora_folded_adapter_exports_with_alpha_sqrt_r_and_reloads_exactly(tmp_path):
    cfg = compose(["preset=smoke_llm", "strategy=flora", "lora.use_rslora=true", "lora.ranks=[2,4]"])
    shapes = expected_shapes(build_lora_model(cfg.model, cfg.lora, rank=4))
    agg = get_aggregator("flora")(alpha=cfg.lora.alpha, use_rslora=True)
    agg.init_state(GlobalAdapter(initial_state(shapes, 0), 4, cfg.lora.alpha, use_rslora=True))
    _round(agg, [2, 4], scale=0.5, use_rslora=True)
    # per-module ranks differ after an energy cut: alpha_pattern must say sqrt(r) for each
    adapter, _ = compress_adapter(agg.global_adapter(), energy=0.6)
    assert adapter.use_rslora and adapter.rank_pattern  # modules below the top rank
    out = save_adapter(cfg, adapter, None, tmp_path / "adapter", {})
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["use_rslora"] is True and config["use_dora"] is False
    assert config["r"] == adapter.rank and config["lora_alpha"] == math.sqrt(adapter.rank)
    pattern = {m.removeprefix("base_model.model."): r for m, r in adapter.rank_pattern.items()}
    assert config["rank_pattern"] == pattern
    assert config["alpha_pattern"] == {m: math.sqrt(r) for m, r in config["rank_pattern"].items()}
    model, logits, manifest = _reloaded(out)
    assert manifest["use_rslora"] is True
    # PEFT applies exactly B @ A of the folded state (scaling 1) in every module
    from peft.tuners.lora import LoraLayer

    folded = adapter.factors()
    layers = {n: mod for n, mod in model.named_modules() if isinstance(mod, LoraLayer)}
    assert set(layers) == set(folded)
    for name, layer in layers.items():
        assert layer.scaling["default"] == 1.0
        torch.testing.assert_close(layer.get_delta_weight("default"), folded[name].dense(), rtol=0, atol=1e-7)
    torch.testing.assert_close(logits, _server_logits(cfg, adapter), rtol=0, atol=1e-5)


def test_rslora_weightless_export_keeps_the_variant(tmp_path):
    cfg = compose(["preset=smoke_llm", "lora.use_rslora=true", "federation.central_eval=false"])
    shapes = expected_shapes(build_lora_model(cfg.model, cfg.lora, rank=4))
    adapter = GlobalAdapter(random_state(shapes, 2, torch.float32), 4, cfg.lora.alpha, use_rslora=True)
    out = save_adapter(cfg, adapter, None, tmp_path / "adapter", {})
    assert json.loads((out / "adapter_config.json").read_text())["use_rslora"] is True
    model, logits, _ = _reloaded(out)
    from peft.tuners.lora import LoraLayer

    layer = next(m for m in model.modules() if isinstance(m, LoraLayer))
    assert layer.scaling["default"] == cfg.lora.alpha / math.sqrt(4)
    torch.testing.assert_close(logits, _server_logits(dataclasses.replace(
        cfg, federation=dataclasses.replace(cfg.federation, central_eval=True)), adapter), rtol=0, atol=1e-5)


def test_dora_initial_adapter_is_the_base_model_exactly():
    cfg = compose(["preset=smoke_llm", "lora.use_dora=true"])
    model = build_lora_model(cfg.model, cfg.lora, rank=4)
    state = initial_state(expected_shapes(model), 0, base_magnitudes(model))
    set_lora_state(model, state)
    with torch.no_grad():
        adapted = model(input_ids=IDS).logits
        with model.disable_adapter():
            base = model(input_ids=IDS).logits
    torch.testing.assert_close(adapted, base, rtol=0, atol=1e-6)


def test_dora_adapter_exports_its_magnitudes_and_reloads_exactly(tmp_path):
    cfg = compose(["preset=smoke_llm", "strategy=fedit", "lora.use_dora=true"])
    model = build_lora_model(cfg.model, cfg.lora, rank=4)
    shapes = expected_shapes(model)
    initial = initial_state(shapes, 0, base_magnitudes(model))
    agg = get_aggregator("fedit")(alpha=cfg.lora.alpha, use_dora=True)
    agg.init_state(GlobalAdapter(initial, 4, cfg.lora.alpha, use_dora=True))
    _round(agg, [4, 4], scale=0.05)
    adapter = agg.global_adapter()
    out = save_adapter(cfg, adapter, None, tmp_path / "adapter", {})
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["use_dora"] is True and config["use_rslora"] is False
    from safetensors.torch import load_file

    written = load_file(str(out / "adapter_model.safetensors"))
    assert set(written) == set(adapter.state) and magnitude_keys(written)
    assert all(torch.equal(written[k], adapter.state[k]) for k in magnitude_keys(written))
    _, logits, manifest = _reloaded(out)
    assert manifest["use_dora"] is True
    server = _server_logits(cfg, adapter)
    torch.testing.assert_close(logits, server, rtol=0, atol=1e-5)
    # the magnitudes matter: the same factors with the initial magnitudes compute something else
    initial_m = {k: initial[k] for k in magnitude_keys(initial)}
    other = _server_logits(cfg, dataclasses.replace(adapter, state={**adapter.state, **initial_m}))
    assert float((other - server).abs().max()) > 1e-3


def test_export_refuses_an_adapter_of_another_variant(tmp_path):
    cfg = compose(["preset=smoke_llm"])
    adapter = GlobalAdapter({}, 4, cfg.lora.alpha, use_rslora=True)
    with pytest.raises(ValueError, match=r"lora\.use_rslora: the adapter to export has use_rslora=True"):
        save_adapter(cfg, adapter, None, tmp_path / "adapter", {})
