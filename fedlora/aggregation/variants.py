"""What PEFT's two LoRA variants, rsLoRA and DoRA, change for the server (torch only, no PEFT).

rsLoRA (``lora.use_rslora``, Kalajdzievski, arXiv:2312.03732) only changes the scaling PEFT
applies to ``B @ A``: ``alpha / sqrt(r)`` instead of ``alpha / r``. Every aggregator weighs a
client's factors by its *real* scaling (:func:`lora_scaling`, via ``ClientSpec.scaling``), so the
exact strategies stay exact with mixed ranks, and the folded-scaling global adapters pick the
alpha that makes PEFT's scaling 1 under either rule (:func:`folded_alpha`).

DoRA (``lora.use_dora``, Liu et al., arXiv:2402.09353) adds a magnitude vector
``m = ||W0 + s B A||_col`` per module (PEFT key ``<module>.lora_magnitude_vector``). It travels
with the extras and is averaged with the clients' weights p_k; a strategy whose global adapter
gives the magnitudes no single direction to belong to says why in ``Aggregator.refuses_dora``,
and the config check refuses the combination (``registry.dora_problem``).
"""

from __future__ import annotations

import math

from fedlora.lora.keys import LoraState, lora_modules, m_key, magnitude_keys


def lora_scaling(alpha: float, rank: int, use_rslora: bool) -> float:
    """PEFT's scaling of a LoRA module: ``alpha / sqrt(rank)`` with rsLoRA, else ``alpha / rank``
    (``LoraLayer.update_layer``, with ``alpha``/``rank`` taken from the patterns per module)."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def folded_alpha(rank: int, use_rslora: bool) -> float:
    """The alpha that makes :func:`lora_scaling` exactly 1 at ``rank``: ``rank``, or ``sqrt(rank)``
    with rsLoRA (``math.sqrt(r) / math.sqrt(r)`` is exactly 1.0 in IEEE arithmetic, as PEFT
    computes it).

    Strategies whose global update keeps the scaling folded into B export it with this alpha per
    module, so the exported adapter keeps the run's ``use_rslora`` and still applies ``B @ A`` as is.
    """
    return math.sqrt(rank) if use_rslora else float(rank)


def magnitude_problem(state: LoraState, use_dora: bool) -> str:
    """Why ``state`` does not fit ``use_dora`` (every module needs a magnitude, or none may have
    one), or ``""``."""
    if not use_dora:
        return "it holds DoRA magnitudes but lora.use_dora is off" if magnitude_keys(state) else ""
    missing = [m for m in lora_modules(state) if m_key(m) not in state]
    if missing:
        return (f"lora.use_dora is on but it has no lora_magnitude_vector for {len(missing)} module(s), "
                f"e.g. {missing[:3]}")
    return ""
