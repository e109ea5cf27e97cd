"""Deployment benchmark: the loopback deployment with and without resident node workers.

    python -m simulations.bench_deploy                          # smoke preset, 2 nodes, 5 rounds
    python -m simulations.bench_deploy --rounds 3 preset=smoke strategy=hetlora lora.ranks=[2,4]
    python -m simulations.bench_deploy --superexec-poll-s 0.1   # SuperNodes poll for tasks faster

Both deployments run one after the other in this process with the same config and seeds (a
SuperLink and two SuperNodes on 127.0.0.1, each in its own directory and FLWR_HOME; with
``--workers-only``/``--without-only`` just one). Printed per round, from the run's own files:
the round's wall time (``metrics.jsonl``), the slowest client's training time, base models
loaded and task processes started during the round (from ``base_model_loads`` and
``worker_pid`` of every reply in ``clients.jsonl``, evaluation replies included), and the
overhead: round time minus the slowest training. Then the mean overhead of rounds 2.. (round 1
includes the workers' first model load), the ratio with/without, and whether the two final
adapters are bit-identical. Not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from simulations.loopback import LoopbackDeployment

# How often each SuperNode's SuperExec asks for a task to launch (a Flower setting, 0.01..): every
# message waits half of it on average before its ClientApp process starts.
POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def per_round(run_dir: Path) -> list[dict[str, Any]]:
    """One row per round: seconds, slowest training, loads, new task processes, overhead."""
    rows = [r for r in _jsonl(run_dir / "metrics.jsonl") if r["round"] > 0]
    clients = _jsonl(run_dir / "clients.jsonl")
    seen_pids: set[int] = set()
    last_loads: dict[int, int] = {}  # pid -> loads it had reported
    out = []
    for row in rows:
        replies = [c for c in clients if c["round"] == row["round"]]
        train = [c for c in replies if c.get("stage", "train") == "train"]
        slowest = max((c.get("train_seconds", 0.0) for c in train), default=0.0)
        loads = 0
        for c in replies:
            pid, n = c.get("worker_pid"), c.get("base_model_loads", 0)
            loads += max(0, n - last_loads.get(pid, 0))
            last_loads[pid] = max(n, last_loads.get(pid, 0))
        pids = {c.get("worker_pid") for c in replies}
        out.append({"round": row["round"], "seconds": row["seconds"], "slowest_train_s": slowest,
                    "base_model_loads": loads, "task_processes_started": len(pids - seen_pids),
                    "replies": len(replies), "overhead_s": row["seconds"] - slowest})
        seen_pids |= pids
    return out


def adapter_sha(run_dir: Path) -> str:
    return hashlib.sha256((run_dir / "adapter" / "adapter_model.safetensors").read_bytes()).hexdigest()


def deploy_once(base: Path, workers: bool, rounds: int, overrides: list[str],
                node_extra: dict[str, str] | None = None,
                env: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], Path, float]:
    run_dir = base / "server-run"
    nodes = [{"partition-id": i, "num-partitions": 2, **(node_extra or {})} for i in range(2)]
    text = " ".join([*overrides, f"federation.num_rounds={rounds}", "federation.fraction_evaluate=1.0",
                     f"output_dir={run_dir}"])
    with LoopbackDeployment(base, nodes, workers=workers, env=env) as dep:
        t0 = time.perf_counter()
        done = dep.run(text)
        wall = time.perf_counter() - t0
        if done.returncode != 0 or not (run_dir / "summary.json").exists():
            sys.exit(f"the {'worker' if workers else 'in-process'} deployment failed:\n"
                     f"{(done.stdout + done.stderr)[-4000:]}")
    return per_round(run_dir), run_dir, wall


def show(label: str, rows: list[dict[str, Any]], wall: float) -> None:
    print(f"\n{label}  (flwr run: {wall:.1f} s)")
    print(f"{'round':>5} {'round s':>8} {'slowest train s':>15} {'model loads':>11} {'processes':>9} "
          f"{'overhead s':>10}")
    for r in rows:
        print(f"{r['round']:>5} {r['seconds']:>8.2f} {r['slowest_train_s']:>15.2f} "
              f"{r['base_model_loads']:>11} {r['task_processes_started']:>9} {r['overhead_s']:>10.2f}")


def mean_overhead(rows: list[dict[str, Any]]) -> float:
    later = [r["overhead_s"] for r in rows if r["round"] > 1] or [r["overhead_s"] for r in rows]
    return sum(later) / len(later)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", type=Path, default=None, help="keep the run directories here")
    parser.add_argument("--node", action="append", default=[], metavar="KEY=VALUE",
                        help="add to both nodes' node config, e.g. --node corpus-path=/data/foldoc")
    parser.add_argument("--superexec-poll-s", type=float, default=None, metavar="S",
                        help="FLWR_SUPEREXEC_TASK_POLL_INTERVAL for the SuperNodes (Flower's default: 1 s)")
    parser.add_argument("overrides", nargs="*", default=["preset=smoke"], help="Hydra overrides")
    args = parser.parse_args(argv)
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench-deploy-"))
    bad = [n for n in args.node if "=" not in n]
    if bad:
        parser.error(f"--node: expected KEY=VALUE, got {bad}")
    node_extra = dict(n.split("=", 1) for n in args.node)
    env = {} if args.superexec_poll_s is None else {POLL_ENV: str(args.superexec_poll_s)}
    print(f"{POLL_ENV}={env.get(POLL_ENV, '(Flower default, 1 s)')}")
    results = {}
    for workers in (False, True):
        label = "with workers" if workers else "without workers (a ClientApp process per message)"
        rows, run_dir, wall = deploy_once(base / ("workers" if workers else "in-process"), workers,
                                          args.rounds, args.overrides, node_extra, env)
        show(label, rows, wall)
        results[workers] = (rows, run_dir)
    without, with_ = mean_overhead(results[False][0]), mean_overhead(results[True][0])
    same = adapter_sha(results[False][1]) == adapter_sha(results[True][1])
    print(f"\nmean round overhead (rounds 2..{args.rounds}): {without:.2f} s without workers, "
          f"{with_:.2f} s with workers; ratio {with_ / without:.3f}")
    print(f"base model loads over the run: {sum(r['base_model_loads'] for r in results[False][0])} without, "
          f"{sum(r['base_model_loads'] for r in results[True][0])} with workers")
    print(f"final adapters bit-identical: {same}; run directories under {base}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
