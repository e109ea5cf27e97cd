"""FFA-LoRA: exact against a dense oracle with the shared A, no A on the wire, half of FedIT's upload."""

import pytest
import torch

from fedlora.aggregation import ClientSpec
from fedlora.lora.init import state_hash
from tests.aggregation.mixed import (
    ALPHA,
    HEAD,
    MODULES,
    R_MAX,
    dense_global,
    dense_oracle,
    initial,
    make,
    rel,
    replies,
    weights,
)


def test_ffa_global_update_equals_dense_oracle_with_mixed_ranks():
    agg = make("ffa")
    shared = {m: initial().state[f"{m}.lora_A.weight"] for m in MODULES}
    rounds = [([4, 8, 16], [10, 30, 60]), ([16, 4, 4, 8], [7, 1, 3, 5])]
    for rnd, (ranks, counts) in enumerate(rounds, start=1):
        agg.begin_round(rnd)
        updates = replies(agg, ranks, counts, seed=10 * rnd)
        metrics = agg.aggregate(updates)
        got = dense_global(agg)
        for m in MODULES:
            assert rel(got[m], dense_oracle(updates, m, shared[m])) <= 1e-5
        assert metrics["agg-rel-error"] < 1e-7  # float64 Gram norms: exact up to sqrt(eps64) round-off
        p = weights(updates)
        expected_head = sum(pk * u.state[HEAD] for pk, u in zip(p, updates, strict=True))
        torch.testing.assert_close(agg.global_adapter().state[HEAD], expected_head)


def test_ffa_payloads_carry_no_a_and_a_never_changes():
    agg = make("ffa")
    a0 = {m: initial().state[f"{m}.lora_A.weight"] for m in MODULES}
    for rnd in (1, 2, 3):
        agg.begin_round(rnd)
        for r in (4, 8, 16):
            spec = ClientSpec(f"c{r}", r, ALPHA)
            payload = agg.payload(spec)
            assert not any(k.endswith("lora_A.weight") for k in payload)
            assert set(agg.reply_template(spec, payload)) == {f"{m}.lora_B.weight" for m in MODULES} | {HEAD}
            assert all(payload[f"{m}.lora_B.weight"].shape == (MODULES[m][0], r) for m in MODULES)
            for m in MODULES:  # the A a rank-r client trains against is the initial A's first r rows
                assert torch.equal(agg.shared_a(r)[f"{m}.lora_A.weight"], a0[m][:r])
        agg.aggregate(replies(agg, [4, 8, 16], [1, 2, 3], seed=rnd))
        for m in MODULES:
            assert torch.equal(agg.global_adapter().state[f"{m}.lora_A.weight"], a0[m])


def test_ffa_payload_start_update_is_the_global_restricted_to_the_client_slots():
    agg = make("ffa")
    agg.aggregate(replies(agg, [4, 8, 16], [1, 2, 3], seed=5))
    agg.begin_round(2)
    g = dense_global(agg)
    state = agg.global_adapter().state
    errors = []
    for r in (16, 4):
        payload = agg.payload(ClientSpec("x", r, ALPHA))
        for m in MODULES:
            start = (ALPHA / r) * payload[f"{m}.lora_B.weight"] @ state[f"{m}.lora_A.weight"][:r]
            if r == R_MAX:
                torch.testing.assert_close(start, g[m])
            errors.append(rel(start, g[m]))
    metrics = agg.payload_metrics()
    assert metrics["trunc-rel-error-max"] == pytest.approx(max(errors), rel=1e-9)
    assert metrics["trunc-rel-error-mean"] == pytest.approx(sum(errors) / len(errors), rel=1e-9)
    agg.begin_round(3)
    assert agg.payload_metrics() == {}


def test_ffa_a_hash_is_the_hash_of_the_initial_a_rows():
    agg = make("ffa")
    init = initial().state
    for r in (4, 16):
        rows = {f"{m}.lora_A.weight": init[f"{m}.lora_A.weight"][:r] for m in MODULES}
        assert agg.a_hash(r) == state_hash(rows)
        # a client holding the float32 draw reports the same hash
        assert agg.a_hash(r) == state_hash({k: v.float() for k, v in rows.items()})
    assert agg.a_hash(4) != agg.a_hash(8)
    other = make("ffa")
    other.init_state(initial(seed=1))
    assert other.a_hash(4) != agg.a_hash(4)
    assert 0 <= agg.a_hash(4) < 2**53
    with pytest.raises(ValueError, match="a_hash rank"):
        agg.a_hash(R_MAX + 1)


def test_ffa_uploads_half_of_fedit_for_square_modules():
    square = {"m.q": (16, 16), "m.v": (16, 16)}
    spec = ClientSpec("c", 16, ALPHA)

    def upload_bytes(name: str) -> int:
        agg = make(name, head=False, modules=square)
        return sum(t.numel() * 4 for t in agg.reply_template(spec, agg.payload(spec)).values())

    assert upload_bytes("ffa") * 2 == upload_bytes("fedit")


def test_ffa_refuses_a_rank_above_the_shared_a():
    with pytest.raises(ValueError, match="shared A has 16 rows"):
        make("ffa").payload(ClientSpec("big", 32, ALPHA))
