"""Exact strategies against PEFT's own delta weights on GPT-2 ``Conv1D`` (fan_in_fan_out) layers.

Each client's adapter is loaded into a PEFT model at its rank; ``sum_k p_k get_delta_weight_k``
(PEFT transposes for fan_in_fan_out and applies alpha / r) must equal the delta weight of the
aggregated global adapter loaded into a PEFT model with its rank/alpha patterns.
"""


import pytest
import torch

from fedlora.aggregation import ClientSpec, ClientUpdate, GlobalAdapter, get_aggregator
from fedlora.lora.init import initial_state
from fedlora.lora.state import expected_shapes, set_lora_state
from tests.aggregation.gpt2_lora import delta_weights, gpt2_lora
from tests.conftest import random_state

ALPHA = 16.0
RANKS, COUNTS = [4, 8, 16], [10, 30, 60]


def _delta_of(adapter_state: dict, rank: int, alpha: float, rank_pattern=None, alpha_pattern=None):
    model = gpt2_lora(rank, alpha, rank_pattern, alpha_pattern)
    set_lora_state(model, adapter_state)
    return delta_weights(model)


@pytest.mark.parametrize("name", ["ffa", "flora", "flexlora"])
def test_exact_strategy_matches_peft_delta_weights_on_gpt2_conv1d(name):
    r_max = max(RANKS)
    shapes = expected_shapes(gpt2_lora(r_max, ALPHA))
    assert any(".attn.c_attn.lora_A.weight" in k for k in shapes)
    initial = {k: v.double() for k, v in initial_state(shapes, seed=3).items()}
    agg = get_aggregator(name)(alpha=ALPHA)
    agg.init_state(GlobalAdapter(initial, r_max, ALPHA))
    agg.begin_round(1)
    before = agg.global_adapter()
    updates, client_deltas = [], []
    for i, (r, n) in enumerate(zip(RANKS, COUNTS, strict=True)):
        spec = ClientSpec(f"c{i}", r, ALPHA)
        template = agg.reply_template(spec, agg.payload(spec))
        reply = random_state({k: tuple(v.shape) for k, v in template.items()}, seed=40 + i)
        updates.append(ClientUpdate(spec, reply, n))
        full = {**reply, **agg.shared_a(r)} if name == "ffa" else reply  # ffa: A is the frozen shared draw
        client_deltas.append(_delta_of(full, r, ALPHA))
    agg.aggregate(updates)
    p = [n / sum(COUNTS) for n in COUNTS]
    ga = agg.global_adapter()
    got = _delta_of(ga.state, ga.rank, ga.alpha, ga.rank_pattern, ga.alpha_pattern)
    start = _delta_of(before.state, before.rank, before.alpha, before.rank_pattern, before.alpha_pattern)
    assert set(got) == set(client_deltas[0]) and len(got) == 2
    for module in got:
        expected = sum(pk * d[module] for pk, d in zip(p, client_deltas, strict=True))
        assert expected.shape == (32, 96)  # Conv1D stores (in, out): PEFT's delta is transposed
        increment = got[module] - start[module]  # flora: the round's increment (zero start for all three)
        assert float((increment - expected).norm() / expected.norm()) <= 1e-5
    if name == "flora":  # the frozen adapter the clients load next round carries the same update
        frozen = agg.frozen(ClientSpec("c0", 4, ALPHA))
        ranks = {k.removesuffix(".lora_A.weight"): v.shape[0] for k, v in frozen.items()
                 if k.endswith(".lora_A.weight")}
        folded = _delta_of(frozen, max(ranks.values()), float(max(ranks.values())), ranks,
                           {m: float(r) for m, r in ranks.items()})
        for module in got:
            torch.testing.assert_close(folded[module], got[module])
