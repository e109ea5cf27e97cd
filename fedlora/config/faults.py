"""Fault injection specs (``faults=[kind@partition[@round], ...]``), parsed once for config checks
and for the clients that act them out (:mod:`fedlora.training.faults`)."""

from __future__ import annotations

FAULT_KINDS = (
    "raise", "nan", "inf", "wrong_shape", "wrong_rank", "inflated_count", "huge_values", "silence", "slow",
)


def parse_fault(spec: str) -> tuple[str, int, int | None]:
    """``kind@partition[@round]`` -> ``(kind, partition, round or None)``; raises ValueError."""
    parts = spec.split("@")
    if len(parts) not in (2, 3) or parts[0] not in FAULT_KINDS:
        raise ValueError(
            f"faults: {spec!r} is not kind@partition[@round] with kind one of {list(FAULT_KINDS)}"
        )
    try:
        pid = int(parts[1])
        rnd = int(parts[2]) if len(parts) == 3 else None
    except ValueError:
        raise ValueError(f"faults: {spec!r}: partition and round must be integers") from None
    if pid < 0 or (rnd is not None and rnd < 1):
        raise ValueError(f"faults: {spec!r}: partition must be >= 0 and round >= 1")
    return parts[0], pid, rnd
