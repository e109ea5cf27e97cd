"""A DoRA run's replies go through the same checks as the factors: a dropped, reshaped or non-finite
``lora_magnitude_vector`` is refused with its key named, the good replies' magnitudes are averaged
with the p_k the strategy recorded, and the client specs carry rsLoRA's scaling."""

import math

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord

from fedlora.aggregation import GlobalAdapter, get_aggregator
from fedlora.config import compose
from fedlora.lora.codec import from_arrayrecord
from fedlora.results import RunRecorder
from fedlora.strategies.lora_strategy import LoraStrategy, NodeInfo
from tests.conftest import random_state
from tests.strategies.test_lora_strategy import FakeGrid, _reply, task_identity  # noqa: F401

MAG = "m.q.lora_magnitude_vector"
SHAPES = {"m.q.lora_A.weight": (4, 6), "m.q.lora_B.weight": (5, 4), MAG: (5,), "m.head.weight": (3, 5)}
SIZES = {100: 50, 101: 150, 102: 10, 103: 10, 104: 10}


def _strategy(tmp_path):
    cfg = compose(["preset=smoke", "federation.num_clients=5", "federation.min_train_clients=2",
                   "lora.use_dora=true", "lora.use_rslora=true", "lora.r=4", "lora.alpha=8"])
    agg = get_aggregator("fedit")(alpha=8.0, use_dora=True, use_rslora=True)
    state = random_state(SHAPES, 0, torch.float32)
    state[MAG] = state[MAG].abs() + 1.0
    agg.init_state(GlobalAdapter(state, 4, 8.0, use_rslora=True, use_dora=True))
    nodes = {nid: NodeInfo(nid, nid - 100, 4, "cpu", n) for nid, n in SIZES.items()}
    recorder = RunRecorder(tmp_path, "classification")
    strategy = LoraStrategy(cfg=cfg, aggregator=agg, nodes=nodes, recorder=recorder,
                            shared_config={"cfg-yaml": b"x", "wire-dtype": "float32"})
    return strategy, agg


def test_bad_magnitudes_are_refused_and_good_ones_averaged_with_p_k(tmp_path):
    strategy, agg = _strategy(tmp_path)
    msgs = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), FakeGrid(list(SIZES))))
    sent = {m.metadata.dst_node_id: from_arrayrecord(m.content.array_records["arrays"]) for m in msgs}
    assert all(torch.equal(s[MAG], agg.global_adapter().state[MAG]) for s in sent.values())  # m goes down
    spec = strategy._sent[100].spec
    assert spec.use_rslora and spec.scaling == 8.0 / math.sqrt(4)
    trained = {nid: {k: v + 0.1 * random_state(SHAPES, nid, torch.float32)[k] for k, v in s.items()}
               for nid, s in sent.items()}
    replies = [
        _reply(100, trained[100]), _reply(101, trained[101]),
        _reply(102, {k: v for k, v in trained[102].items() if k != MAG}),  # magnitude dropped
        _reply(103, {**trained[103], MAG: torch.full((5,), math.nan)}),  # non-finite
        _reply(104, {**trained[104], MAG: torch.ones(4)}),  # wrong length
    ]
    record, _ = strategy.aggregate_train(1, replies)
    assert record is not None
    reasons = {r["node_id"]: r["reason"] for r in strategy.recorder.rejected}
    assert set(reasons) == {102, 103, 104}
    assert "missing keys" in reasons[102] and MAG in reasons[102]
    assert "non-finite" in reasons[103] and MAG in reasons[103]
    assert f"{MAG}: got (4,), expected (5,)" in reasons[104]
    clients = [c for c in strategy.recorder.clients if c["stage"] == "train"]
    p = {c["node_id"]: c["p_k"] for c in clients}
    assert p == pytest.approx({100: 0.25, 101: 0.75})  # dataset sizes 50 and 150
    want = 0.25 * trained[100][MAG].double() + 0.75 * trained[101][MAG].double()
    torch.testing.assert_close(agg.global_adapter().state[MAG].double(), want, rtol=1e-6, atol=0)
    assert torch.equal(from_arrayrecord(record)[MAG], agg.global_adapter().state[MAG])
