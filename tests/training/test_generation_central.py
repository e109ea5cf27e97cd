"""The central evaluator answers a fixed sample of test prompts each round and writes samples files."""

from __future__ import annotations

import pytest
import torch

from fedlora.config import compose
from fedlora.data import load_central_test
from fedlora.lora.state import expected_shapes, set_lora_state
from fedlora.results import read_jsonl
from fedlora.training.central import CentralEvaluator
from fedlora.training.generation import exact_match, rouge_l, sample_indices, token_f1

SMALL = ["preset=smoke_llm", "federation.generate_samples=3", "federation.max_new_tokens=4", "seed=5"]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_same_rows_every_round_scored_and_written(tmp_path):
    cfg = compose(SMALL)
    evaluator = CentralEvaluator(cfg, samples_dir=tmp_path / "samples")
    test = load_central_test(cfg.data, "causal_lm", cfg.federation.num_clients)
    expected = [(i, test[i]["prompt"], test[i]["response"]) for i in sample_indices(len(test), 3, 5)]
    model = evaluator.model_for(cfg.lora.r, cfg.lora.alpha)
    m0 = evaluator.evaluate_model(model, 0)
    gen = torch.Generator().manual_seed(1)
    set_lora_state(model, {k: 0.5 * torch.randn(s, generator=gen) for k, s in expected_shapes(model).items()})
    m1 = evaluator.evaluate_model(model, 1)
    for rnd, metrics in ((0, m0), (1, m1)):
        samples = read_jsonl(tmp_path / "samples" / f"round-{rnd:03d}.jsonl")
        assert [(s["index"], s["prompt"], s["reference"]) for s in samples] == expected
        assert all(s["round"] == rnd for s in samples)
        assert {"loss", "perplexity"} <= set(metrics)
        for key, fn in (("exact_match", exact_match), ("rouge_l", rouge_l), ("token_f1", token_f1)):
            scores = [fn(s["answer"], s["reference"]) for s in samples]
            assert [s[key] for s in samples] == scores
            assert metrics[f"gen_{key}"] == pytest.approx(_mean(scores))
    assert [{"round": 1, **s} for s in evaluator.last_samples] == samples  # the latest evaluation's
    evaluator.evaluate_model(model)  # no round: scored, nothing written
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["round-000.jsonl", "round-001.jsonl"]


def test_generation_off_with_zero_samples_or_classification(tmp_path):
    off = CentralEvaluator(compose([*SMALL, "federation.generate_samples=0"]), samples_dir=tmp_path / "s")
    assert off.generation_rows == []
    metrics = off.evaluate_model(off.model_for(4, 8.0), 0)
    assert not any(k.startswith("gen_") for k in metrics) and not (tmp_path / "s").exists()
    assert CentralEvaluator(compose(["preset=smoke"])).generation_rows == []  # classification


def test_round_table_and_plot_show_generation_scores(tmp_path):
    from PIL import Image

    from fedlora.results import RunRecorder
    from fedlora.results.plots import plot_run

    rows = [{"round": r, "eval_loss": 5.0 - r, "eval_gen_exact_match": 0.25 * r, "eval_gen_rouge_l": 0.5 * r}
            for r in range(3)]
    header, *lines = RunRecorder(tmp_path, "causal_lm").table_lines(rows)
    assert "gen-em" in header and "rouge-l" in header
    assert lines[2].split()[header.split().index("gen-em")] == "0.500"
    assert lines[2].split()[header.split().index("rouge-l")] == "1.000"
    assert "rouge-l" not in RunRecorder(tmp_path, "classification").table_lines(rows)[0]
    with_gen = Image.open(plot_run(rows, tmp_path / "gen.png", "causal_lm")).size[0]
    plain = [{"round": r["round"], "eval_loss": r["eval_loss"]} for r in rows]
    without = Image.open(plot_run(plain, tmp_path / "plain.png", "causal_lm")).size[0]
    assert with_gen > without * 1.3  # a third panel
