"""Run outputs a user reads: per-round and per-client metrics files, the console table, plots."""

from fedlora.results.recorder import RunRecorder, read_jsonl

__all__ = ["RunRecorder", "read_jsonl"]
