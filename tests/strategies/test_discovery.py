"""The query round: every node's caps are checked; a bad node is dropped with its reason, never sampled."""

from unittest.mock import Mock

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from fedlora.config import compose
from fedlora.results import RunRecorder
from fedlora.strategies.discovery import check_caps, discover_nodes
from tests.strategies.test_lora_strategy import task_identity  # noqa: F401


class QueryGrid:
    """Answers the query round with canned replies (a dict of caps, an error string, or None: silent)."""

    def __init__(self, answers):
        self.answers = answers
        self.timeout = None

    def get_node_ids(self):
        return list(self.answers)

    def send_and_receive(self, messages, *, timeout=None):
        self.timeout = timeout
        out = []
        for msg in messages:
            answer = self.answers[msg.metadata.dst_node_id]
            if answer is None:
                continue
            reply = Mock(spec=Message)
            reply.metadata.src_node_id = msg.metadata.dst_node_id
            reply.has_error.return_value = isinstance(answer, str)
            if isinstance(answer, str):
                reply.error.reason = answer
            else:
                reply.content = RecordDict({"caps": ConfigRecord(answer)})
            out.append(reply)
        return out


def _caps(pid, rank=4, n=50, **extra):
    return {"partition-id": pid, "rank": rank, "device": "cpu", "num-train-examples": n, **extra}


def _cfg(*extra):
    return compose(["preset=smoke", "strategy=hetlora", "federation.num_clients=2",
                    "federation.min_train_clients=1", "lora.max_rank=16", "federation.round_timeout_s=30",
                    *extra])


def _discover(tmp_path, answers, *extra):
    recorder = RunRecorder(tmp_path, "classification")
    cfg = _cfg(f"federation.num_clients={len(answers)}", *extra)
    return discover_nodes(QueryGrid(answers), cfg, {"cfg-yaml": b"x"}, recorder, wait_s=1.0), recorder


@pytest.mark.parametrize("caps,reason", [
    (_caps(0, rank=0), "'rank' must be an integer in 1..lora.max_rank=16, got 0"),
    (_caps(0, rank=17), "'rank' must be an integer in 1..lora.max_rank=16, got 17"),
    (_caps(0, rank="8"), "'rank' must be an integer in 1..lora.max_rank=16, got '8'"),
    (_caps(0, rank=True), "'rank' must be an integer in 1..lora.max_rank=16, got True"),
    (_caps(0, n=0), "'num-train-examples' must be a positive integer, got 0"),
    (_caps(0, n=-3), "'num-train-examples' must be a positive integer, got -3"),
    (_caps(0, n=12.5), "'num-train-examples' must be a positive integer, got 12.5"),
    (_caps("zero"), "'partition-id' must be a non-negative integer, got 'zero'"),
    (_caps(-1), "'partition-id' must be a non-negative integer, got -1"),
])
def test_bad_caps_have_a_reason(caps, reason):
    info, got = check_caps(ConfigRecord(caps), 7, _cfg())
    assert info is None and got == reason


def test_good_caps_and_a_strategy_that_refuses_mixed_ranks():
    info, reason = check_caps(ConfigRecord(_caps(3, rank=8, n=120)), 7, _cfg())
    assert reason == ""
    assert (info.node_id, info.partition_id, info.rank, info.num_train_examples) == (7, 3, 8, 120)
    info, reason = check_caps(ConfigRecord(_caps(3, rank=8)), 7, _cfg("strategy=fedit"))
    assert info is None
    # the same words as the config check gives for lora.ranks=[4,8] under fedit
    assert reason == ("rank 8 (node config lora-rank) with lora.r=4: [4, 8] mixes ranks, which strategy "
                      "'fedit' does not support; strategies that accept mixed ranks: "
                      "['ffa', 'flexlora', 'flora', 'hetlora']")
    with pytest.raises(ValueError) as config_error:
        _cfg("strategy=fedit", "lora.ranks=[4,8]")
    assert "lora.ranks: " + reason.split(": ", 1)[1] in str(config_error.value)
    assert check_caps(None, 7, _cfg())[1] == "the query reply holds no ConfigRecord 'caps'"


def test_offending_nodes_are_dropped_and_recorded(tmp_path):
    answers = {
        11: _caps(0), 12: _caps(1, rank=99), 13: _caps(2, n=0), 14: "ClientAppException: no data",
        15: None, 16: _caps(0), 18: _caps(3),
        17: _caps(0, **{"own-data": True}),  # its own data file: partition 0 may repeat
    }
    nodes, recorder = _discover(tmp_path, answers)
    assert sorted(nodes) == [11, 17, 18]
    rows = {r["node_id"]: r for r in recorder.rejected}
    assert set(rows) == {12, 13, 14, 15, 16}
    assert all(r["stage"] == "discovery" and r["round"] == 0 for r in rows.values())
    assert rows[12]["partition_id"] == 1 and "lora.max_rank=16, got 99" in rows[12]["reason"]
    assert rows[13]["reason"] == "'num-train-examples' must be a positive integer, got 0"
    assert rows[14]["reason"] == "the query round failed: ClientAppException: no data"
    assert rows[15]["reason"] == "no reply to the query round within 120 s"  # at least QUERY_TIMEOUT_MIN_S
    assert rows[16]["reason"] == ("partition-id 0 is already claimed by node 11: two nodes would train on "
                                  "the same partition of the shared data")


def test_too_few_valid_nodes_is_a_clear_runtime_error(tmp_path):
    answers = {11: _caps(0, rank=4), 12: _caps(1, rank=8), 13: _caps(2, rank=8)}
    with pytest.raises(RuntimeError, match=r"only 1 of 3 nodes passed the query round, fewer than federation"
                                           r".min_train_clients=2.*node 12: rank 8 .* 'fedit' does not"):
        _discover(tmp_path, answers, "strategy=fedit", "federation.min_train_clients=2")


def test_dropped_nodes_are_never_sampled(tmp_path):
    from fedlora.aggregation import GlobalAdapter, get_aggregator
    from fedlora.strategies.lora_strategy import LoraStrategy
    from tests.conftest import random_state
    from tests.strategies.test_lora_strategy import SHAPES, FakeGrid

    answers = {11: _caps(0), 12: _caps(1, rank=0), 13: _caps(2)}
    nodes, recorder = _discover(tmp_path, answers, "federation.fraction_train=1.0")
    agg = get_aggregator("hetlora")(alpha=8.0)
    agg.init_state(GlobalAdapter(random_state(SHAPES, 0), 4, 8.0))
    strategy = LoraStrategy(cfg=_cfg("federation.fraction_train=1.0"), aggregator=agg, nodes=nodes,
                            recorder=recorder, shared_config={})
    for rnd in (1, 2, 3):
        chosen = strategy.sample(FakeGrid([11, 12, 13]), rnd, 1.0, 1)
        assert [n.node_id for n in chosen] == [11, 13]
