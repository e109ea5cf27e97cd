"""PrivacyGuard with real aggregators, without Flower: clipped replies lie inside the bound in the
space each strategy averages (B times s_k where it folds the scaling in), the noise the server adds
to the aggregate has std sigma C / m over exactly the averaged entries, every round reports the
accountant's epsilon, and the ledger is rebuilt from a run's records."""

from __future__ import annotations

import math

import pytest
import torch

from fedlora.aggregation import Aggregator, ClientSpec, ClientUpdate, GlobalAdapter, get_aggregator
from fedlora.config import RunConfig, compose
from fedlora.lora.init import initial_state
from fedlora.lora.keys import LoraState
from fedlora.strategies.privacy_accountant import Accountant
from fedlora.strategies.privacy_guard import PrivacyGuard

ALPHA = 8.0
MODULES = {"m.q": (384, 256), "m.v": (256, 384)}  # (out, in): thousands of noised entries per factor
HEAD = "m.head.weight"
CLIP, SIGMA, DELTA = 0.5, 1.3, 1e-5
# (strategy, global rank, client ranks)
CASES = [("fedit", 8, [8, 8, 8]), ("ffa", 8, [2, 4, 4]), ("hetlora", 8, [2, 4, 4])]


def _cfg(mode: str = "central", seed: int = 0) -> RunConfig:
    """The default federation (10 clients, fraction 0.4: q = 0.4) with this test's DP parameters."""
    return compose([f"privacy={mode}", f"privacy.clipping_norm={CLIP}", f"privacy.noise_multiplier={SIGMA}",
                    f"privacy.delta={DELTA}", f"privacy.noise_seed={seed}"])


def _shapes(rank: int) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {HEAD: (3, 40)}
    for m, (o, i) in MODULES.items():
        out[f"{m}.lora_A.weight"], out[f"{m}.lora_B.weight"] = (rank, i), (o, rank)
    return out


def _aggregator(name: str, rank: int) -> Aggregator:
    agg = get_aggregator(name)(alpha=ALPHA)
    state = {k: v.double() for k, v in initial_state(_shapes(rank), 0).items()}
    agg.init_state(GlobalAdapter(state, rank, ALPHA))
    return agg


def _b_weight(name: str, spec: ClientSpec) -> float:
    """B's weight in the averaged space, from the strategies' docs (not from dp_b_weight)."""
    return ALPHA / spec.rank if name in ("ffa", "hetlora") else 1.0


def _weighted_norm(state: LoraState, start: LoraState, b_weight: float) -> float:
    total = 0.0
    for k, v in state.items():
        w = b_weight if k.endswith(".lora_B.weight") else 1.0
        total += float(((w * (v.double() - start[k].double())) ** 2).sum())
    return math.sqrt(total)


def _averaged_space(agg: Aggregator, name: str) -> LoraState:
    """The global adapter with B times the module's scaling where the strategy averages folded B."""
    g = agg.global_adapter()
    out = {}
    for k, v in g.state.items():
        scale = g.module_scaling(k.rsplit(".lora_B.weight", 1)[0]) if (
            name != "fedit" and k.endswith(".lora_B.weight")) else 1.0
        out[k] = scale * v.double()
    return out


def _round(agg: Aggregator, guard: PrivacyGuard, name: str, ranks: list[int], rnd: int,
           small: int | None = None) -> tuple[list[ClientUpdate], list[float], list[float]]:
    """One round as LoraStrategy runs it: payloads, random replies, clipped by the guard, aggregated.

    Returns the updates and each reply's weighted norm before and after clipping (``small``: that
    client's reply moves by a tiny step, inside the ball)."""
    agg.begin_round(rnd)
    guard.sampled(range(len(ranks)))
    updates, before, after = [], [], []
    for i, r in enumerate(ranks):
        spec = ClientSpec(f"c{i}", r, ALPHA)
        payload = agg.payload(spec)
        gen = torch.Generator().manual_seed(1000 * rnd + i)
        step = 1e-4 if i == small else 0.05
        state = {k: v + step * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in payload.items()}
        w = _b_weight(name, spec)
        assert guard.train_config(agg, spec) == {}  # central: clients get no DP key
        clipped = guard.clip(agg, spec, state, payload)
        before.append(_weighted_norm(state, payload, w))
        after.append(_weighted_norm(clipped, payload, w))
        updates.append(ClientUpdate(spec, clipped, 1))
    agg.aggregate(updates)
    return updates, before, after


@pytest.mark.parametrize(("name", "rank", "ranks"), CASES)
def test_clipped_replies_are_inside_the_bound_in_the_averaged_space(name: str, rank: int, ranks: list[int]):
    agg, guard = _aggregator(name, rank), PrivacyGuard(_cfg())
    _, before, after = _round(agg, guard, name, ranks, 1, small=0)
    assert before[0] < CLIP and all(b > CLIP for b in before[1:])  # one inside the ball, the rest outside
    assert after[0] == pytest.approx(before[0], rel=1e-12)  # unchanged
    for a in after[1:]:
        assert a <= CLIP * (1 + 1e-9) and a == pytest.approx(CLIP, rel=1e-9)


