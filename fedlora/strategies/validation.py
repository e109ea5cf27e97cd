"""Check a client's reply before it can touch the global state.

A reply is accepted only if it carries an ArrayRecord and a MetricRecord, a positive integer
example count, arrays within the size limit, in the declared wire dtype, with exactly the keys
and shapes this client was expected to return (which pins its rank), and finite values. Anything
else raises :class:`BadReply` with a reason the strategy logs; the round goes on without it.
"""

from __future__ import annotations

import math

import torch
from flwr.app import ArrayRecord, Message, MetricRecord

from fedlora import protocol as P
from fedlora.lora.codec import from_arrayrecord, record_nbytes
from fedlora.lora.keys import LoraState
from fedlora.lora.state import LoraStateError, check_state_fits


class BadReply(ValueError):
    """A client reply that is rejected; the message says why."""


def validate_reply(
    msg: Message,
    *,
    expected_shapes: dict[str, tuple[int, ...]],
    wire_dtype: str,
    max_bytes: int,
) -> tuple[LoraState, MetricRecord, int]:
    """Return ``(state, metrics, nbytes)`` of a good reply, or raise :class:`BadReply`."""
    if msg.has_error():
        raise BadReply(f"client error: {msg.error.reason}")
    content = msg.content
    arrays = content.array_records.get(P.ARRAYS)
    metrics = content.metric_records.get(P.METRICS)
    if not isinstance(arrays, ArrayRecord) or not isinstance(metrics, MetricRecord):
        raise BadReply(f"reply must hold ArrayRecord {P.ARRAYS!r} and MetricRecord {P.METRICS!r}")
    count = metrics.get(P.NUM_EXAMPLES)
    if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
        raise BadReply(f"{P.NUM_EXAMPLES!r} must be a positive integer, got {count!r}")
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
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise BadReply(f"metric {key!r} is not finite ({value})")
    return state, metrics, nbytes
