"""LoraStrategy with Flower records and mock replies: payloads, checks, rejection, aggregation."""

import math
from unittest.mock import Mock

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedlora.aggregation import GlobalAdapter, get_aggregator
from fedlora.config import compose
from fedlora.lora.codec import from_arrayrecord, record_nbytes, to_arrayrecord
from fedlora.results import RunRecorder
from fedlora.strategies.lora_strategy import LoraStrategy, NodeInfo
from tests.conftest import random_state

SHAPES = {"m.q.lora_A.weight": (4, 6), "m.q.lora_B.weight": (5, 4), "m.head.weight": (3, 5)}


@pytest.fixture(autouse=True)
def task_identity():
    old = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = old


class FakeGrid:
    def __init__(self, ids):
        self.ids = ids

    def get_node_ids(self):
        return list(self.ids)


def _strategy(tmp_path, fraction=1.0, min_clients=2, extra=()):
    cfg = compose(["preset=smoke", "federation.num_clients=4", f"federation.fraction_train={fraction}",
                   f"federation.min_train_clients={min_clients}", *extra])
    agg = get_aggregator("fedit")(alpha=8.0)
    agg.init_state(GlobalAdapter(random_state(SHAPES, 0, torch.float32), 4, 8.0))
    nodes = {100 + i: NodeInfo(100 + i, i, 4, "cpu", 50) for i in range(4)}
    recorder = RunRecorder(tmp_path, "classification")
    return LoraStrategy(cfg=cfg, aggregator=agg, nodes=nodes, recorder=recorder,
                        shared_config={"cfg-yaml": b"x", "wire-dtype": "float32"}), agg


def _reply(node_id, state=None, n=10, loss=0.5, error=None):
    msg = Mock(spec=Message)
    msg.metadata.src_node_id = node_id
    msg.has_error.return_value = error is not None
    if error:
        msg.error.reason = error
        return msg
    msg.content = RecordDict({"arrays": to_arrayrecord(state),
                              "metrics": MetricRecord({"num-examples": n, "train-loss": loss})})
    return msg


def test_configure_train_sends_global_state_and_config_to_each_sampled_node(tmp_path):
    strategy, agg = _strategy(tmp_path)
    msgs = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), FakeGrid([100, 101, 102, 103])))
    assert sorted(m.metadata.dst_node_id for m in msgs) == [100, 101, 102, 103]
    sent = from_arrayrecord(msgs[0].content.array_records["arrays"])
    assert all(torch.equal(sent[k], agg.global_adapter().state[k]) for k in SHAPES)
    config = msgs[0].content.config_records["config"]
    assert config["server-round"] == 1 and config["rank"] == 4 and config["lr"] == pytest.approx(5e-3)
    sent_bytes = sum(record_nbytes(m.content.array_records["arrays"]) for m in msgs)
    assert strategy.recorder._pending["bytes_down"] == sent_bytes


def test_partial_participation_is_seeded_and_respects_minimum(tmp_path):
    strategy, _ = _strategy(tmp_path, fraction=0.25, min_clients=2)
    grid = FakeGrid([100, 101, 102, 103])
    first = [m.metadata.dst_node_id for m in strategy.configure_train(2, ArrayRecord(), ConfigRecord(), grid)]
    again = [m.metadata.dst_node_id for m in strategy.configure_train(2, ArrayRecord(), ConfigRecord(), grid)]
    assert len(first) == 2 and first == again


def test_bad_replies_are_rejected_with_reasons_and_round_goes_on(tmp_path):
    strategy, agg = _strategy(tmp_path, extra=["federation.weighting=examples"])
    list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), FakeGrid([100, 101, 102, 103])))
    good1, good2 = random_state(SHAPES, 1, torch.float32), random_state(SHAPES, 2, torch.float32)
    nan = random_state(SHAPES, 3, torch.float32)
    nan["m.q.lora_B.weight"][0, 0] = math.nan
    wrong_rank = random_state({**SHAPES, "m.q.lora_A.weight": (8, 6)}, 4, torch.float32)
    replies = [_reply(100, good1, n=6), _reply(101, good2, n=18), _reply(102, nan),
               _reply(103, wrong_rank), _reply(999, good1)]
    _, metrics = strategy.aggregate_train(1, replies)
    reasons = {r["node_id"]: r["reason"] for r in strategy.recorder.rejected}
    assert "non-finite" in reasons[102]
    assert "m.q.lora_A.weight: got (8, 6), expected (4, 6)" in reasons[103]
    assert "not sampled" in reasons[999]
    state = agg.global_adapter().state
    for k in SHAPES:
        torch.testing.assert_close(state[k], 0.25 * good1[k] + 0.75 * good2[k])
    assert metrics["train-loss"] == pytest.approx(0.5)
    assert strategy.recorder._pending["clients"] == 2


def test_error_and_missing_replies_below_minimum_keep_the_global_state(tmp_path):
    strategy, agg = _strategy(tmp_path, min_clients=2)
    before = {k: v.clone() for k, v in agg.global_adapter().state.items()}
    list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), FakeGrid([100, 101, 102, 103])))
    arrays, metrics = strategy.aggregate_train(1, [_reply(100, random_state(SHAPES, 1, torch.float32)),
                                                   _reply(101, error="ClientAppException: boom")])
    assert arrays is None and metrics is None
    assert all(torch.equal(before[k], agg.global_adapter().state[k]) for k in before)
    reasons = [r["reason"] for r in strategy.recorder.rejected]
    assert any("boom" in r for r in reasons) and sum("no reply" in r for r in reasons) == 2


def test_non_positive_example_count_is_rejected(tmp_path):
    strategy, _ = _strategy(tmp_path)
    list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), FakeGrid([100, 101, 102, 103])))
    strategy.aggregate_train(1, [_reply(100, random_state(SHAPES, 1, torch.float32), n=0)])
    assert "positive integer" in strategy.recorder.rejected[0]["reason"]
