"""Every strategy end to end on Flower's Simulation Engine, with mixed ranks on a 4-bit NF4 base.

A tiny random Llama is quantized by bitsandbytes (NF4 runs on CPU), so one run per strategy
covers: per-client ranks, per-client payloads (FFA's B-only, FLoRA's frozen second adapter,
FlexLoRA's truncations), QLoRA, the export and its reload check.
"""

import pytest

from fedlora.config import compose
from fedlora.results import read_jsonl

pytestmark = pytest.mark.integration
bnb = pytest.importorskip("bitsandbytes")


@pytest.mark.parametrize("strategy", ["fedit", "ffa", "flora", "flexlora", "hetlora"])
def test_strategy_runs_with_mixed_ranks_on_nf4_and_exports(strategy, tmp_path):
    from simulations.engine import simulate

    ranks = "lora.ranks=[]" if strategy == "fedit" else "lora.ranks=[2,4,3]"
    cfg = compose(["preset=smoke_llm", f"strategy={strategy}", ranks, "model.quantization=nf4",
                   "federation.num_clients=3", "export.audit=true", f"output_dir={tmp_path}"])
    summary = simulate(cfg, tmp_path)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2] and all(r["clients"] == 3 for r in rows[1:])
    assert summary["rejected_replies"] == 0
    assert summary["export_check"]["matches"], summary["export_check"]
    clients = read_jsonl(tmp_path / "clients.jsonl")
    assert sorted({c["rank"] for c in clients}) == ([4] if strategy == "fedit" else [2, 3, 4])
    if strategy in ("ffa", "flora", "flexlora"):  # exact aggregation, measured on the real replies
        assert max(r["agg_rel_error"] for r in rows[1:]) < 1e-4
    if strategy in ("fedit", "hetlora"):
        assert all(r["agg_rel_error"] > 0 for r in rows[1:])
    if strategy == "flora":  # the download grows with the stacked ranks
        assert rows[2]["bytes_down"] > rows[1]["bytes_down"] and rows[2]["global_rank"] == 2 * 9
    if strategy == "ffa":  # only B goes up (float32), and every client's A hashed to the shared one
        import torch
        from safetensors.torch import load_file

        from fedlora.lora.codec import record_nbytes, to_arrayrecord

        audit = load_file(str(next((tmp_path / "audit" / "round-0001").glob("client-*.safetensors"))))
        b_shapes = {k: t.shape[0] for k, t in audit.items() if k.endswith("lora_B.weight")}

        def b_only(rank: int) -> int:
            # what a B-only record of this rank weighs on the wire (npy header and layout too)
            zeros = {k: torch.zeros(o, rank) for k, o in b_shapes.items()}
            return record_nbytes(to_arrayrecord(zeros))

        assert [c["bytes_up"] for c in clients] == [b_only(c["rank"]) for c in clients]
        assert all("a_hash" in c for c in clients)
    assert (tmp_path / "audit" / "round-0002" / "global-after.safetensors").exists()
    assert len(list((tmp_path / "audit" / "round-0001").glob("client-*.safetensors"))) == 3
