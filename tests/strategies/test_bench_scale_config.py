"""The scale benchmark's configs sample the participants its page says, at every total."""

import argparse
import math
from pathlib import Path

import pytest

from fedlora.config import compose
from simulations.bench_scale import overrides_for, participants


@pytest.mark.parametrize("regime,n,want", [("fixed", 10, 4), ("fixed", 100, 4), ("fixed", 1000, 4),
                                           ("growing", 10, 1), ("growing", 100, 10), ("growing", 1000, 100)])
def test_the_sampled_count_is_the_reported_one(tmp_path: Path, regime: str, n: int, want: int) -> None:
    args = argparse.Namespace(fixed=4, growing=0.1, rounds=3, ray_cpus=1, overrides=[])
    data = tmp_path / "rows.jsonl"
    data.write_text('{"text": "a b c", "label": "x"}\n')
    cfg = compose(overrides_for(regime, n, args, data))  # a valid config
    fed = cfg.federation
    # LoraStrategy.sample: min(pool, max(ceil(fraction * pool), min_train_clients))
    assert min(n, max(math.ceil(fed.fraction_train * n), fed.min_train_clients)) == want
    assert participants(regime, n, args) == want
    assert not fed.central_eval and not cfg.export.adapter and cfg.train.local_steps == 1
