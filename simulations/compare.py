"""Compare aggregation strategies over scenarios x seeds, with centralized and local-only baselines.

    python -m simulations.compare                                # default preset: 2 scenarios x 3 seeds
    python -m simulations.compare preset=smoke compare.name=smoke compare.strategies=[fedit] \
        compare.scenarios=[homogeneous,iid]                      # seconds per run
    python -m simulations.compare compare.scenarios=[heterogeneous+partial] compare.seeds=[0,1,2,3,4]

The ``compare`` section (``conf/compare.yaml``) picks scenarios, strategies, seeds and baselines;
every other override applies to each run, composed from ``conf/config.yaml`` as
``python -m simulations.run`` would. Results go to ``outputs/compare/<compare.name>/``:
results.md, results.csv, results-paired.csv (each method minus ``compare.reference``, per seed),
plots/*.png, plan.json and one directory per run. Running the same command again resumes:
finished runs are kept, interrupted ones continue, changed ones are redone.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fedlora.compare import run_comparison
from fedlora.compare.execute import Runner, fmt_duration
from fedlora.compare.settings import parse_settings, split_overrides
from fedlora.config.load import CONF_DIR, ConfigError
from fedlora.config.schema import RunConfig
from fedlora.models.build import clear_caches as clear_model_caches
from fedlora.training.baselines import run_centralized, run_local_only
from simulations.engine import simulate


def _fresh_models(run: Runner) -> Runner:
    """Drop this process's cached models before a run: the cache keys on ``lora.init_seed``, so a
    sweep over seeds would otherwise keep one wrapped base model per (rank, seed) alive."""

    def wrapped(cfg: RunConfig, out_dir: Path) -> dict[str, Any]:
        clear_model_caches()
        gc.collect()
        return run(cfg, out_dir)

    return wrapped


def runners(verbose: bool = False) -> dict[str, Runner]:
    """How each kind of run executes: federated runs on Flower's Simulation Engine, in process
    (client log lines reach the console only with ``compare.verbose``)."""
    # Create Flower's console handler now (after simulations.engine set its environment), so that
    # quiet mode can lower it during the runs.
    import flwr.common.logger  # noqa: F401

    def federated(cfg: RunConfig, out_dir: Path) -> dict[str, Any]:
        summary = simulate(cfg, out_dir, worker_logs=verbose)
        if summary.get("status") == "failed":  # recorded as a failed run; the next call resumes it
            raise RuntimeError(summary.get("failure", "the run failed"))
        return summary

    kinds = {"federated": federated, "centralized": run_centralized, "local": run_local_only}
    return {kind: _fresh_models(run) for kind, run in kinds.items()}


def say(line: str) -> None:
    """Progress lines go to stdout unbuffered (a sweep may run for hours behind a pipe)."""
    print(line, flush=True)


@hydra.main(config_path=str(CONF_DIR), config_name="compare", version_base=None)
def main(dcfg: DictConfig) -> None:
    tree = OmegaConf.to_container(dcfg.compare, resolve=True)
    try:
        settings = parse_settings(tree)  # type: ignore[arg-type]
        run_args = split_overrides(list(HydraConfig.get().overrides.task))[1]
        _, outcome, report = run_comparison(settings, run_args, runners(settings.verbose), say)
    except ConfigError as err:
        print(f"compare: {err}", file=sys.stderr)
        sys.exit(2)
    out_dir = Path(settings.out_dir)
    tables = report["text"].split("\n## ", 1)
    print("\n" + ("## " + tables[1] if len(tables) > 1 else report["text"]))
    done = outcome.done_before + len(outcome.ran)
    print(f"compare {settings.name}: {done}/{outcome.total} runs done ({len(outcome.ran)} this call, "
          f"{outcome.done_before} earlier), {len(outcome.failed)} failed, {outcome.left} left; "
          f"this call took {fmt_duration(outcome.seconds)}")
    print(f"  table: {report['markdown']}  csv: {report['csv']}")
    if report["plots"]:
        print(f"  plots: {out_dir / 'plots'}/ ({len(report['plots'])} PNG)")
    if outcome.interrupted:
        sys.exit(130)
    if not outcome.complete:
        print("  incomplete: run the same command again to finish (finished runs are kept)")
        sys.exit(1)


if __name__ == "__main__":
    main()
