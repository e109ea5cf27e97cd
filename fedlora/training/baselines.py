"""Reference points for a strategy comparison: centralized LoRA and local-only training.

Why these two: centralized LoRA on the union of the clients' data is what federation tries to
approach (the upper reference), and each client training alone is what it must beat (the reason to
federate at all). Both reuse the federated building blocks (:func:`train_local`, the central
evaluator, the seeded initial adapter) and write ``metrics.jsonl``/``metrics.csv``/``clients.jsonl``/
``summary.json`` in the same format as a federated run, one row per round, so a report reads all
runs alike.

Budgets, so the comparison is fair:

* centralized: each "round" trains ``k x s`` steps on the pooled training splits of all clients,
  where ``k`` is the number of clients the federation samples per round (as in
  :class:`fedlora.strategies.lora_strategy.LoraStrategy.sample`) and ``s`` the local steps of a
  client (``train.local_steps``, or the mean over clients when ``train.local_epochs`` sets them).
  Total: ``rounds x k x s`` steps at the same batch size, i.e. as many examples as the federation
  processes. The optimizer restarts each round with that round's learning rate, as clients' do.
  Rank: the largest client rank; initial adapter: the federation's round-0 adapter.
* local-only: client ``p`` trains ``rounds x s`` steps alone, from the first ``r_p`` components of
  the same initial adapter, with the same per-round seeds and learning rates it would use in the
  federation. After each evaluated round (``federation.eval_every``, the federated schedule)
  every client's adapter is scored on the central test set and the
  row holds the mean over clients (each client's own scores go to ``clients.jsonl``).

No bytes travel in either, so their byte columns stay 0.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import datasets

from fedlora.config.load import to_yaml
from fedlora.config.schema import FederationConfig, RunConfig
from fedlora.data import load_client_data, tokenize_dataset
from fedlora.lora.init import initial_state
from fedlora.lora.keys import LoraState, split_key
from fedlora.lora.state import base_magnitudes, get_lora_state, set_lora_state
from fedlora.results import RunRecorder
from fedlora.results.plots import plot_run
from fedlora.training.central import CentralEvaluator
from fedlora.training.local import num_steps, train_local
from fedlora.training.schedule import evaluates, lr_for_round


def clients_per_round(fed: FederationConfig) -> int:
    """How many clients the federation samples per round (``LoraStrategy.sample`` with every node up)."""
    n = fed.num_clients
    return min(n, max(math.ceil(fed.fraction_train * n), fed.min_train_clients))


def truncate(state: LoraState, rank: int) -> LoraState:
    """The first ``rank`` components of an adapter: rows of each A, columns of each B; extras kept."""
    out = {}
    for key, tensor in state.items():
        kind = split_key(key)[1]
        out[key] = (tensor[:rank] if kind == "A" else tensor[:, :rank] if kind == "B" else tensor).clone()
    return out


def _client_train(cfg: RunConfig, tokenizer: Any, pid: int, raw: bool = False) -> datasets.Dataset:
    data = load_client_data(cfg.data, cfg.model.task, pid, cfg.federation.num_clients).train
    return data if raw else tokenize_dataset(data, tokenizer, cfg.model.task, cfg.model.max_length)


def _start(cfg: RunConfig, out_dir: Path) -> tuple[CentralEvaluator, RunRecorder, list[int], LoraState]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(to_yaml(cfg))
    evaluator = CentralEvaluator(cfg)
    ranks = [cfg.lora.rank_for(p) for p in range(cfg.federation.num_clients)]
    # DoRA starts from the base weights' column norms, as the federated run's server does
    model = evaluator.model_for(max(ranks), cfg.lora.alpha) if cfg.lora.use_dora else None
    magnitudes = base_magnitudes(model) if model is not None else None
    state = initial_state(evaluator.adapter_shapes(max(ranks)), cfg.lora.init_seed, magnitudes)
    return evaluator, RunRecorder(out_dir, cfg.model.task), ranks, state


def run_centralized(cfg: RunConfig, out_dir: Path) -> dict[str, Any]:
    """Train one adapter on the pooled client training data; return the run summary."""
    t0, out_dir = time.perf_counter(), Path(out_dir)
    evaluator, recorder, ranks, state = _start(cfg, out_dir)
    n, rounds, task = cfg.federation.num_clients, cfg.federation.num_rounds, cfg.model.task
    raw = [_client_train(cfg, evaluator.tokenizer, p, raw=True) for p in range(n)]
    pooled = tokenize_dataset(datasets.concatenate_datasets(raw), evaluator.tokenizer, task,
                              cfg.model.max_length)
    per_client = round(sum(num_steps(cfg.train, len(d)) for d in raw) / n)
    steps = clients_per_round(cfg.federation) * per_client
    train_cfg = dataclasses.replace(cfg.train, local_steps=steps, local_epochs=0.0)
    model = evaluator.model_for(max(ranks), cfg.lora.alpha)
    set_lora_state(model, state)
    recorder.end_round(0, evaluator.evaluate_model(model))
    for rnd in range(1, rounds + 1):
        recorder.start_round(rnd)
        lr = lr_for_round(cfg.train, rnd, rounds)
        result = train_local(model, pooled, evaluator.collate, train_cfg, lr=lr,
                             seed=cfg.train.seed + 1000 * rnd, label=f"centralized round {rnd}")
        recorder.add(clients=n, lr=lr, train_loss=result.loss, train_steps=result.steps,
                     num_examples=result.num_examples)
        # federation.eval_every: the same evaluation schedule as a federated run
        scheduled = evaluates(rnd, rounds, cfg.federation.eval_every)
        recorder.end_round(rnd, evaluator.evaluate_model(model) if scheduled else None)
    extra = {"rank": max(ranks), "train_examples": len(pooled), "steps_per_round": steps,
             "total_steps": steps * rounds}
    return _finish(cfg, out_dir, recorder, "centralized", time.perf_counter() - t0, extra)


def run_local_only(cfg: RunConfig, out_dir: Path) -> dict[str, Any]:
    """Train every client alone, score each on the central test set; return the run summary."""
    t0, out_dir = time.perf_counter(), Path(out_dir)
    evaluator, recorder, ranks, state0 = _start(cfg, out_dir)
    n, rounds = cfg.federation.num_clients, cfg.federation.num_rounds
    data = [_client_train(cfg, evaluator.tokenizer, p) for p in range(n)]
    states = {p: truncate(state0, ranks[p]) for p in range(n)}
    scores = []
    for p in range(n):
        model = evaluator.model_for(ranks[p], cfg.lora.alpha)
        set_lora_state(model, states[p])
        scores.append(evaluator.evaluate_model(model))
    recorder.end_round(0, _mean(scores))
    for rnd in range(1, rounds + 1):
        recorder.start_round(rnd)
        lr = lr_for_round(cfg.train, rnd, rounds)
        scores, losses = [], []
        scheduled = evaluates(rnd, rounds, cfg.federation.eval_every)  # as in a federated run
        for p in range(n):
            model = evaluator.model_for(ranks[p], cfg.lora.alpha)
            set_lora_state(model, states[p])
            # The seed a federated client with this partition id uses in this round.
            result = train_local(model, data[p], evaluator.collate, cfg.train, lr=lr,
                                 seed=cfg.train.seed + 1000 * rnd + p, label=f"local client {p} round {rnd}")
            states[p] = get_lora_state(model)
            metrics = evaluator.evaluate_model(model) if scheduled else {}
            if scheduled:
                scores.append(metrics)
            losses.append((result.num_examples, result.loss))
            recorder.add_client({"round": rnd, "partition_id": p, "rank": ranks[p],
                                 "num_examples": result.num_examples, "train_loss": result.loss,
                                 "train_steps": result.steps,
                                 **{f"eval_{k}": v for k, v in metrics.items()}})
        seen = sum(e for e, _ in losses)
        recorder.add(clients=n, lr=lr, train_loss=sum(e * loss for e, loss in losses) / seen)
        recorder.end_round(rnd, _mean(scores) if scores else None)
    extra = {"ranks": ranks, "steps_per_round": [num_steps(cfg.train, len(d)) for d in data]}
    return _finish(cfg, out_dir, recorder, "local", time.perf_counter() - t0, extra)


def _mean(scores: list[dict[str, float]]) -> dict[str, float]:
    """Unweighted mean over clients of each metric (every client counts once)."""
    return {k: sum(s[k] for s in scores) / len(scores) for k in scores[0]}


def _finish(cfg: RunConfig, out_dir: Path, recorder: RunRecorder, method: str, seconds: float,
            extra: dict[str, Any]) -> dict[str, Any]:
    final = dict(recorder.rows[-1])
    summary: dict[str, Any] = {
        "run_dir": str(out_dir), "strategy": method, "model": cfg.model.name, "data": cfg.data.name,
        "rounds": cfg.federation.num_rounds, "num_clients": cfg.federation.num_clients,
        "seconds": round(seconds, 2), "final": final, "bytes_total": 0, "rejected_replies": 0, **extra,
    }
    plot = plot_run(recorder.rows, out_dir / "metrics.png", cfg.model.task)
    if plot:
        summary["plot"] = str(plot)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
