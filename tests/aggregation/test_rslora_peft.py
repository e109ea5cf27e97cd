"""rsLoRA against PEFT itself: exact strategies' global adapters, loaded by PEFT with
``use_rslora=True`` and their rank/alpha patterns, apply ``sum_k p_k get_delta_weight_k``.

PEFT computes each client's delta with its own ``alpha / sqrt(r_k)`` (and transposes for GPT-2's
``Conv1D``, ``fan_in_fan_out``), so this checks both the aggregation and that PEFT 0.21 applies
``use_rslora`` per module with ``alpha_pattern`` the way the folded-scaling adapters assume
(alpha_m = sqrt(r_m) gives scaling 1).
"""

import math

import pytest

from fedlora.aggregation import ClientSpec, ClientUpdate, GlobalAdapter, get_aggregator
from fedlora.lora.init import initial_state
from fedlora.lora.state import expected_shapes, set_lora_state
from tests.aggregation.gpt2_lora import delta_weights, gpt2_lora
from tests.conftest import random_state

ALPHA = 16.0
RANKS, COUNTS = [2, 4, 8], [10, 30, 60]


def _deltas(state: dict, rank: int, alpha: float, rank_pattern=None, alpha_pattern=None) -> dict:
    from peft.tuners.lora import LoraLayer

    model = gpt2_lora(rank, alpha, rank_pattern, alpha_pattern, use_rslora=True)
    set_lora_state(model, state)
    for mod in model.modules():
        if isinstance(mod, LoraLayer):
            assert mod.scaling["default"] == mod.lora_alpha["default"] / math.sqrt(mod.r["default"])  # rsLoRA
    return delta_weights(model)


@pytest.mark.parametrize("name", ["ffa", "flora", "flexlora"])
def test_exact_strategy_matches_peft_rslora_delta_weights(name):
    r_max = max(RANKS)
    shapes = expected_shapes(gpt2_lora(r_max, ALPHA, use_rslora=True))
    initial = {k: v.double() for k, v in initial_state(shapes, seed=3).items()}
    agg = get_aggregator(name)(alpha=ALPHA, use_rslora=True)
    agg.init_state(GlobalAdapter(initial, r_max, ALPHA, use_rslora=True))
    agg.begin_round(1)
    before = agg.global_adapter()
    updates, client_deltas = [], []
    for i, (r, n) in enumerate(zip(RANKS, COUNTS, strict=True)):
        spec = ClientSpec(f"c{i}", r, ALPHA, use_rslora=True)
        template = agg.reply_template(spec, agg.payload(spec))
        reply = random_state({k: tuple(v.shape) for k, v in template.items()}, seed=40 + i)
        updates.append(ClientUpdate(spec, reply, n))
        full = {**reply, **agg.shared_a(r)} if name == "ffa" else reply
        client_deltas.append(_deltas(full, r, ALPHA))
    agg.aggregate(updates)
    p = [n / sum(COUNTS) for n in COUNTS]
    ga = agg.global_adapter()
    assert ga.use_rslora
    if name != "ffa":  # folded: PEFT must see alpha_m = sqrt(r_m) for every module
        ranks = {m: ga.rank_pattern.get(m, ga.rank) for m in ga.rank_pattern}
        assert ranks and all(ga.alpha_pattern[m] == math.sqrt(r) for m, r in ranks.items())
    got = _deltas(ga.state, ga.rank, ga.alpha, ga.rank_pattern, ga.alpha_pattern)
    start = _deltas(before.state, before.rank, before.alpha, before.rank_pattern, before.alpha_pattern)
    assert set(got) == set(client_deltas[0]) and len(got) == 2
    for module in got:
        expected = sum(pk * d[module] for pk, d in zip(p, client_deltas, strict=True))
        increment = got[module] - start[module]
        assert float((increment - expected).norm() / expected.norm()) <= 1e-5
