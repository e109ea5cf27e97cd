"""A chat-format JSONL file trains a tiny Llama end to end on the Simulation Engine (2 clients, 2 rounds).

Why: the defaults of ``data=files`` used to refuse a causal LM (Dirichlet needs labels), and chat rows
travel through every layer - preflight, partitions in each Ray worker, tokenization, central
evaluation, export - so only a real run shows they all accept them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fedlora.config import compose
from fedlora.data import clear_caches
from fedlora.results import read_jsonl

pytestmark = pytest.mark.integration

SUBJECTS = ["the cat", "a dog", "my friend", "the robot"]
OBJECTS = ["a red ball", "the old book", "fresh bread"]


def conversation(i: int) -> dict:
    subject, thing = SUBJECTS[i % 4], OBJECTS[i % 3]
    return {"messages": [
        {"role": "user", "content": f"What does {subject} like?"},
        {"role": "assistant", "content": f"{subject} likes {thing}."},
        {"role": "user", "content": "And today?"},
        {"role": "assistant", "content": f"today {subject} reads the old book."},
    ]}  # fmt: skip


def test_chat_jsonl_trains_two_rounds(tmp_path: Path) -> None:
    from simulations.engine import simulate

    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(conversation(i)) for i in range(40)) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    cfg = compose(["preset=smoke_llm", f"output_dir={out}", "data=files", f"data.path={path}",
                   "data.system_prompt=Answer briefly.", "model.max_length=64"])  # fmt: skip
    clear_caches()
    summary = simulate(cfg, out)
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["clients"] == 2 for r in rows[1:])
    assert summary["rejected_replies"] == 0
    losses = [r["eval_loss"] for r in rows]  # central loss on the held-out conversations' assistant turns
    assert all(math.isfinite(v) for v in losses) and losses[2] < losses[0]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    # generation answers held-out conversations up to their last assistant turn, every round
    samples = [json.loads(line) for line in (out / "samples" / "round-002.jsonl").read_text().splitlines()]
    assert samples and all(s["prompt"] == "And today?" for s in samples)
    assert all(s["context"][0] == {"role": "system", "content": "Answer briefly."} for s in samples)
    assert all(s["reference"].startswith("today ") for s in samples)
    assert all("eval_gen_rouge_l" in r for r in rows)
