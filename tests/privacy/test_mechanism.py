"""The Gaussian mechanism on LoRA updates: clipping bounds the weighted update norm (recomputed here
in float64, without fedlora's norm), keeps the update's direction, and the noise has the configured
standard deviation, within sampling error, on tensors large enough for that to be a sharp check."""

from __future__ import annotations

import math

import pytest
import torch

from fedlora.lora.keys import LoraState
from fedlora.privacy.mechanism import (
    clip_update,
    gaussian_like,
    noise_generator,
    privatize_local,
    update_norm,
)

A, B, HEAD = "m.lora_A.weight", "m.lora_B.weight", "head.weight"
SHAPES = {A: (4, 12), B: (10, 4), HEAD: (3, 10), "n.lora_A.weight": (4, 7), "n.lora_B.weight": (5, 4)}


def _state(seed: int, scale: float = 1.0, dtype: torch.dtype = torch.float32,
           shapes: dict[str, tuple[int, ...]] = SHAPES) -> LoraState:
    gen = torch.Generator().manual_seed(seed)
    return {k: scale * torch.randn(s, generator=gen, dtype=dtype) for k, s in shapes.items()}


def _hand_norm(state: LoraState, start: LoraState, b_weight: float) -> float:
    """Weighted L2 norm of ``state - start`` in float64: B keys times ``b_weight``, all others times 1."""
    total = 0.0
    for key, value in state.items():
        w = b_weight if key.endswith(".lora_B.weight") else 1.0
        d = value.double() - start[key].double()
        total += float(((w * d) ** 2).sum())
    return math.sqrt(total)


def _std_tolerance(sigma: float, n: int, k: float = 5.0) -> float:
    """``k`` standard errors of a sample std of ``n`` Gaussian draws (about sigma / sqrt(2n))."""
    return k * sigma / math.sqrt(2 * n)


