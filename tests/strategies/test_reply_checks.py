"""Every reply is checked: example-count bound, update norm, evaluation replies, rejected rows, and
the weights p_k = n_k / sum(n) under each ``federation.weighting``."""

import dataclasses
import math
from unittest.mock import Mock

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from safetensors import safe_open

from fedlora.config import compose
from fedlora.lora.codec import from_arrayrecord
from fedlora.strategies.audit import Auditor
from fedlora.strategies.validation import BadReply, examples_bound, update_norm, validate_reply
from fedlora.training.faults import apply_faults
from tests.conftest import random_state
from tests.strategies.test_lora_strategy import SHAPES, FakeGrid, _reply, _strategy, task_identity  # noqa: F401

GRID = FakeGrid([100, 101, 102, 103])


def _sent_states(strategy):
    """The payload each sampled node was sent, as the client decodes it."""
    msgs = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), GRID))
    return {m.metadata.dst_node_id: from_arrayrecord(m.content.array_records["arrays"]) for m in msgs}


def _trained(start, seed, scale=0.01):
    """A plausible trained reply: the payload plus a small random step."""
    step = random_state(SHAPES, seed, torch.float32)
    return {k: v + scale * step[k] for k, v in start.items()}


def _rows_have_fields(rows):
    for row in rows:
        assert {"stage", "round", "node_id", "partition_id", "reason"} <= set(row), row


def test_examples_bound_follows_local_training():
    cfg = compose(["preset=smoke", "train.local_steps=3", "train.batch_size=8", "train.grad_accum=2"])
    assert examples_bound(cfg.train, 10_000) == (48, "train.local_steps=3 x batch_size=8 x grad_accum=2")
    epochs = dataclasses.replace(cfg.train, local_steps=0, local_epochs=1.5)
    bound, how = examples_bound(epochs, 100)  # ceil(1.5 * 100 / 16) = 10 steps of 16
    assert bound == 160 and "10 steps for train.local_epochs=1.5 over its 100 examples" in how


def test_update_norm_is_float64_over_reply_minus_payload():
    sent = {"a": torch.ones(2, 2), "b": torch.zeros(3)}
    reply = {"a": torch.ones(2, 2) + torch.tensor([[3.0, 0.0], [0.0, 0.0]]), "b": torch.zeros(3),
             "c": torch.tensor([4.0])}  # "c" was not sent: compared with zero
    assert update_norm(reply, sent) == pytest.approx(5.0)
    huge = {"a": torch.full((2, 2), 3e38)}
    assert math.isfinite(update_norm(huge, sent)) and update_norm(huge, sent) == pytest.approx(6e38, rel=1e-6)


