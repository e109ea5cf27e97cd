"""Check a client's reply before it can touch the global state.

A training reply is accepted only if it carries an ArrayRecord and a MetricRecord, a positive
integer example count no larger than what the client can have seen this round, arrays within
the size limit, in the declared wire dtype, with exactly the keys and shapes this client was
expected to return (which pins its rank), finite values, finite metrics, and an update (reply
minus what was sent) whose L2 norm is within ``federation.max_update_norm``. An evaluation reply
needs a MetricRecord with a positive integer example count and finite metrics. Anything else
raises :class:`BadReply` with a reason the strategy records; the round goes on without it.
With DoRA (``lora.use_dora``) the payload, hence the expected keys, holds every module's
``lora_magnitude_vector`` (``(out,)``): a reply that drops one, reshapes it or sends a non-finite
magnitude is refused like a bad factor, and magnitudes count in the update norm.

Why the two bounds: a finite but absurd reply (``num-examples`` = 10**15, or tensors of 3e38)
passes every shape and finiteness check, yet the first captures the whole weighted mean and the
second overflows the float32 aggregation into inf/NaN.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

import torch
from flwr.app import ArrayRecord, Message, MetricRecord

from fedlora import protocol as P
from fedlora.lora.codec import from_arrayrecord, record_nbytes
from fedlora.lora.keys import LoraState
from fedlora.lora.state import LoraStateError, check_state_fits
from fedlora.training.local import num_steps

if TYPE_CHECKING:
    from fedlora.config.schema import TrainConfig


class BadReply(ValueError):
    """A client reply that is rejected; the message says why."""


def examples_bound(train: TrainConfig, num_train_examples: int) -> tuple[int, str]:
    """The most examples a client can report for one round, and how that bound was computed.

    Mirrors :func:`fedlora.training.local.train_local`: ``num_steps`` optimizer steps of
    ``grad_accum`` micro-batches of at most ``batch_size`` examples (the last batch of a pass
    may be smaller, never larger). With ``local_epochs`` the step count depends on the node's
    dataset size, which the server learned in the query round.
    """
    steps = num_steps(train, num_train_examples)
    bound = steps * train.batch_size * train.grad_accum
    if train.local_steps > 0:
        how = f"train.local_steps={steps} x batch_size={train.batch_size} x grad_accum={train.grad_accum}"
    else:
        how = (f"{steps} steps for train.local_epochs={train.local_epochs:g} over its {num_train_examples} "
               f"examples x batch_size={train.batch_size} x grad_accum={train.grad_accum}")
    return bound, how


def update_norm(state: LoraState, sent: LoraState) -> float:
    """L2 norm, in float64, of ``state - sent`` over every tensor of the reply.

    A tensor the client adds itself (absent from ``sent``) counts against zero. float64 because a
    float32 sum of squares of 3e38 overflows to inf, and an inf norm must still compare as "too
    large" rather than poison the comparison.
    """
    total = 0.0
    for key, value in state.items():
        diff = value.double()
        if key in sent and tuple(sent[key].shape) == tuple(value.shape):
            diff = diff - sent[key].double()
        total += float((diff * diff).sum())
    return math.sqrt(total)


def _positive_count(metrics: MetricRecord) -> int:
    count = metrics.get(P.NUM_EXAMPLES)
    if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
        raise BadReply(f"{P.NUM_EXAMPLES!r} must be a positive integer, got {count!r}")
    return count


def _check_metrics_finite(metrics: MetricRecord) -> None:
    for key, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise BadReply(f"metric {key!r} is not finite ({value})")


def validate_reply(
    msg: Message,
    *,
    expected_shapes: dict[str, tuple[int, ...]],
    wire_dtype: str,
    max_bytes: int,
    max_examples: tuple[int, str] | None = None,
    sent: LoraState | None = None,
    max_update_norm: float = 0.0,
) -> tuple[LoraState, MetricRecord, int]:
    """Return ``(state, metrics, nbytes)`` of a good training reply, or raise :class:`BadReply`.

    ``max_examples`` is :func:`examples_bound` for this node (None: no bound); ``sent`` the
    payload the client started from and ``max_update_norm`` the bound on :func:`update_norm`
    (0 or no ``sent``: no bound).
    """
    if msg.has_error():
        raise BadReply(f"client error: {short_reason(msg.error.reason)}")
    content = msg.content
    arrays = content.array_records.get(P.ARRAYS)
    metrics = content.metric_records.get(P.METRICS)
    if not isinstance(arrays, ArrayRecord) or not isinstance(metrics, MetricRecord):
        raise BadReply(f"reply must hold ArrayRecord {P.ARRAYS!r} and MetricRecord {P.METRICS!r}")
    count = _positive_count(metrics)
    if max_examples is not None and count > max_examples[0]:
        raise BadReply(f"{P.NUM_EXAMPLES!r} is {count}, more than the {max_examples[0]} examples this "
                       f"client can have seen in a round ({max_examples[1]})")
    nbytes = record_nbytes(arrays)
    if nbytes > max_bytes:
        raise BadReply(f"arrays are {nbytes / 1e6:.1f} MB, over the {max_bytes / 1e6:.1f} MB limit")
    try:
        state = from_arrayrecord(arrays, wire_dtype)
        check_state_fits(state, expected_shapes)
    except (ValueError, LoraStateError) as err:
        raise BadReply(str(err)) from None
    bad = [k for k, t in state.items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise BadReply(f"non-finite values in {bad[:3]}")
    _check_metrics_finite(metrics)
    if sent is not None and max_update_norm > 0:
        norm = update_norm(state, sent)
        if not norm <= max_update_norm:
            raise BadReply(f"update norm {norm:.3e} (L2 of reply minus payload sent) exceeds "
                           f"federation.max_update_norm={max_update_norm:g}")
    return state, metrics, nbytes


def short_reason(reason: str, limit: int = 300) -> str:
    """The exception line of a client error (Flower/Ray wrap the whole remote traceback in it).

    The full traceback stays in the client's log; ``rejected.jsonl`` and the console get the line
    that says what went wrong, e.g. ``RuntimeError: injected fault raise (client 0, round 2)``.
    """
    lines = [ln.strip() for ln in str(reason).replace("\\n", "\n").splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b.*:", ln)]
    line = errors[-1] if errors else (lines[-1] if lines else str(reason))
    line = line.rstrip("'>").split("occurred. Message: ", 1)[-1]  # Flower's ClientAppException wrapper
    return line if len(line) <= limit else line[: limit - 3] + "..."


def validate_eval_reply(msg: Message) -> MetricRecord:
    """Return the MetricRecord of a good evaluation reply, or raise :class:`BadReply`.

    It must hold MetricRecord ``metrics`` with a positive integer ``num-examples`` (the weight
    of its metrics in the federated mean) and only finite metric values.
    """
    if msg.has_error():
        raise BadReply(f"client error: {short_reason(msg.error.reason)}")
    metrics = msg.content.metric_records.get(P.METRICS)
    if not isinstance(metrics, MetricRecord):
        raise BadReply(f"reply must hold MetricRecord {P.METRICS!r}")
    _positive_count(metrics)
    _check_metrics_finite(metrics)
    return metrics
