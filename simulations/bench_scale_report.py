"""Table, plot and docs page of :mod:`simulations.bench_scale` (from its ``scale.json``)."""

from __future__ import annotations

import shlex
import statistics
from pathlib import Path
from typing import Any

DOC_HEAD = """# Benchmark: server cost at scale

What the server itself spends per round (seconds and resident memory) as the federation grows
from 10 to 1000 clients, with a **fixed** number of participants per round and with participants
**growing** with the federation (a share of the clients). The goal (issue "Performance at scale"):
the server's cost per round grows with the participants, not with the total number of clients.
The query round (discovery) must touch every node once; it is reported separately.

```
{command}
```

Setup: the `smoke` model (tiny random BERT, LoRA r=4) on synthetic rows, {rows} rows per client at
every scale (iid partitions), {rounds} rounds, one local step of batch 4, FedIT, central evaluation
**off** (`federation.central_eval=false`: its cost does not depend on the number of clients, it
would only add a constant), export off, checkpoints on (every round), {ray_cpus} Ray CPU(s) for
the clients (one actor runs every client in turn). Machine: **2 shared CPU cores** (another
simulation was running beside this one), so absolute seconds are noisy; compare the trends.

What is measured (see `simulations/bench_scale.py`):

- **server s/round**: `server_s` in the run's `metrics.jsonl`: the strategy's `configure_train`,
  `aggregate_train`, `configure_evaluate`, `aggregate_evaluate` and the end-of-round work, timed
  inside the ServerApp (`fedlora/strategies/server_clock.py`). The time between pushing the
  messages and receiving the last reply is not in it: that is waiting for clients. `cpu` is the
  same span in the ServerApp thread's CPU seconds (`server_cpu_s`: it leaves out time the thread
  spent waiting for the GIL). `record` is writing the round's files and checkpoint (`record_s`).
  Median over the rounds (every round is in `scale.json` and printed); beside it the round's
  wall time (`seconds`, mostly the clients).
- **server peak MiB**: the driver process's RSS (psutil, sampled every 0.05 s in a background
  thread of that process), the highest value during the rounds. In simulation the driver holds
  the ServerApp, Flower's in-memory SuperLink state and the simulation engine's queues: all
  server side. The clients run in Ray actor processes; their RSS (and Ray's services') is
  summed separately and is not in this column. `before` is the driver's RSS when discovery
  starts (Python, torch, Flower and Ray's driver already loaded, the data checked by the
  preflight); `ru_maxrss` the driver's lifetime peak. RSS rarely shrinks (freed Python memory
  mostly stays in the process), so the rounds start from what discovery left: `rounds over
  discovery` (the rounds' peak minus discovery's) is what the rounds themselves added.
- **discovery**: seconds of the query round (`discovery_s` in `summary.json`: waiting for the
  nodes, one query message to each, checking the replies) and the driver's peak during it. On a
  cold start it includes the client actor's first imports (about 10 s here).

"""


def _median(values: list[float]) -> float:
    """The median over the rounds: one round slowed by the shared machine does not move it."""
    return statistics.median(values) if values else float("nan")


def figures(r: dict[str, Any]) -> dict[str, Any]:
    rounds = r.get("rounds", [])
    return {
        "server_s": _median([x["server_s"] for x in rounds]),
        "server_cpu_s": _median([x["server_cpu_s"] for x in rounds]),
        "record_s": _median([x["record_s"] or 0.0 for x in rounds]),
        "round_s": _median([x["seconds"] for x in rounds]),
        "server_peak_mb": max((x["server_peak_mb"] for x in rounds), default=float("nan")),
    }


