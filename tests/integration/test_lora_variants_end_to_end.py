"""rsLoRA and DoRA end to end on Flower's Simulation Engine: 2 rounds of the tiny Llama, mixed ranks.

* rsLoRA under flora, ranks [2, 4]: the exported adapter says ``use_rslora: true`` with
  ``alpha = sqrt(r)`` (folded scaling), and ``PeftModel.from_pretrained`` reproduces the outputs
  of the server's global model (rebuilt from the run's checkpoint), which plain ``alpha / r``
  scaling would not.
* DoRA under ffa, ranks [2, 4]: the round-0 model is the base model (magnitudes = column norms),
  the magnitudes of the real replies are averaged with the p_k the run recorded (audit files),
  and the export (``use_dora: true``) reproduces the server's last central evaluation.

Each test is one Ray simulation (about a minute and a half on 2 CPU cores, mostly Ray start-up).
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fedlora.aggregation import get_aggregator
from fedlora.config import compose
from fedlora.export import load_exported
from fedlora.lora.keys import magnitude_keys
from fedlora.lora.state import set_lora_state
from fedlora.models.build import build_lora_model
from fedlora.results import read_jsonl
from fedlora.results.checkpoint import load_checkpoint
from fedlora.training.central import CentralEvaluator

pytestmark = pytest.mark.integration
IDS = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29], [2, 4, 6, 8, 10, 12, 14, 16]])
FAST = ["preset=smoke_llm", "federation.generate_samples=0"]


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_rslora_flora_mixed_ranks_exports_the_servers_model(tmp_path):
    from simulations.engine import simulate

    cfg = compose([*FAST, "strategy=flora", "lora.ranks=[2,4]", "lora.use_rslora=true",
                   f"output_dir={tmp_path}"])
    summary = simulate(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["rejected_replies"] == 0
    assert summary["export_check"]["matches"], summary["export_check"]
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert all(r["agg_rel_error"] <= 1e-5 for r in rows[1:]) and rows[-1]["global_rank"] == 12.0
    # the server's global model, rebuilt from its checkpoint
    agg = get_aggregator("flora")(alpha=cfg.lora.alpha, use_rslora=True)
    agg.load_state_dict(load_checkpoint(tmp_path).state)
    ga = agg.global_adapter()
    assert ga.use_rslora and ga.alpha == math.sqrt(ga.rank)
    lora = dataclasses.replace(cfg.lora, alpha=ga.alpha)
    server = build_lora_model(cfg.model, lora, rank=ga.rank, rank_pattern=ga.rank_pattern,
                              alpha_pattern=ga.alpha_pattern)
    set_lora_state(server, ga.state)
    want = _logits(server)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["use_rslora"] is True and config["r"] == 12 and config["lora_alpha"] == math.sqrt(12)
    reloaded, _, _ = load_exported(tmp_path / "adapter")
    torch.testing.assert_close(_logits(reloaded), want, rtol=0, atol=1e-5)
    # alpha / r scaling (use_rslora off, same alpha) shrinks the update by sqrt(12): visibly different
    plain = build_lora_model(cfg.model, dataclasses.replace(lora, use_rslora=False), rank=ga.rank,
                             rank_pattern=ga.rank_pattern, alpha_pattern=ga.alpha_pattern)
    set_lora_state(plain, ga.state)
    assert float((_logits(plain) - want).abs().max()) > 1e-3


def test_dora_ffa_mixed_ranks_averages_magnitudes_and_exports_them(tmp_path):
    from simulations.engine import simulate

    cfg = compose([*FAST, "strategy=ffa", "lora.ranks=[2,4]", "lora.use_dora=true", "export.audit=true",
                   f"output_dir={tmp_path}"])
    summary = simulate(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["rejected_replies"] == 0
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    # round 0: B = 0 and m = ||W0||_col, so the server's DoRA model scored exactly as the bare base model
    plain_cfg = dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, use_dora=False))
    plain = build_lora_model(cfg.model, plain_cfg.lora, rank=4)
    with torch.no_grad(), plain.disable_adapter():
        base = CentralEvaluator(plain_cfg).evaluate_model(plain)
    assert rows[0]["eval_loss"] == pytest.approx(base["loss"], abs=1e-6)
    for rnd in (1, 2):  # the real replies' magnitudes, averaged with the recorded weights p_k
        audit = tmp_path / "audit" / f"round-{rnd:04d}"
        after = load_file(str(audit / "global-after.safetensors"))
        keys = magnitude_keys(after)
        assert len(keys) == 8  # 2 layers x q/k/v/o
        want = {k: torch.zeros_like(after[k], dtype=torch.float64) for k in keys}
        for path in sorted(audit.glob("client-*.safetensors")):
            with safe_open(str(path), "pt") as f:
                p_k = json.loads(f.metadata()["weight"])
            client = load_file(str(path))
            for k in keys:
                want[k] += p_k * client[k].double()
        for k in keys:
            torch.testing.assert_close(after[k].double(), want[k], rtol=1e-6, atol=0)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["use_dora"] is True
    exported = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(exported[k], after[k]) for k in keys)  # the final round's averages
    check = summary["export_check"]
    assert check["matches"], check
    assert check["reloaded"]["loss"] == pytest.approx(rows[-1]["eval_loss"], abs=1e-5)
    assert rows[-1]["eval_loss"] != rows[0]["eval_loss"]  # it trained
