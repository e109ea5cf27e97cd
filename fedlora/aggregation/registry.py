"""Name -> aggregator class. Unknown names raise; there is no fallback strategy."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedlora.aggregation.base import Aggregator

AGGREGATORS: dict[str, type[Aggregator]] = {}


def register(cls: type[Aggregator]) -> type[Aggregator]:
    """Class decorator: register an aggregator under its lowercase ``name``."""
    name = cls.name
    if name != name.lower() or not name.isidentifier():
        raise ValueError(f"aggregator name must be a lowercase identifier, got {name!r}")
    if name in AGGREGATORS:
        raise ValueError(f"aggregator {name!r} is registered twice")
    AGGREGATORS[name] = cls
    return cls


def get_aggregator(name: str) -> type[Aggregator]:
    """The aggregator class registered as ``name``.

    Raises
    ------
    KeyError
        Naming the unknown strategy and listing the registered ones.
    """
    try:
        return AGGREGATORS[name]
    except KeyError:
        known = sorted(AGGREGATORS)
        raise KeyError(f"strategy.name: unknown strategy {name!r}; registered: {known}") from None


def mixed_ranks_problem(name: str, ranks: list[int]) -> str:
    """Why strategy ``name`` cannot take these ranks together, or ``""`` when it can.

    One message for the config check (``lora.ranks``) and for discovery (a node's ``lora-rank``),
    so a deployment refuses a node with the same words a simulation's config check uses.
    """
    agg = AGGREGATORS.get(name)
    if agg is None or len(set(ranks)) <= 1 or agg.accepts_mixed_ranks:
        return ""
    mixed = sorted(n for n, a in AGGREGATORS.items() if a.accepts_mixed_ranks)
    return (f"{ranks} mixes ranks, which strategy {name!r} does not support; strategies that accept "
            f"mixed ranks: {mixed or 'none registered yet'}")


def dora_problem(name: str) -> str:
    """Why strategy ``name`` cannot run with ``lora.use_dora=true`` (its ``refuses_dora``), or ``""``
    when it can or is unknown (an unknown name is reported on its own)."""
    agg = AGGREGATORS.get(name)
    if agg is None or not agg.refuses_dora:
        return ""
    allowed = sorted(n for n, a in AGGREGATORS.items() if not a.refuses_dora)
    return f"strategy {name!r} does not support DoRA: {agg.refuses_dora} Strategies that do: {allowed}"
