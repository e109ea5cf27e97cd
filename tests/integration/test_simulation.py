"""End to end on Flower's Simulation Engine (Ray), tiny models built in code, a few seconds a round.

One module-scoped run serves several assertions; a second call resumes it.
"""

import pytest
import torch

from fedlora.config import compose
from fedlora.data import load_central_test, make_collator, tokenize_dataset
from fedlora.export import load_exported
from fedlora.results import read_jsonl
from fedlora.training.evaluate import evaluate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    from simulations.engine import simulate

    out = tmp_path_factory.mktemp("smoke")
    cfg = compose(["preset=smoke", f"output_dir={out}", "federation.num_clients=3",
                   "federation.fraction_train=1.0"])
    summary = simulate(cfg, out)
    return cfg, out, summary


def test_two_rounds_run_end_to_end_and_write_results(smoke_run):
    _, out, summary = smoke_run
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["clients"] == 3 for r in rows[1:])
    assert rows[1]["bytes_down"] > 0 and rows[1]["bytes_up"] == rows[1]["bytes_down"]
    assert rows[2]["bytes_down_total"] == rows[1]["bytes_down"] + rows[2]["bytes_down"]
    assert 0.0 <= rows[-1]["eval_accuracy"] <= 1.0
    assert "agg_rel_error" in rows[1]
    for name in ("metrics.csv", "clients.jsonl", "summary.json", "config.yaml", "metrics.png"):
        assert (out / name).exists(), name
    assert summary["rejected_replies"] == 0


def test_base_model_loaded_once_per_worker_across_rounds(smoke_run):
    _, out, _ = smoke_run
    clients = read_jsonl(out / "clients.jsonl")
    assert len(clients) == 6  # 3 clients x 2 rounds
    by_worker: dict[int, set] = {}
    for row in clients:
        by_worker.setdefault(row["worker_pid"], set()).add(row["base_model_loads"])
    # every reply, in every round, from every worker process reports exactly one load so far
    assert all(loads == {1} for loads in by_worker.values()), by_worker


def test_exported_adapter_reloads_and_reproduces_server_metrics(smoke_run):
    cfg, out, summary = smoke_run
    adapter = out / "adapter"
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    assert not list(adapter.glob("*.bin")) and not (adapter / "model.safetensors").exists()
    model, tok, manifest = load_exported(adapter)
    test = tokenize_dataset(load_central_test(cfg.data, "classification", 3), tok, "classification",
                            cfg.model.max_length)
    metrics = evaluate(model, test, make_collator(tok, "classification"), task="classification",
                       batch_size=32)
    final = read_jsonl(out / "metrics.jsonl")[-1]
    assert metrics["accuracy"] == final["eval_accuracy"]
    assert metrics["loss"] == pytest.approx(final["eval_loss"], rel=1e-6)
    assert summary["export_check"]["matches"] is True
    assert manifest["labels"] and "## Provenance" in (adapter / "README.md").read_text()


def test_resume_continues_without_rerunning_finished_rounds(smoke_run):
    from simulations.engine import simulate

    _, out, _ = smoke_run
    before = read_jsonl(out / "clients.jsonl")
    cfg = compose(["preset=smoke", f"output_dir={out}", "federation.num_clients=3",
                   "federation.fraction_train=1.0", "federation.num_rounds=3", f"resume={out}"])
    simulate(cfg, out)
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    after = read_jsonl(out / "clients.jsonl")
    assert after[: len(before)] == before and {r["round"] for r in after[len(before):]} == {3}


def test_causal_lm_client_round_lowers_response_loss(tmp_path):
    from fedlora.lora.init import initial_state
    from fedlora.lora.state import expected_shapes
    from fedlora.models.build import build_lora_model
    from fedlora.training.client_task import RoundPlan, node_facts, train_round

    cfg = compose(["preset=smoke_llm", "train.local_steps=15", "train.lr=1e-2"])
    facts = node_facts(cfg, {"partition-id": 0, "num-partitions": 2})
    model = build_lora_model(cfg.model, cfg.lora, rank=cfg.lora.r)
    state0 = initial_state(expected_shapes(model), 0)
    def plan(rnd: int) -> RoundPlan:
        return RoundPlan(server_round=rnd, lr=1e-2, rank=cfg.lora.r, alpha=cfg.lora.alpha)

    state1, metrics = train_round(cfg, facts, state0, plan(1))
    state2, metrics2 = train_round(cfg, facts, state1, plan(2))
    assert metrics2["train-loss"] < metrics["train-loss"]
    assert any(not torch.equal(state0[k], state2[k]) for k in state0)