def test_inflated_count_and_huge_values_are_rejected_and_the_round_goes_on(tmp_path):
    strategy, agg = _strategy(tmp_path)
    sent = _sent_states(strategy)
    good = {n: _trained(sent[n], n) for n in (100, 101)}
    faulty = compose(["preset=smoke", "faults=[huge_values@2]"])
    huge = apply_faults(faulty, 2, 1, _trained(sent[102], 7), {})[0]
    replies = [_reply(100, good[100], n=24), _reply(101, good[101], n=24), _reply(102, huge, n=24),
               _reply(103, _trained(sent[103], 9), n=10**15)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and math.isfinite(metrics["agg-rel-error"])
    reasons = {r["node_id"]: r["reason"] for r in strategy.recorder.rejected}
    assert reasons[103] == ("'num-examples' is 1000000000000000, more than the 24 examples this client can "
                            "have seen in a round (train.local_steps=3 x batch_size=8 x grad_accum=1)")
    assert reasons[102].startswith("update norm ")
    assert "exceeds federation.max_update_norm=10000" in reasons[102]
    assert set(reasons) == {102, 103}
    _rows_have_fields(strategy.recorder.rejected)
    assert all(r["stage"] == "train" and r["round"] == 1 for r in strategy.recorder.rejected)
    assert strategy.recorder._pending["rejected"] == 2 and strategy.recorder._pending["clients"] == 2
    for k in SHAPES:  # equal dataset sizes: p = 1/2 each
        torch.testing.assert_close(agg.global_adapter().state[k], 0.5 * good[100][k] + 0.5 * good[101][k])


def test_max_update_norm_zero_means_no_bound():
    state = random_state(SHAPES, 1, torch.float32)
    msg = _reply(1, {k: v * 1e30 for k, v in state.items()}, n=5)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    validate_reply(msg, expected_shapes=shapes, wire_dtype="float32", max_bytes=10**9, sent=state,
                   max_update_norm=0.0)
    with pytest.raises(BadReply, match="update norm"):
        validate_reply(msg, expected_shapes=shapes, wire_dtype="float32", max_bytes=10**9, sent=state,
                       max_update_norm=1.0)


@pytest.mark.parametrize("basis,counts,expected_p", [
    ("dataset", [24, 6], [0.25, 0.75]),  # dataset sizes 50 and 150, whatever the replies say
    ("examples", [18, 6], [0.75, 0.25]),
    ("uniform", [24, 1], [0.5, 0.5]),
])
def test_weighting_basis_sets_p_k(tmp_path, basis, counts, expected_p):
    strategy, agg = _strategy(tmp_path, extra=[f"federation.weighting={basis}"])
    strategy.nodes[101] = dataclasses.replace(strategy.nodes[101], num_train_examples=150)
    strategy.auditor = Auditor(tmp_path)
    sent = _sent_states(strategy)
    states = {100: _trained(sent[100], 1), 101: _trained(sent[101], 2)}
    strategy.aggregate_train(1, [_reply(n, states[n], n=c) for n, c in zip((100, 101), counts, strict=True)])
    # two of four sampled nodes answered; the others are rejected, and not part of sum(n)
    assert [r["reason"] for r in strategy.recorder.rejected] == ["no reply before the round timeout"] * 2
    rows = strategy.recorder.clients
    assert [r["weight_basis"] for r in rows] == [basis, basis]
    assert [r["p_k"] for r in rows] == pytest.approx(expected_p)
    assert [r["num_examples"] for r in rows] == counts  # the reply's own count is kept in the row
    for k in SHAPES:
        torch.testing.assert_close(agg.global_adapter().state[k],
                                   expected_p[0] * states[100][k] + expected_p[1] * states[101][k])
    audit = sorted((tmp_path / "audit" / "round-0001").glob("client-*.safetensors"))
    weights = []
    for path in audit:
        with safe_open(str(path), "pt") as f:
            weights.append(float(f.metadata()["weight"]))
    assert weights == pytest.approx(expected_p)


def _eval_reply(node_id, metrics=None, error=None):
    msg = Mock(spec=Message)
    msg.metadata.src_node_id = node_id
    msg.has_error.return_value = error is not None
    if error:
        msg.error.reason = error
    else:
        msg.content = RecordDict({"metrics": MetricRecord(metrics)} if metrics is not None else {})
    return msg


def test_bad_evaluation_replies_are_recorded_and_the_rest_averaged(tmp_path):
    strategy, _ = _strategy(tmp_path, extra=["federation.fraction_evaluate=1.0"])
    for i in (4, 5):
        strategy.nodes[100 + i] = dataclasses.replace(strategy.nodes[100], node_id=100 + i, partition_id=i)
    strategy.recorder.start_round(1)
    sent = strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), FakeGrid(list(range(100, 106))))
    assert len(list(sent)) == 6
    replies = [
        _eval_reply(100, {"num-examples": 10, "eval-loss": 1.0, "eval-accuracy": 0.5}),
        _eval_reply(101, {"num-examples": 30, "eval-loss": 2.0, "eval-accuracy": 0.9, "eval-extra": 1.0}),
        _eval_reply(102, {"eval-loss": 1.0}),  # no num-examples: was a KeyError
        _eval_reply(103, {"num-examples": 0, "eval-loss": 1.0}),  # was a ZeroDivisionError
        _eval_reply(104, error="ClientAppException: eval boom"),
        _eval_reply(105, {"num-examples": 2.5, "eval-loss": 1.0}),
        _eval_reply(999, {"num-examples": 5, "eval-loss": 1.0}),
    ]
    out = strategy.aggregate_evaluate(1, iter(replies))  # any iterable, consumed once
    assert dict(out) == pytest.approx({"eval-loss": 1.75, "eval-accuracy": 0.8})
    rows = {r["node_id"]: r for r in strategy.recorder.rejected}
    assert set(rows) == {102, 103, 104, 105, 999}
    assert rows[102]["reason"] == "'num-examples' must be a positive integer, got None"
    assert rows[103]["reason"] == "'num-examples' must be a positive integer, got 0"
    assert rows[104]["reason"] == "client error: ClientAppException: eval boom"
    assert rows[105]["reason"] == "'num-examples' must be a positive integer, got 2.5"
    assert rows[999]["reason"] == "reply from a node not sampled" and "partition_id" not in rows[999]
    assert all(r["stage"] == "evaluate" and r["round"] == 1 for r in rows.values())
    _rows_have_fields([rows[n] for n in (102, 103, 104, 105)])
    assert strategy.recorder._pending["fed_eval_loss"] == pytest.approx(1.75)
    assert strategy.recorder._pending["rejected_evaluate"] == 5


def test_non_finite_evaluation_metrics_and_no_good_reply(tmp_path):
    strategy, _ = _strategy(tmp_path, extra=["federation.fraction_evaluate=1.0"])
    strategy.recorder.start_round(2)
    list(strategy.configure_evaluate(2, ArrayRecord(), ConfigRecord(), GRID))
    out = strategy.aggregate_evaluate(2, [_eval_reply(100, {"num-examples": 5, "eval-loss": math.nan}),
                                          _eval_reply(101, {"num-examples": 5, "eval-loss": math.inf})])
    assert out is None
    reasons = [r["reason"] for r in strategy.recorder.rejected]
    assert reasons[:2] == ["metric 'eval-loss' is not finite (nan)", "metric 'eval-loss' is not finite (inf)"]
    assert reasons[2:] == ["no reply before the round timeout"] * 2
    _rows_have_fields(strategy.recorder.rejected)
