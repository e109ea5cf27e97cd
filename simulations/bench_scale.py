"""Scale benchmark: the server's seconds and memory per round at 10, 100 and 1000 clients.

    python -m simulations.bench_scale                         # both regimes at 10, 100, 1000 clients
    python -m simulations.bench_scale --clients 10,100 --regimes fixed --doc
    python -m simulations.bench_scale --report docs/results/benchmarks-scale.json --doc  # re-report

The ``smoke`` model (tiny random BERT) on synthetic rows, the same 8 rows per client at every
scale (written to a JSONL file, iid partitions), one local step of batch 4, central evaluation and
export off: what is left is the server's own work. Two regimes: ``fixed`` (``--fixed`` clients
train per round, whatever the total) and ``growing`` (``--growing`` of the clients per round).

Each run is a child process (``--child``), killed with its Ray processes after ``--timeout`` s.
The child samples, every 0.05 s in a background thread, the resident memory (psutil RSS) of its
own process, the driver: in simulation the ServerApp thread, Flower's in-memory SuperLink state
and its simulation engine live there. Every 0.5 s it also sums the RSS of its Ray descendants
(``ray::`` worker/actor processes: the clients; the others, Ray's agents included: its services), which is not
the server's. Phases are marked by wrapping ``discover_nodes`` and the recorder's round start, so
each round's peak is the driver's peak between two round starts. ``ru_maxrss`` (the lifetime
peak, startup included) is reported as a cross-check. Server seconds per round come from the
run's own ``metrics.jsonl``: ``server_s`` (the strategy's callbacks and end-of-round work, not
the wait for clients; see :mod:`fedlora.strategies.server_clock`), ``server_cpu_s`` (that
thread's CPU seconds) and ``record_s`` (files and checkpoint); discovery from ``summary.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from simulations.loopback import stop_process

ROWS_PER_CLIENT = 8
TEST_ROWS = 60


def overrides_for(regime: str, n: int, args: argparse.Namespace, data: Path) -> list[str]:
    # fixed: ceil(fraction * n) == args.fixed exactly (the 0.5 keeps float rounding off the ceiling)
    fraction = (args.fixed - 0.5) / n if regime == "fixed" else args.growing
    return [
        "preset=smoke", "data=files", f"data.path={data}", "data.partitioner=iid",
        f"data.central_test_size={TEST_ROWS}", f"federation.num_clients={n}",
        f"federation.num_rounds={args.rounds}", f"federation.fraction_train={fraction}",
        "federation.min_train_clients=1", "federation.central_eval=false",
        f"federation.ray_num_cpus={args.ray_cpus}", "train.local_steps=1", "train.batch_size=4",
        "export.adapter=false", "export.verify=false", "progress=log", *args.overrides,
    ]


def participants(regime: str, n: int, args: argparse.Namespace) -> int:
    fraction = (args.fixed - 0.5) / n if regime == "fixed" else args.growing
    return min(n, max(math.ceil(fraction * n), 1))


def write_rows(path: Path, rows: int) -> None:
    from fedlora.data.synthetic import synthetic_classification

    ds = synthetic_classification(42, rows=rows)
    names = ds.features["label"].names
    with open(path, "w") as f:
        for r in ds:
            f.write(json.dumps({"text": r["text"], "label": names[r["label"]]}) + "\n")


# -- the child: one simulation, sampled from inside -------------------------------------------
def child(run_dir: Path, overrides: list[str]) -> None:
    import fedlora.strategies.orchestrate as orchestrate
    from fedlora.config import compose
    from fedlora.results.recorder import RunRecorder
    from simulations.engine import simulate

    me = psutil.Process()
    phase, peaks, base = ["startup"], {}, {}
    ray = {"actors": 0, "services": 0}
    done = threading.Event()

    def sample() -> None:
        tick = 0
        while not done.is_set():
            rss = me.memory_info().rss
            name = phase[0]
            base.setdefault(name, rss)
            peaks[name] = max(peaks.get(name, 0), rss)
            if tick % 10 == 0:
                actors = services = 0
                for p in me.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        mem = p.memory_info().rss
                        if p.name().startswith("ray::") and not p.name().endswith("Agent"):
                            actors += mem
                        else:
                            services += mem
                ray["actors"], ray["services"] = max(ray["actors"], actors), max(ray["services"], services)
            tick += 1
            time.sleep(0.05)

    discover, start_round = orchestrate.discover_nodes, RunRecorder.start_round

    def discover_marked(*a: Any, **kw: Any) -> Any:
        phase[0] = "discovery"
        try:
            return discover(*a, **kw)
        finally:
            phase[0] = "setup"

    def start_marked(self: RunRecorder, server_round: int) -> None:
        phase[0] = f"round {server_round}"
        start_round(self, server_round)

    orchestrate.discover_nodes = discover_marked  # type: ignore[assignment]
    RunRecorder.start_round = start_marked  # type: ignore[method-assign]
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    cfg = compose([*overrides, f"output_dir={run_dir}"])
    simulate(cfg, run_dir, worker_logs=False)
    phase[0] = "end"
    time.sleep(0.1)
    done.set()
    thread.join()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    (run_dir / "memory.json").write_text(json.dumps(
        {"peak": peaks, "start": base, "ray_peak": ray, "ru_maxrss": maxrss}, indent=1))


# -- Flower's simulation engine, measured apart ---------------------------------------------
def engine_scan(n: int) -> dict[str, float]:
    """Flower's in-memory SuperLink with ``n`` nodes and ``n`` query messages stored (as in the
    query round): ms of ``grid.get_node_ids()`` and of one pass of the simulation engine's loop
    (``vce_api.add_messages_to_queue``: ``get_message_ins`` for every node, each scanning every
    stored message; repeated every 0.1 s while the simulation runs)."""
    import timeit

    from flwr.app import ConfigRecord, Message, MessageType, RecordDict
    from flwr.proto.task_pb2 import Task  # type: ignore[attr-defined]
    from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.superlink.federation import NoOpFederationManager
    from flwr.superlink.grid import InMemoryGrid

    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    nodes = list(_register_nodes(n, factory))
    state = factory.state()
    run = Run.create_empty(run_id=7)
    run.primary_task_id, run.federation_id = 1, NOOP_FEDERATION_ID
    state.run_ids[7] = RunRecord(run=run)  # type: ignore[attr-defined]
    state.task_store[1] = Task(task_id=1, run_id=7)  # type: ignore[attr-defined]
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 1, 1  # as the ServerApp
    ids_ms = timeit.timeit(lambda: list(grid.get_node_ids()), number=20) / 20 * 1e3
    grid.push_messages([Message(RecordDict({"config": ConfigRecord({"x": 1})}), dst_node_id=i,
                                message_type=MessageType.QUERY) for i in nodes])
    for i in nodes:  # the first pass delivers every message; the later ones only scan
        state.get_message_ins(node_id=i, limit=1)
    t0 = time.perf_counter()
    for i in nodes:
        state.get_message_ins(node_id=i, limit=1)
    return {"clients": n, "get_node_ids_ms": round(ids_ms, 3),
            "engine_pass_ms": round((time.perf_counter() - t0) * 1e3, 1)}


# -- the parent: runs, timeouts, figures -----------------------------------------------------
def run_one(regime: str, n: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    run_dir = out / f"{regime}-{n}"
    data = out / f"rows-{n}.jsonl"
    if not data.exists():
        write_rows(data, ROWS_PER_CLIENT * n + TEST_ROWS)
    cmd = [sys.executable, "-m", "simulations.bench_scale", "--child", str(run_dir),
           *overrides_for(regime, n, args, data)]
    t0 = time.perf_counter()
    with open(out / f"{regime}-{n}.log", "w") as log:
        # its own session, so that a timeout stops the run with its Ray processes (stop_process)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            stop_process(proc, signal.SIGKILL, grace_s=0)
            code = "timeout"
    wall = time.perf_counter() - t0
    result: dict[str, Any] = {"regime": regime, "clients": n, "participants": participants(regime, n, args),
                              "wall_s": round(wall, 1), "status": "ok" if code == 0 else f"failed ({code})"}
    if code != 0:
        return result
    summary = json.loads((run_dir / "summary.json").read_text())
    mem = json.loads((run_dir / "memory.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rounds = []
    for r in (r for r in rows if r["round"] > 0):
        rounds.append({k: r.get(k) for k in ("round", "clients", "seconds", "server_s", "server_cpu_s",
                                             "record_s")}
                      | {"server_peak_mb": round(mem["peak"].get(f"round {r['round']}", 0) / 2**20, 1)})
    mb = 2**20
    result.update({
        "discovery_s": summary.get("discovery_s"),
        "discovery_peak_mb": round(mem["peak"].get("discovery", 0) / mb, 1),
        "before_discovery_mb": round(mem["start"].get("discovery", 0) / mb, 1),
        "ru_maxrss_mb": round(mem["ru_maxrss"] / mb, 1),
        "ray_actors_peak_mb": round(mem["ray_peak"]["actors"] / mb, 1),
        "ray_services_peak_mb": round(mem["ray_peak"]["services"] / mb, 1),
        "rounds": rounds,
    })
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(Path(argv[1]), argv[2:])
        return 0
    from simulations.bench_scale_report import show, write_doc, write_plot

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--clients", default="10,100,1000", help="comma-separated totals")
    parser.add_argument("--regimes", default="fixed,growing", help="fixed, growing or both")
    parser.add_argument("--fixed", type=int, default=4, help="participants per round, fixed regime")
    parser.add_argument("--growing", type=float, default=0.1, help="share per round, growing regime")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ray-cpus", type=int, default=1, help="federation.ray_num_cpus (actors)")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per run")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--report", type=Path, default=None, help="re-report a scale.json, run nothing")
    parser.add_argument("--engine-scan", action="store_true",
                        help="also time Flower's in-memory SuperLink scans at each total (seconds)")
    parser.add_argument("--doc", action="store_true", help="write docs/benchmarks-scale.md and its plot")
    parser.add_argument("overrides", nargs="*", default=[], help="more Hydra overrides")
    args = parser.parse_args(argv)
    if args.report:
        report = json.loads(args.report.read_text())
    else:
        out = args.out or Path("outputs") / "bench-scale" / time.strftime("%Y%m%d-%H%M%S")
        out.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        results = []
        for regime in args.regimes.split(","):
            for n in (int(c) for c in args.clients.split(",")):
                print(f"{regime} {n} clients ...", flush=True)
                results.append(run_one(regime, n, args, out))
                print(f"  {results[-1]['status']} in {results[-1]['wall_s']} s", flush=True)
                (out / "scale.json").write_text(json.dumps({"args": vars(args) | {"out": str(out),
                                                            "report": None}, "results": results},
                                                           indent=1, default=str))
        report = json.loads((out / "scale.json").read_text())
    if args.engine_scan:
        report["engine_scan"] = [engine_scan(int(c)) for c in args.clients.split(",")]
        path = args.report or Path(report["args"]["out"]) / "scale.json"
        path.write_text(json.dumps(report, indent=1, default=str))
    show(report)
    if args.doc:  # the figures behind the page stay beside it (re-report with --report)
        kept = Path("docs/results/benchmarks-scale.json")
        if args.report is None or args.report.resolve() != kept.resolve():
            kept.write_text(json.dumps(report, indent=1, default=str))
        plot = write_plot(report, Path("docs/img/benchmarks-scale.png"))
        write_doc(report, Path("docs/benchmarks-scale.md"), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