def table_lines(report: dict[str, Any]) -> list[str]:
    lines = [
        "| regime | clients | per round | server s/round | cpu s | record s | round s | server peak MiB "
        "| rounds over discovery MiB "
        "| discovery s | discovery peak MiB | before MiB | ru_maxrss MiB | Ray actors MiB | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        if r["status"] != "ok":
            lines.append(f"| {r['regime']} | {r['clients']} | {r['participants']} |"
                         + " - |" * 11 + f" {r['status']} after {r['wall_s']} s |")
            continue
        f = figures(r)
        lines.append(
            f"| {r['regime']} | {r['clients']} | {r['participants']} | {f['server_s']:.4f} "
            f"| {f['server_cpu_s']:.4f} | {f['record_s']:.4f} | {f['round_s']:.2f} "
            f"| {f['server_peak_mb']:.0f} | {f['server_peak_mb'] - r['discovery_peak_mb']:.0f} "
            f"| {r['discovery_s']:.1f} | {r['discovery_peak_mb']:.0f} | {r['before_discovery_mb']:.0f} "
            f"| {r['ru_maxrss_mb']:.0f} | {r['ray_actors_peak_mb']:.0f} | ok ({r['wall_s']:.0f} s) |")
    return lines


def scan_lines(report: dict[str, Any]) -> list[str]:
    if not report.get("engine_scan"):
        return []
    lines = ["| clients | `grid.get_node_ids()` ms | one engine pass, a message per node stored, ms |",
             "|---:|---:|---:|"]
    return lines + [f"| {e['clients']} | {e['get_node_ids_ms']:.2f} | {e['engine_pass_ms']:.1f} |"
                    for e in report["engine_scan"]]


def show(report: dict[str, Any]) -> None:
    print("\n" + "\n".join(table_lines(report)))
    if scan := scan_lines(report):
        print("\nFlower's in-memory SuperLink (--engine-scan)\n" + "\n".join(scan))
    print("\nper round (regime, clients: round -> server_s / server_cpu_s / record_s / seconds / peak MiB)")
    for r in report["results"]:
        for x in r.get("rounds", []):
            print(f"  {r['regime']:>7} {r['clients']:>5}: round {x['round']} -> {x['server_s']:.4f} / "
                  f"{x['server_cpu_s']:.4f} / {x['record_s'] or 0:.4f} / {x['seconds']:.2f} / "
                  f"{x['server_peak_mb']:.0f}")


def write_plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_s, ax_m, ax_d) = plt.subplots(1, 3, figsize=(14, 4.2))
    for regime, marker in (("fixed", "o"), ("growing", "s")):
        ok = [r for r in report["results"] if r["regime"] == regime and r["status"] == "ok"]
        if not ok:
            continue
        label = {"fixed": f"fixed ({ok[0]['participants']} per round)",
                 "growing": "growing (share of the clients per round)"}[regime]
        xs = [r["clients"] for r in ok]
        ax_s.plot(xs, [figures(r)["server_s"] for r in ok], marker=marker, label=label)
        line = ax_m.plot(xs, [figures(r)["server_peak_mb"] for r in ok], marker=marker,
                         label=f"{regime}: rounds")
        ax_m.plot(xs, [r["discovery_peak_mb"] for r in ok], marker=marker, linestyle=":",
                  color=line[0].get_color(), label=f"{regime}: discovery")
        ax_s.plot(xs, [figures(r)["server_cpu_s"] for r in ok], marker=marker, linestyle=":",
                  color=line[0].get_color(), label=f"{regime}: thread CPU s")
        ax_d.plot(xs, [r["discovery_s"] for r in ok], marker=marker, label=label)
    for ax, title in ((ax_s, "server seconds per round (median)"), (ax_m, "server (driver) peak RSS (MiB)"),
                      (ax_d, "discovery seconds (every node once)")):
        ax.set_xscale("log")
        ax.set_xlabel("total clients")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax_s.set_yscale("log")
    ax_s.legend(fontsize=8)
    ax_m.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


READING_MARK = "<!-- reading: kept when the page is regenerated -->"


def write_doc(report: dict[str, Any], path: Path, plot: Path, reading: str = "") -> None:
    args = report["args"]
    command = "python -m simulations.bench_scale " + " ".join(
        [f"--clients {args['clients']}", f"--regimes {args['regimes']}", f"--fixed {args['fixed']}",
         f"--growing {args['growing']}", f"--rounds {args['rounds']}", "--engine-scan", "--doc",
         *(shlex.quote(o) for o in args["overrides"])])
    from simulations.bench_scale import ROWS_PER_CLIENT

    text = DOC_HEAD.format(command=command, rows=ROWS_PER_CLIENT, rounds=args["rounds"],
                           ray_cpus=args["ray_cpus"])
    text += ("## Results\n\nThe figures: `docs/results/benchmarks-scale.json` (every round; regenerate this "
             "page with `--report docs/results/benchmarks-scale.json --doc`).\n\n"
             + "\n".join(table_lines(report)) + "\n\n")
    text += f"![server cost vs total clients]({Path('img') / plot.name})\n\n"
    if scan := scan_lines(report):
        text += ("Flower's in-memory SuperLink alone (`--engine-scan`, no Ray, no clients): "
                 "the node listing every round's sampling calls, and one pass of the simulation engine's "
                 "delivery loop with one query message per node stored, as during discovery:\n\n"
                 + "\n".join(scan) + "\n\n")
    # The hand-written reading below the marker survives a re-run (it may need updating by hand).
    old = path.read_text() if path.exists() else ""
    kept = f"{READING_MARK}\n## Reading\n\n(to write)\n"
    if READING_MARK in old:
        kept = old[old.index(READING_MARK):]
    path.write_text(text + (reading or kept))
