"""DoRA (``lora.use_dora``): magnitude vectors travel down and up, are averaged with p_k, and survive
checkpoints; strategies that cannot support DoRA refuse it at config time with their reason.

The expected global magnitude is computed here by hand, ``sum_k p_k m_k`` in float64; the LoRA
factors of a DoRA run must aggregate exactly as they do without DoRA.
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fedlora.aggregation import AGGREGATORS, ClientSpec, ClientUpdate, GlobalAdapter, get_aggregator
from fedlora.config import compose
from fedlora.config.load import ConfigError
from fedlora.lora.init import initial_state
from fedlora.lora.keys import magnitude_keys
from tests.aggregation.mixed import ALPHA, MODULES, shapes_at
from tests.conftest import random_state

R_MAX = 8
ALLOWED = ["fedit", "ffa", "flexlora", "hetlora"]
RANKS = {"fedit": [8, 8, 8], "ffa": [2, 4, 8], "flexlora": [2, 4, 8], "hetlora": [2, 4, 8]}
COUNTS = [10, 30, 60]
M = {m: f"{m}.lora_magnitude_vector" for m in MODULES}


def _shapes() -> dict:
    return {**shapes_at(R_MAX), **{M[m]: (out,) for m, (out, _) in MODULES.items()}}


def _initial(dora: bool = True) -> GlobalAdapter:
    shapes = _shapes()
    mags = {k: 0.5 + torch.rand(s, generator=torch.Generator().manual_seed(1)) for k, s in shapes.items()
            if k.endswith("magnitude_vector")}
    state = {k: v.double() for k, v in initial_state(shapes, 0, mags if dora else None).items()}
    return GlobalAdapter(state, R_MAX, ALPHA, use_dora=dora)


def _make(name: str, dora: bool = True):
    agg = get_aggregator(name)(alpha=ALPHA, use_dora=dora)
    agg.init_state(_initial(dora))
    return agg


def _replies(agg, ranks, seed) -> list[ClientUpdate]:
    out = []
    for i, (r, n) in enumerate(zip(ranks, COUNTS, strict=True)):
        spec = ClientSpec(f"c{i}", r, ALPHA)
        template = agg.reply_template(spec, agg.payload(spec))
        shapes = {k: tuple(v.shape) for k, v in template.items()}
        out.append(ClientUpdate(spec, random_state(shapes, seed + i), n))
    return out


@pytest.mark.parametrize("name", ALLOWED)
def test_magnitudes_travel_and_are_averaged_with_the_client_weights(name):
    agg = _make(name)
    init = _initial()
    for rank in sorted(set(RANKS[name])):  # every payload carries the global magnitudes, whatever the rank
        payload = agg.payload(ClientSpec("x", rank, ALPHA))
        assert sorted(magnitude_keys(payload)) == sorted(M.values())
        assert all(torch.equal(payload[M[m]], init.state[M[m]]) for m in MODULES)
    updates = _replies(agg, RANKS[name], seed=20)
    assert all(set(M.values()) <= set(u.state) for u in updates)  # the reply template asks for them back
    metrics = agg.aggregate(updates)
    ga = agg.global_adapter()
    assert ga.use_dora
    p = [n / sum(COUNTS) for n in COUNTS]
    for m in MODULES:
        want = sum(pk * u.state[M[m]] for pk, u in zip(p, updates, strict=True))
        torch.testing.assert_close(ga.state[M[m]], want, rtol=1e-12, atol=0)
        torch.testing.assert_close(agg.payload(ClientSpec("y", RANKS[name][0], ALPHA))[M[m]], want,
                                   rtol=1e-12, atol=0)
    # the factors aggregate exactly as without DoRA (same replies, magnitudes removed)
    plain = _make(name, dora=False)
    no_m = [ClientUpdate(u.spec, {k: v for k, v in u.state.items() if k not in M.values()}, u.num_examples)
            for u in updates]
    assert plain.aggregate(no_m) == metrics
    plain_state = plain.global_adapter().state
    assert set(plain_state) == set(ga.state) - set(M.values())
    assert all(torch.equal(plain_state[k], ga.state[k]) for k in plain_state)


@pytest.mark.parametrize("name", ALLOWED)
def test_magnitudes_survive_a_checkpoint(name, tmp_path: Path):
    agg = _make(name)
    agg.aggregate(_replies(agg, RANKS[name], seed=30))
    path = tmp_path / "ckpt.safetensors"
    save_file({k: v.contiguous() for k, v in agg.state_dict().items()}, str(path))
    restored = get_aggregator(name)(alpha=ALPHA, use_dora=True)
    restored.load_state_dict(load_file(str(path)))
    want, got = agg.global_adapter(), restored.global_adapter()
    assert got.use_dora and set(got.state) == set(want.state)
    assert all(torch.equal(got.state[k], want.state[k]) for k in M.values())


def test_flora_refuses_dora_with_its_reason():
    assert AGGREGATORS["flora"].refuses_dora and not any(AGGREGATORS[n].refuses_dora for n in ALLOWED)
    with pytest.raises(ValueError, match=r"strategy 'flora' does not support DoRA: .*frozen adapter"):
        get_aggregator("flora")(alpha=ALPHA, use_dora=True)


def test_an_initial_adapter_that_does_not_fit_dora_is_refused():
    init = _initial()
    no_m = GlobalAdapter({k: v for k, v in init.state.items() if k not in M.values()}, R_MAX, ALPHA,
                         use_dora=True)
    with pytest.raises(ValueError, match="no lora_magnitude_vector for 2 module"):
        get_aggregator("fedit")(alpha=ALPHA, use_dora=True).init_state(no_m)
    stray = GlobalAdapter(init.state, R_MAX, ALPHA)  # magnitudes, but the run is plain LoRA
    with pytest.raises(ValueError, match="use_dora=False but the aggregator was built with use_dora=True"):
        get_aggregator("ffa")(alpha=ALPHA, use_dora=True).init_state(stray)
    with pytest.raises(ValueError, match=r"holds DoRA magnitudes but lora\.use_dora is off"):
        get_aggregator("ffa")(alpha=ALPHA).init_state(stray)


def test_config_check_refuses_dora_where_it_cannot_run():
    with pytest.raises(ConfigError) as err:
        compose(["preset=smoke_llm", "strategy=flora", "lora.use_dora=true", "federation.central_eval=false"])
    problems = err.value.problems
    assert any(p.startswith("lora.use_dora: strategy 'flora' does not support DoRA") and "'fedit'" in p
               for p in problems), problems
    assert any("federation.central_eval=true" in p for p in problems), problems
    for name in ALLOWED:
        cfg = compose(["preset=smoke_llm", f"strategy={name}", "lora.use_dora=true"])
        assert cfg.lora.use_dora