@pytest.mark.parametrize("b_weight", [1.0, 2.0, 0.25])
@pytest.mark.parametrize("bound", [0.1, 1.0, 7.5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clipped_update_is_inside_the_ball_and_keeps_its_direction(seed: int, bound: float, b_weight: float):
    start = _state(100 + seed)
    state = _state(200 + seed, scale=3.0)  # norm ~ 3 * sqrt(#entries): well outside every bound here
    before = _hand_norm(state, start, b_weight)
    assert before > bound  # the test means what it says: this update must be clipped

    clipped, norm = clip_update(state, start, bound, b_weight)

    assert norm == pytest.approx(before, rel=1e-9)
    assert update_norm(state, start, b_weight) == pytest.approx(before, rel=1e-9)
    after = _hand_norm(clipped, start, b_weight)
    assert after <= bound * (1 + 1e-6)
    assert after == pytest.approx(bound, rel=1e-5)  # clipping scales onto the sphere, not inside it
    # a positive multiple of the original update, the same factor for every key (direction kept)
    factor = bound / before
    for key in state:
        assert clipped[key].dtype == state[key].dtype
        want = (state[key].double() - start[key].double()) * factor
        got = clipped[key].double() - start[key].double()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("b_weight", [1.0, 4.0])
def test_update_inside_the_ball_is_returned_unchanged(b_weight: float):
    start = _state(3)
    state = {k: v + 1e-3 * torch.ones_like(v) for k, v in start.items()}
    norm = _hand_norm(state, start, b_weight)
    assert norm < 1.0

    clipped, reported = clip_update(state, start, 1.0, b_weight)

    assert reported == pytest.approx(norm, rel=1e-9)
    for key in state:
        assert torch.equal(clipped[key], state[key])
        assert clipped[key].data_ptr() != state[key].data_ptr()  # a copy, not the caller's tensor


def test_b_weight_counts_only_b_in_the_norm():
    start = {A: torch.zeros(2, 2), B: torch.zeros(2, 2), HEAD: torch.zeros(2)}
    state = {A: torch.full((2, 2), 1.0), B: torch.full((2, 2), 1.0), HEAD: torch.full((2,), 1.0)}
    # A: 4 entries of 1, B: 4 entries of 1 weighted 3 (36), head: 2 entries of 1
    assert update_norm(state, start, 3.0) == pytest.approx(math.sqrt(4 + 36 + 2))
    clipped, _ = clip_update(state, start, 1.0, 3.0)
    assert _hand_norm(clipped, start, 3.0) == pytest.approx(1.0, rel=1e-6)


N_LARGE = 1_000_000


@pytest.mark.parametrize("std", [0.01, 1.0, 3.5])
def test_gaussian_noise_has_the_configured_std_and_zero_mean(std: float):
    noise = gaussian_like(torch.empty(1000, 1000), std, noise_generator(7, "test", std)).double()
    assert noise.shape == (1000, 1000) and noise.dtype == torch.float64
    assert abs(float(noise.std()) - std) <= _std_tolerance(std, N_LARGE)
    assert abs(float(noise.mean())) <= 5 * std / math.sqrt(N_LARGE)


def test_noise_keeps_the_tensor_dtype():
    noise = gaussian_like(torch.empty(10, 10, dtype=torch.bfloat16), 1.0, noise_generator(0))
    assert noise.dtype == torch.bfloat16


def test_seed_and_salt_make_noise_reproducible():
    ref = torch.empty(64, 64)
    first = gaussian_like(ref, 1.0, noise_generator(5, "central", 1))
    again = gaussian_like(ref, 1.0, noise_generator(5, "central", 1))
    other_salt = gaussian_like(ref, 1.0, noise_generator(5, "central", 2))
    other_seed = gaussian_like(ref, 1.0, noise_generator(6, "central", 1))
    assert torch.equal(first, again)
    assert not torch.equal(first, other_salt)
    assert not torch.equal(first, other_seed)


def test_negative_seed_draws_fresh_noise_every_call():
    ref = torch.empty(64, 64)
    draws = [gaussian_like(ref, 1.0, noise_generator(-1, "central", 1)) for _ in range(3)]
    assert not torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[1], draws[2])
    assert not torch.equal(draws[0], draws[2])


@pytest.mark.parametrize("b_weight", [1.0, 2.0, 0.5])
def test_local_release_adds_noise_of_the_right_std_per_factor(b_weight: float):
    shapes = {A: (1000, 500), B: (500, 1000), HEAD: (200, 500)}  # 500k entries per factor, 100k head
    start = _state(11, shapes=shapes)
    state = {k: v + 0.01 * torch.randn(v.shape, generator=torch.Generator().manual_seed(12))
             for k, v in start.items()}
    bound, sigma = 0.5, 1.3

    released, norm = privatize_local(state, start, bound=bound, noise_multiplier=sigma, b_weight=b_weight,
                                     generator=noise_generator(3, "local", 1, 0))
    clipped, norm_again = clip_update(state, start, bound, b_weight)

    assert norm == pytest.approx(norm_again) and norm > bound  # this update was clipped
    for key, want_std in ((A, sigma * bound), (B, sigma * bound / b_weight), (HEAD, sigma * bound)):
        noise = released[key].double() - clipped[key].double()
        n = noise.numel()
        assert abs(float(noise.std()) - want_std) <= _std_tolerance(want_std, n) + 1e-6, key
        assert abs(float(noise.mean())) <= 5 * want_std / math.sqrt(n) + 1e-6, key
    # in the aggregated space (B times b_weight) every factor's noise has the same std sigma * bound
    scaled_b = b_weight * (released[B].double() - clipped[B].double())
    tolerance = _std_tolerance(sigma * bound, scaled_b.numel()) + 1e-6
    assert abs(float(scaled_b.std()) - sigma * bound) <= tolerance


def test_local_release_is_reproducible_with_a_seed():
    start, state = _state(1), _state(2)
    a, _ = privatize_local(state, start, bound=1.0, noise_multiplier=1.0, b_weight=2.0,
                           generator=noise_generator(0, "local", 1, 3))
    b, _ = privatize_local(state, start, bound=1.0, noise_multiplier=1.0, b_weight=2.0,
                           generator=noise_generator(0, "local", 1, 3))
    c, _ = privatize_local(state, start, bound=1.0, noise_multiplier=1.0, b_weight=2.0,
                           generator=noise_generator(0, "local", 1, 4))  # another client
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