@pytest.mark.parametrize(("name", "rank", "ranks"), CASES)
def test_central_noise_has_std_sigma_c_over_m_on_the_averaged_entries(name: str, rank: int, ranks: list[int]):
    agg, guard = _aggregator(name, rank), PrivacyGuard(_cfg())
    updates, before, _ = _round(agg, guard, name, ranks, 1, small=0)
    exact = _averaged_space(agg, name)
    metrics = guard.add_noise(agg, updates, 1)
    noisy = _averaged_space(agg, name)
    std = SIGMA * CLIP / len(updates)

    held = max(ranks)
    noise: list[torch.Tensor] = []
    for k in exact:
        d = noisy[k] - exact[k]
        if k.endswith(".lora_B.weight") and name != "fedit":
            noise.append(d[:, :held].flatten())
            assert torch.equal(d[:, held:], torch.zeros_like(d[:, held:])), k  # no client held these slots
        elif k.endswith(".lora_A.weight") and name == "ffa":
            assert torch.equal(d, torch.zeros_like(d)), k  # the shared A is data-independent: exact
        elif k.endswith(".lora_A.weight") and name == "hetlora":
            noise.append(d[:held].flatten())
            assert torch.equal(d[held:], torch.zeros_like(d[held:])), k
        else:
            noise.append(d.flatten())
    flat = torch.cat(noise)
    n = flat.numel()
    assert n > 2000
    assert abs(float(flat.std()) - std) <= 5 * std / math.sqrt(2 * n)
    assert abs(float(flat.mean())) <= 5 * std / math.sqrt(n)

    assert metrics["dp_noise_std"] == pytest.approx(std)
    assert metrics["dp_epsilon"] == pytest.approx(Accountant("central", SIGMA, DELTA, 4, 10).epsilon_after(1))
    assert metrics["dp_delta"] == DELTA and metrics["dp_releases"] == 1
    assert metrics["dp_clipped_fraction"] == pytest.approx(2 / 3)
    assert metrics["dp_update_norm_mean"] == pytest.approx(sum(before) / len(before), rel=1e-9)


@pytest.mark.parametrize(("name", "rank", "ranks"), CASES)
def test_second_round_reports_two_releases_and_draws_new_noise(name: str, rank: int, ranks: list[int]):
    agg, guard = _aggregator(name, rank), PrivacyGuard(_cfg())
    first = guard.add_noise(agg, _round(agg, guard, name, ranks, 1)[0], 1)
    updates = _round(agg, guard, name, ranks, 2)[0]
    exact = _averaged_space(agg, name)
    second = guard.add_noise(agg, updates, 2)
    acc = Accountant("central", SIGMA, DELTA, 4, 10)
    assert first["dp_epsilon"] == pytest.approx(acc.epsilon_after(1))
    assert second["dp_epsilon"] == pytest.approx(acc.epsilon_after(2)) and second["dp_releases"] == 2
    assert second["dp_epsilon"] > first["dp_epsilon"]
    assert guard.epsilon() == pytest.approx(acc.epsilon_after(2))
    assert guard.summary()["epsilon"] == pytest.approx(acc.epsilon_after(2))
    assert guard.summary()["sampling_rate"] == pytest.approx(0.4)

    # the same seed and round give the same noise; another round another draw
    noise2 = {k: v - exact[k] for k, v in _averaged_space(agg, name).items()}
    twin, twin_guard = _aggregator(name, rank), PrivacyGuard(_cfg())
    twin_guard.add_noise(twin, _round(twin, twin_guard, name, ranks, 1)[0], 1)
    twin_updates = _round(twin, twin_guard, name, ranks, 2)[0]
    twin_exact = _averaged_space(twin, name)
    twin_guard.add_noise(twin, twin_updates, 2)
    twin_noise2 = {k: v - twin_exact[k] for k, v in _averaged_space(twin, name).items()}
    for k in noise2:
        torch.testing.assert_close(noise2[k], twin_noise2[k], rtol=0, atol=1e-12)


def test_local_mode_leaves_the_aggregate_alone_and_counts_participations():
    agg = _aggregator("ffa", 8)
    guard = PrivacyGuard(_cfg("local"))
    spec = ClientSpec("c0", 4, ALPHA)
    assert guard.train_config(agg, spec) == {"dp-b-weight": pytest.approx(ALPHA / 4)}
    payload = agg.payload(spec)
    state = {k: v + 1.0 for k, v in payload.items()}  # far outside the ball: the server must not clip
    assert guard.clip(agg, spec, state, payload) is state
    updates = [ClientUpdate(spec, state, 1)]
    guard.sampled([0, 3, 5])
    agg.aggregate(updates)
    before = {k: v.clone() for k, v in agg.state_dict().items()}
    metrics = guard.add_noise(agg, updates, 1)
    assert all(torch.equal(before[k], v) for k, v in agg.state_dict().items())
    assert "dp_noise_std" not in metrics
    acc = Accountant("local", SIGMA, DELTA)
    assert metrics["dp_epsilon"] == pytest.approx(acc.epsilon_after(1)) and metrics["dp_releases"] == 1
    guard.sampled([0, 4])
    second = guard.add_noise(agg, updates, 2)
    assert second["dp_epsilon"] == pytest.approx(acc.epsilon_after(2))  # client 0 released twice
    assert guard.releases() == 2


