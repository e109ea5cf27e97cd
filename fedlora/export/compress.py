"""Compress a global update to a rank or energy budget before export.

Stacking strategies (flora, flexlora) hold a global update whose rank is the sum of the clients'
ranks (up to ``strategy.rank_cap``). A user may want a smaller adapter: each module is truncated
on its factors (QR + SVD of the small core, :func:`fedlora.lora.factored.truncate`; the best
approximation of that rank by Eckart-Young), and the energy kept is recorded in the model card.
The result has the scaling folded in (``alpha == rank`` per module, ``sqrt(rank)`` with rsLoRA)
and uses PEFT's ``rank_pattern``/``alpha_pattern`` where modules end up with different ranks;
DoRA magnitudes are kept as they are, with the other extras.
"""

from __future__ import annotations

from fedlora.aggregation import GlobalAdapter
from fedlora.aggregation.variants import folded_alpha
from fedlora.lora.factored import truncate
from fedlora.lora.keys import a_key, b_key, extra_keys


def compress_adapter(
    adapter: GlobalAdapter, rank: int = 0, energy: float = 0.0
) -> tuple[GlobalAdapter, float]:
    """``adapter`` truncated per module to ``rank`` and/or ``energy``; returns it and the minimum kept energy.

    With neither budget set the adapter is returned unchanged (kept energy 1.0).
    """
    if rank <= 0 and energy <= 0:
        return adapter, 1.0
    state = {k: adapter.state[k] for k in extra_keys(adapter.state)}
    ranks: dict[str, int] = {}
    kept = 1.0
    for module, factors in adapter.factors().items():
        cut = truncate(factors, rank=rank, energy=energy)
        state[a_key(module)], state[b_key(module)] = cut.factors.A.contiguous(), cut.factors.B.contiguous()
        ranks[module] = cut.factors.rank
        kept = min(kept, cut.energy_kept)
    top, rs = max(ranks.values()), adapter.use_rslora
    return GlobalAdapter(
        state=state, rank=top, alpha=folded_alpha(top, rs),
        rank_pattern={m: r for m, r in ranks.items() if r != top},
        alpha_pattern={m: folded_alpha(r, rs) for m, r in ranks.items() if r != top},
        use_rslora=rs, use_dora=adapter.use_dora,
    ), kept
