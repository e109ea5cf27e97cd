"""Generation evaluation end to end: a 2-round smoke_llm simulation, then the export commands.

Acceptance criteria of issue 12: the run writes per-round samples files and ``gen_*`` metrics;
``python -m simulations.generate`` on the exported adapter answers the prompts of the server's last
samples file exactly as the server did (export.select=last, same dtype and device), and
``python -m simulations.evaluate`` reproduces the server's last central metrics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fedlora.config import compose
from fedlora.results import read_jsonl
from fedlora.training.generation import exact_match, rouge_l, token_f1
from tests.integration.runs import ROOT

pytestmark = pytest.mark.integration

K = 4


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory):
    from simulations.engine import simulate

    out = tmp_path_factory.mktemp("gen") / "run"
    cfg = compose(["preset=smoke_llm", f"output_dir={out}", f"federation.generate_samples={K}",
                   "federation.max_new_tokens=8", "export.select=last"])
    summary = simulate(cfg, out)
    assert summary["status"] == "completed", summary
    return cfg, out, summary


def test_every_evaluated_round_writes_samples_and_gen_metrics(llm_run):
    _, out, summary = llm_run
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert sorted(p.name for p in (out / "samples").iterdir()) == [f"round-00{r}.jsonl" for r in range(3)]
    per_round = [read_jsonl(out / "samples" / f"round-00{r}.jsonl") for r in range(3)]
    fixed = [(s["index"], s["prompt"], s["reference"]) for s in per_round[0]]
    assert len(fixed) == K and len({i for i, _, _ in fixed}) == K
    for rnd, (row, samples) in enumerate(zip(rows, per_round, strict=True)):
        assert [(s["index"], s["prompt"], s["reference"]) for s in samples] == fixed  # same rows
        assert all(s["round"] == rnd for s in samples)
        for key, fn in (("exact_match", exact_match), ("rouge_l", rouge_l), ("token_f1", token_f1)):
            scores = [fn(s["answer"], s["reference"]) for s in samples]
            assert row[f"eval_gen_{key}"] == pytest.approx(sum(scores) / K)
    # training changes what the model says: the rounds' answers differ, so matching one is not vacuous
    assert [s["answer"] for s in per_round[1]] != [s["answer"] for s in per_round[2]]
    assert summary["exported_round"] == {"select": "last", "round": 2}
    assert summary["export_check"]["matches"] is True
    assert "eval_gen_rouge_l" in summary["final"]


def test_generate_cli_gives_the_servers_last_answers(llm_run, tmp_path):
    _, out, _ = llm_run
    last = read_jsonl(out / "samples" / "round-002.jsonl")
    proc = subprocess.run([sys.executable, "-m", "simulations.generate", str(out / "adapter"),
                           "--prompts", str(out / "samples" / "round-002.jsonl"), "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [a["prompt"] for a in answers] == [s["prompt"] for s in last]
    assert [a["answer"] for a in answers] == [s["answer"] for s in last]


def test_generate_cli_prompt_flags_and_errors(llm_run, tmp_path, capsys):
    from simulations.generate import main

    _, out, _ = llm_run
    last = read_jsonl(out / "samples" / "round-002.jsonl")
    text_file = tmp_path / "prompts.txt"
    text_file.write_text(f"{last[1]['prompt']}\n\n")
    assert main([str(out / "adapter"), "--prompt", last[0]["prompt"], "--prompts", str(text_file),
                 "--json", "--batch-size", "1"]) == 0
    answers = [json.loads(line)["answer"] for line in capsys.readouterr().out.splitlines()]
    assert answers == [last[0]["answer"], last[1]["answer"]]  # batches of one (no padding): same answers
    for argv, message in (
        ([str(tmp_path / "nowhere"), "--prompt", "x"], "no such directory"),
        ([str(out), "--prompt", "x"], "use its adapter/ folder"),
        ([str(text_file), "--prompt", "x"], "is a file"),
        ([str(out / "adapter")], "no prompts"),
        ([str(out / "adapter"), "--prompts", str(tmp_path / "missing.txt")], "missing.txt: no such file"),
    ):
        assert main(argv) == 2
        assert message in capsys.readouterr().err, argv
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"question": "no prompt"}\n')
    assert main([str(out / "adapter"), "--prompts", str(bad)]) == 2
    assert f"{bad}:2: expected an object with a string 'prompt' key" in capsys.readouterr().err


def test_evaluate_cli_reproduces_the_servers_last_central_metrics(llm_run, tmp_path, capsys):
    from simulations.evaluate import main

    _, out, _ = llm_run
    final = read_jsonl(out / "metrics.jsonl")[-1]
    assert main([str(out / "adapter"), "--out", str(tmp_path / "scores.json"),
                 "--samples", str(tmp_path / "s.jsonl")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "scores.json").read_text())
    metrics = printed["metrics"]
    assert set(metrics) == {k[5:] for k in final if k.startswith("eval_")}
    for key, value in metrics.items():
        assert value == pytest.approx(final[f"eval_{key}"], rel=1e-6), key
    last = read_jsonl(out / "samples" / "round-002.jsonl")
    server = [{k: v for k, v in s.items() if k != "round"} for s in last]
    assert read_jsonl(tmp_path / "s.jsonl") == server
    # other data: an override changes what is scored (and is reported); a bad one is a clear error
    assert main([str(out / "adapter"), "federation.generate_samples=2", "data.central_test_size=20"]) == 0
    other = json.loads(capsys.readouterr().out)
    assert other["generate_samples"] == 2 and other["test_examples"] < printed["test_examples"]
    assert main([str(out / "adapter"), "data=nonesuch"]) == 2
    assert "options of data:" in capsys.readouterr().err
    assert main([str(out / "adapter"), "data=files", f"data.path={tmp_path / 'nope.jsonl'}"]) == 2
    assert "nope.jsonl' not found" in capsys.readouterr().err
    assert main([str(out / "adapter"), "model.source=tiny:bert"]) == 2
    assert "differs from the adapter's fedlora.json" in capsys.readouterr().err
