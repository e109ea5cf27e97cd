"""Per-round and per-client metrics: JSONL and CSV files plus a console table.

One row per round goes to ``metrics.jsonl``/``metrics.csv`` (round 0 is the untrained global
adapter; a round that ``federation.eval_every`` does not evaluate has no ``eval_*`` keys, an empty
cell in the CSV and ``-`` in the table), one row per accepted client reply to ``clients.jsonl``,
and each rejected reply with its reason to ``rejected.jsonl``. Files are rewritten from memory at
each round, so a resumed run that reloads its rows continues the same files.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Columns of the console table: (row key, header, format).
_TABLE = [
    ("round", "round", "{:>5}"),
    ("clients", "clients", "{:>7}"),
    ("train_loss", "train-loss", "{:>10.4f}"),
    ("eval_loss", "eval-loss", "{:>9.4f}"),
    ("eval_accuracy", "accuracy", "{:>8.4f}"),
    ("eval_macro_f1", "macro-f1", "{:>8.4f}"),
    ("eval_perplexity", "ppl", "{:>8.2f}"),
    ("eval_gen_exact_match", "gen-em", "{:>6.3f}"),  # causal LM generation (fedlora.training.generation)
    ("eval_gen_rouge_l", "rouge-l", "{:>7.3f}"),
    ("agg_rel_error", "agg-gap", "{:>8.2e}"),
    ("dp_epsilon", "epsilon", "{:>7.3f}"),  # privacy.mode central/local only
    ("bytes_down", "MB-down", "{:>8.2f}"),
    ("bytes_up", "MB-up", "{:>7.2f}"),
    ("seconds", "secs", "{:>6.1f}"),
]


class RunRecorder:
    """Collects round rows and client rows for one run directory."""

    def __init__(self, out_dir: Path, task: str, listeners: list[Any] | None = None):
        self.out_dir = Path(out_dir)
        # Views of the run (live progress display, TensorBoard): each has on_round_start(round),
        # on_client(row) and on_round_end(row); the files written here stay the record.
        self.listeners = list(listeners or [])
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.task = task
        self.rows: list[dict[str, Any]] = []
        self.clients: list[dict[str, Any]] = []
        self.rejected: list[dict[str, Any]] = []
        self._pending: dict[str, Any] = {}
        self._round_start = time.perf_counter()
        self._printed_header = False

    # -- collecting -----------------------------------------------------------------------
    def start_round(self, server_round: int) -> None:
        self._round_start = time.perf_counter()
        self._pending = {"round": server_round}
        for listener in self.listeners:
            listener.on_round_start(server_round)

    def add(self, **values: Any) -> None:
        """Add values to the current round's row."""
        self._pending.update(values)

    def add_client(self, row: dict[str, Any]) -> None:
        self.clients.append(row)
        for listener in self.listeners:
            listener.on_client(row)

    def add_rejected(self, row: dict[str, Any]) -> None:
        who = f"partition {row['partition_id']}" if "partition_id" in row else f"node {row.get('node_id')}"
        log.warning("round %s: rejected %s reply from %s: %s",
                    row.get("round"), row.get("stage", "train"), who, row["reason"])
        self.rejected.append(row)

    def end_round(self, server_round: int, eval_metrics: dict[str, float] | None) -> dict[str, Any]:
        """Finish the row of ``server_round`` (round 0: the initial adapter), write files, print it."""
        row = self._pending if self._pending.get("round") == server_round else {"round": server_round}
        for key, value in (eval_metrics or {}).items():
            row[f"eval_{key}"] = value
        row.setdefault("clients", 0)
        row.setdefault("bytes_down", 0)
        row.setdefault("bytes_up", 0)
        prev = self.rows[-1] if self.rows else {}
        row["bytes_down_total"] = prev.get("bytes_down_total", 0) + row["bytes_down"]
        row["bytes_up_total"] = prev.get("bytes_up_total", 0) + row["bytes_up"]
        row["seconds"] = round(time.perf_counter() - self._round_start, 3) if server_round > 0 else 0.0
        self.rows.append(row)
        self._pending = {}
        self.write()
        self._print_row(row)
        for listener in self.listeners:
            listener.on_round_end(row)
        return row

    # -- files -----------------------------------------------------------------------------
    def write(self) -> None:
        _write_jsonl(self.out_dir / "metrics.jsonl", self.rows)
        _write_jsonl(self.out_dir / "clients.jsonl", self.clients)
        _write_jsonl(self.out_dir / "rejected.jsonl", self.rejected)
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        with open(self.out_dir / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)

    def load(self, up_to_round: int) -> None:
        """Reload rows of rounds <= ``up_to_round`` (resume)."""
        self.rows = [r for r in read_jsonl(self.out_dir / "metrics.jsonl") if r["round"] <= up_to_round]
        self.clients = [r for r in read_jsonl(self.out_dir / "clients.jsonl") if r["round"] <= up_to_round]
        self.rejected = [r for r in read_jsonl(self.out_dir / "rejected.jsonl") if r["round"] <= up_to_round]

    # -- console ---------------------------------------------------------------------------
    def table_lines(self, rows: list[dict[str, Any]] | None = None) -> list[str]:
        """The metrics table as text lines (only columns that have values)."""
        rows = self.rows if rows is None else rows
        lm_only = {"eval_perplexity", "eval_gen_exact_match", "eval_gen_rouge_l"}
        skip = lm_only if self.task == "classification" else {"eval_accuracy", "eval_macro_f1"}
        if not any("dp_epsilon" in r for r in self.rows + rows):
            skip = skip | {"dp_epsilon"}
        cols = [c for c in _TABLE if c[0] not in skip]
        header = " ".join(
            f"{h:>{len(fmt.format(0) if 'e' not in fmt else '0.00e+00')}}" for _, h, fmt in cols
        )
        lines = [header]
        for r in rows:
            lines.append(" ".join(_cell(r, key, fmt) for key, _, fmt in cols))
        return lines

    def _print_row(self, row: dict[str, Any]) -> None:
        lines = self.table_lines([row])
        if not self._printed_header:
            log.info("%s", lines[0])
            self._printed_header = True
        log.info("%s", lines[1])


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    width = len(fmt.format(0.0)) if "e" not in fmt else 8
    if key not in row or row[key] is None:
        return "-".rjust(width)
    value = row[key]
    if key.startswith("bytes"):
        value = value / 1e6
    return fmt.format(value)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    tmp.replace(path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL results file (empty if missing)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
