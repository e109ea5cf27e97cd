"""Properties every mixed-rank strategy shares: any ranks and subsets, no mutation, exact resume."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fedlora.aggregation import AGGREGATORS, ClientSpec, ClientUpdate, get_aggregator
from tests.aggregation.mixed import ALPHA, MODULES, dense_global, dense_oracle, initial, make, rel, replies

MIXED = ["ffa", "flora", "flexlora", "hetlora"]
KWARGS = {"ffa": {}, "flora": {"rank_cap": 20}, "flexlora": {}, "hetlora": {"norm_weighted": True}}
ROUNDS = [([4, 8, 16], [10, 30, 60]), ([4], [5]), ([16, 16], [1, 2]), ([8, 4, 16, 4], [3, 1, 4, 1])]


def test_every_strategy_is_registered_with_its_contract():
    assert {"fedit", *MIXED} <= set(AGGREGATORS)
    assert all(AGGREGATORS[n].accepts_mixed_ranks for n in MIXED)
    assert {n: AGGREGATORS[n].exact for n in MIXED} == {"ffa": True, "flora": True, "flexlora": True,
                                                        "hetlora": False}
    assert AGGREGATORS["ffa"].freeze_a and not any(AGGREGATORS[n].freeze_a for n in MIXED[1:])


@pytest.mark.parametrize("name", MIXED)
def test_any_multiset_of_ranks_and_any_subset_of_clients(name):
    agg = make(name)
    shared = {m: initial().state[f"{m}.lora_A.weight"] for m in MODULES}
    for rnd, (ranks, counts) in enumerate(ROUNDS, start=1):
        agg.begin_round(rnd)
        before = dense_global(agg)
        updates = replies(agg, ranks, counts, seed=rnd, ids=[f"c{r}-{i}" for i, r in enumerate(ranks)])
        metrics = agg.aggregate(updates)
        assert all(isinstance(v, float) for v in metrics.values())
        assert "agg-rel-error" in metrics
        if AGGREGATORS[name].exact:
            after = dense_global(agg)
            for m in MODULES:
                got = after[m] - before[m] if name == "flora" else after[m]
                oracle = dense_oracle(updates, m, shared[m] if name == "ffa" else None)
                assert rel(got, oracle) <= 1e-5


@pytest.mark.parametrize("name", ["ffa", "flora", "flexlora"])
def test_exact_strategies_in_float32_stay_within_1e_4(name):
    agg = get_aggregator(name)(alpha=ALPHA)
    init = initial()
    agg.init_state(type(init)({k: v.float() for k, v in init.state.items()}, init.rank, init.alpha))
    shared = {m: init.state[f"{m}.lora_A.weight"].float() for m in MODULES}
    for rnd, (ranks, counts) in enumerate(ROUNDS[:2], start=1):
        agg.begin_round(rnd)
        before = dense_global(agg)
        updates = replies(agg, ranks, counts, seed=rnd, dtype=torch.float32)
        metrics = agg.aggregate(updates)
        after = dense_global(agg)
        assert all(t.dtype == torch.float32 for t in agg.global_adapter().state.values())
        as64 = [ClientUpdate(u.spec, {k: v.double() for k, v in u.state.items()}, u.num_examples)
                for u in updates]
        for m in MODULES:
            got = after[m] - before[m] if name == "flora" else after[m]
            oracle = dense_oracle(as64, m, shared[m].double() if name == "ffa" else None)
            assert rel(got.double(), oracle) <= 1e-4
        assert metrics["agg-rel-error"] <= 1e-4


@pytest.mark.parametrize("name", ["fedit", *MIXED])
def test_inputs_are_never_mutated_and_outputs_are_copies(name):
    """Every strategy: aggregate leaves its inputs alone, and what payload, frozen, global_adapter
    and state_dict return are copies (a caller scribbling on them must not reach the global state)."""
    init = initial()
    init_copy = {k: v.clone() for k, v in init.state.items()}
    agg = get_aggregator(name)(alpha=ALPHA)
    agg.init_state(init)
    ranks = [16, 16, 16] if name == "fedit" else [4, 8, 16]  # fedit: one rank for all
    updates = replies(agg, ranks, [1, 2, 3], seed=9)
    copies = [{k: v.clone() for k, v in u.state.items()} for u in updates]
    agg.aggregate(updates)
    for u, c in zip(updates, copies, strict=True):
        assert all(torch.equal(u.state[k], v) for k, v in c.items())
    before = {k: v.clone() for k, v in agg.state_dict().items()}
    spec = ClientSpec("c", ranks[1], ALPHA)
    outputs = {"payload": agg.payload(spec), "frozen": agg.frozen(spec) or {},
               "global_adapter": agg.global_adapter().state, "state_dict": agg.state_dict()}
    for method, out in outputs.items():
        for t in out.values():
            if t.is_floating_point():
                t.add_(1.0)
        after = agg.state_dict()
        assert all(torch.equal(after[k], v) for k, v in before.items()), f"{name}.{method} shares tensors"
    agg.aggregate(replies(agg, [ranks[1]], [1], seed=3))
    assert all(torch.equal(init.state[k], v) for k, v in init_copy.items())


def _snapshot(agg, specs):
    out = {}
    for spec in specs:
        payload = agg.payload(spec)
        out.update({f"payload/{spec.client_id}/{k}": v for k, v in payload.items()})
        frozen = agg.frozen(spec) or {}
        out.update({f"frozen/{spec.client_id}/{k}": v for k, v in frozen.items()})
    adapter = agg.global_adapter()
    out.update({f"global/{k}": v for k, v in adapter.state.items()})
    return out, (adapter.rank, adapter.alpha, adapter.rank_pattern, adapter.alpha_pattern)


@pytest.mark.parametrize("name", MIXED)
def test_state_dict_round_trips_through_safetensors(name, tmp_path: Path):
    agg = make(name, **KWARGS[name])
    for rnd, (ranks, counts) in enumerate(ROUNDS[:2], start=1):
        agg.begin_round(rnd)
        agg.aggregate(replies(agg, ranks, counts, seed=rnd))
    agg.begin_round(3)
    path = tmp_path / "global.safetensors"
    save_file({k: v.contiguous() for k, v in agg.state_dict().items()}, str(path))
    restored = get_aggregator(name)(alpha=ALPHA, **KWARGS[name])
    restored.load_state_dict(load_file(str(path)))  # no init_state: the checkpoint is the whole state
    specs = [ClientSpec(f"c{r}", r, ALPHA) for r in (4, 8, 16)]
    want, want_meta = _snapshot(agg, specs)
    got, got_meta = _snapshot(restored, specs)
    assert want_meta == got_meta
    assert set(want) == set(got) and all(torch.equal(want[k], got[k]) for k in want)
    # and both continue identically
    updates = replies(agg, [16, 4], [2, 1], seed=50)
    assert agg.aggregate(updates) == restored.aggregate(updates)
    want_state, got_state = agg.state_dict(), restored.state_dict()
    assert set(want_state) == set(got_state)
    assert all(torch.equal(v, got_state[k]) for k, v in want_state.items())
    if name == "ffa":
        assert restored.a_hash(8) == agg.a_hash(8)


@pytest.mark.parametrize("name", MIXED)
def test_load_state_dict_after_init_state_replaces_it(name):
    agg = make(name, **KWARGS[name])
    agg.aggregate(replies(agg, [4, 16], [1, 1], seed=1))
    other = make(name, **KWARGS[name])  # what resume does: init_state first, then the checkpoint
    other.load_state_dict(agg.state_dict())
    for k, v in agg.global_adapter().state.items():
        assert torch.equal(other.global_adapter().state[k], v)