def test_strategies_without_a_noise_rule_refuse_central_noise():
    agg = get_aggregator("flexlora")(alpha=ALPHA)
    with pytest.raises(NotImplementedError, match="flexlora"):
        agg.add_dp_noise([], 1.0, torch.Generator())


def test_rounds_allowed_follows_the_target():
    acc = Accountant("central", SIGMA, DELTA, 4, 10)
    target = (acc.epsilon_after(3) + acc.epsilon_after(4)) / 2
    cfg = compose(["privacy=central", f"privacy.noise_multiplier={SIGMA}", f"privacy.delta={DELTA}",
                   f"privacy.target_epsilon={target}"])
    assert PrivacyGuard(cfg).rounds_allowed(10) == 3
    assert PrivacyGuard(cfg).rounds_allowed(2) == 2
    assert PrivacyGuard(_cfg()).rounds_allowed(7) == 7  # no target


def test_restore_rebuilds_central_releases_from_metric_rows():
    guard = PrivacyGuard(_cfg())
    rows = [{"round": 0}, {"round": 1, "dp_noise_std": 0.2, "dp_epsilon": 1.0},
            {"round": 2, "failed": True}, {"round": 3, "dp_noise_std": 0.2, "dp_epsilon": 2.0}]
    clients = [{"stage": "train", "round": 1, "partition_id": 0}]
    guard.restore(rows, clients, [])
    assert guard.noised_rounds == 2 and guard.releases() == 2
    assert guard.epsilon() == pytest.approx(Accountant("central", SIGMA, DELTA, 4, 10).epsilon_after(2))


def test_restore_rebuilds_local_participations_from_train_replies():
    guard = PrivacyGuard(_cfg("local"))
    clients = [{"stage": "train", "round": 1, "partition_id": 0},
               {"stage": "train", "round": 1, "partition_id": 1},
               {"stage": "evaluate", "round": 1, "partition_id": 1},  # evaluation releases nothing
               {"stage": "train", "round": 2, "partition_id": 1}]
    rejected = [{"stage": "train", "round": 3, "partition_id": 1},  # sampled and released, then rejected
                {"stage": "train", "round": 3, "partition_id": None},  # a reply from an unknown node
                {"stage": "evaluate", "round": 3, "partition_id": 0}]
    guard.restore([{"round": 1}, {"round": 2}, {"round": 3}], clients, rejected)
    assert dict(guard.participations) == {0: 1, 1: 3}
    assert guard.releases() == 3
    assert guard.epsilon() == pytest.approx(Accountant("local", SIGMA, DELTA).epsilon_after(3))


def test_a_round_that_samples_more_than_assumed_raises_the_accounted_rate_and_a_resume_keeps_it():
    """Nodes went away: 3 of 3 sampled against the assumed 4 of 10. The epsilon must be the one at
    q = 1 from then on (never understated), and a resume from the rows must account at q = 1 too."""
    agg, guard = _aggregator("fedit", 8), PrivacyGuard(_cfg(), num_nodes=10)
    assert guard.accountant.sampling_rate == pytest.approx(0.4)
    guard.sampled([0, 1, 2], pool=3)
    spec = ClientSpec("c0", 8, ALPHA)
    payload = agg.payload(spec)
    updates = [ClientUpdate(spec, guard.clip(agg, spec, payload, payload), 1)]
    agg.aggregate(updates)
    metrics = guard.add_noise(agg, updates, 1)
    assert metrics["dp_sampling_rate"] == 1.0
    assert metrics["dp_epsilon"] == pytest.approx(Accountant("central", SIGMA, DELTA, 3, 3).epsilon_after(1))
    assert metrics["dp_epsilon"] > Accountant("central", SIGMA, DELTA, 4, 10).epsilon_after(1)
    resumed = PrivacyGuard(_cfg(), num_nodes=10)
    resumed.restore([{"round": 1, **metrics}], [], [])
    assert resumed.epsilon() == pytest.approx(metrics["dp_epsilon"])


def test_the_accounted_rate_comes_from_the_discovered_nodes():
    """5 nodes with fraction 0.4: ceil(2) = 2 of 5 sampled, q = 0.4; 3 nodes: max(ceil(1.2), 2) = 2 of 3."""
    assert PrivacyGuard(_cfg(), num_nodes=5).accountant.sampling_rate == pytest.approx(0.4)
    assert PrivacyGuard(_cfg(), num_nodes=3).accountant.sampling_rate == pytest.approx(2 / 3)
