"""Run outputs a user reads: per-round and per-client metrics files, the console table, plots."""

from fedlora.results.recorder import RunRecorder

__all__ = ["RunRecorder"]
