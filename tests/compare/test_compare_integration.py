"""A real tiny comparison (tiny BERT, synthetic data, Ray simulation): stopped part way, completed by
a second call without rerunning finished runs, and its table recomputed from the metric files."""

import json
import sys
from pathlib import Path

import pytest

from fedlora.compare import run_comparison
from fedlora.compare.settings import compose_settings
from tests.compare.helpers import check_table, rows_of

pytestmark = pytest.mark.integration

OVERRIDES = ["preset=smoke", "compare.name=tiny", "compare.strategies=[fedit]",
             "compare.scenarios=[homogeneous]", "export.adapter=false"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from simulations.compare import runners

    out = tmp_path_factory.mktemp("compare")
    lines: list[str] = []
    settings, runs = compose_settings([*OVERRIDES, f"compare.out_dir={out}", "compare.max_runs=4"])
    _, first, _ = run_comparison(settings, runs, runners(), say=lines.append)
    before = {p.parent: p.read_text() for p in out.rglob("done.json")}
    settings, runs = compose_settings([*OVERRIDES, f"compare.out_dir={out}"])
    plan, second, report = run_comparison(settings, runs, runners(), say=lines.append)
    return out, plan, first, second, report, before, lines


def test_second_call_completes_without_rerunning_finished_runs(tiny):
    out, plan, first, second, _, before, lines = tiny
    assert len(plan.runs) == 9 and len(first.ran) == 4 and first.left == 5
    assert second.done_before == 4 and len(second.ran) == 5 and second.complete
    assert not {str(Path(p).relative_to(out)) for p in before} & set(second.ran)
    assert all((p / "done.json").read_text() == text for p, text in before.items())
    assert any("ETA" in line and "[compare 5/9]" in line for line in lines)


def test_table_is_recomputed_from_the_metric_files(tiny):
    out, *_ = tiny
    for method in ("fedit", "centralized", "local"):
        for metric in ("eval_accuracy", "eval_loss", "eval_macro_f1"):
            check_table(out, "homogeneous", method, metric, seeds=3)
    text = (out / "results.md").read_text()
    assert "| fedit | 3/3 |" in text and "All 9 runs finished." in text
    for name in ("homogeneous-round.png", "homogeneous-bytes.png"):
        assert (out / "plots" / name).stat().st_size > 5000


def test_runs_share_the_initial_adapter_and_baselines_keep_the_budget(tiny):
    out, plan, *_ = tiny
    cfg = plan.runs[0].cfg
    for seed in (0, 1, 2):
        r0 = {m: rows_of(out / "homogeneous" / m / f"seed{seed}" / "metrics.jsonl")[0]["eval_loss"]
              for m in ("fedit", "centralized", "local")}
        assert r0["fedit"] == pytest.approx(r0["centralized"], abs=1e-6)
        assert r0["fedit"] == pytest.approx(r0["local"], abs=1e-6)
    fedit = out / "homogeneous" / "fedit"
    finals = {rows_of(fedit / f"seed{s}" / "metrics.jsonl")[-1]["eval_loss"] for s in (0, 1, 2)}
    assert len(finals) == 3  # seeds really vary the runs
    central = json.loads((out / "homogeneous" / "centralized" / "seed0" / "summary.json").read_text())
    fed = cfg.federation
    assert central["total_steps"] == fed.num_rounds * fed.num_clients * cfg.train.local_steps
    local_dir = out / "homogeneous" / "local" / "seed0"
    clients = rows_of(local_dir / "clients.jsonl")
    assert len(clients) == fed.num_rounds * fed.num_clients
    last = rows_of(local_dir / "metrics.jsonl")[-1]
    mean = sum(c["eval_accuracy"] for c in clients if c["round"] == fed.num_rounds) / fed.num_clients
    assert last["eval_accuracy"] == pytest.approx(mean)


def test_cli_refuses_an_unregistered_strategy_before_running_anything(tmp_path):
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "simulations.compare", "preset=smoke", f"compare.out_dir={tmp_path}",
         "compare.strategies=[fedit,nosuch]"],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "strategy 'nosuch' is not registered; registered strategies: [" in proc.stderr
    assert not (tmp_path / "plan.json").exists() and not (tmp_path / "homogeneous").exists()
