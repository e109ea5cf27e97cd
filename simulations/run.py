"""Run one federated simulation from the Hydra config in ``conf/``.

    python -m simulations.run                                  # default: MiniLM, tweets, 10 clients
    python -m simulations.run preset=llm                       # SmolLM2 on FOLDOC
    python -m simulations.run strategy=fedit federation.num_rounds=5 lora.r=16
    python -m simulations.run resume=outputs/2026-11-22/10-00-00-fedit   # continue a crashed run

Results go to the Hydra run directory: metrics.jsonl/.csv, clients.jsonl, metrics.png,
summary.json, checkpoint/, adapter/ (PEFT format).
"""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fedlora.config.load import CONF_DIR, ConfigError, build_config
from fedlora.preflight import PreflightError
from simulations.engine import simulate

log = logging.getLogger("fedlora.simulations")


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
def main(dcfg: DictConfig) -> None:
    try:
        cfg = build_config(OmegaConf.to_container(dcfg, resolve=True))  # type: ignore[arg-type]
    except ConfigError as err:
        print(err, file=sys.stderr)
        sys.exit(2)
    out_dir = Path(cfg.resume or cfg.output_dir or HydraConfig.get().runtime.output_dir)
    overrides = [o for o in HydraConfig.get().overrides.task
                 if not o.startswith(("resume=", "output_dir=", "overwrite="))]
    again = " ".join(shlex.quote(o) for o in [*overrides, f"resume={out_dir}"])
    try:
        summary = simulate(cfg, out_dir)
    except PreflightError as err:
        print(err, file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\nfedlora: interrupted; every finished round is checkpointed in {out_dir / 'checkpoint'}\n"
              f"  continue with: python -m simulations.run {again}", file=sys.stderr)
        sys.exit(130)
    if summary.get("status") == "failed":
        done = summary.get("rounds_done", 0)
        print(f"\nfedlora: run FAILED after {done} good round(s) of {summary['rounds']}: "
              f"{summary.get('failure')}\n  rejected replies: {out_dir / 'rejected.jsonl'}\n"
              f"  after fixing the cause, redo the failed rounds with: python -m simulations.run {again}",
              file=sys.stderr)
        sys.exit(1)
    final = summary.get("final", {})
    check = summary.get("export_check", {})
    print(f"\nfedlora: {summary['strategy']} on {summary['model']}/{summary['data']}, "
          f"{summary['num_clients']} clients x {summary['rounds']} rounds in {summary['seconds']:.0f} s")
    for key in ("eval_accuracy", "eval_macro_f1", "eval_loss", "eval_perplexity", "eval_gen_exact_match",
                "eval_gen_rouge_l"):
        if key in final:
            print(f"  final {key[5:]}: {final[key]:.4f}")
    best = summary.get("best_round")
    if best and best["round"] != summary["rounds"]:
        name = best["metric"].removeprefix("eval_")
        print(f"  best round: {best['round']} ({name} {best['value']:.4f}; final {best['final_value']:.4f}); "
              f"exported: {summary.get('exported_round', {}).get('select', 'last')} "
              "(export.select=best|last)")
    if privacy := summary.get("privacy"):
        stopped = (f"; stopped after round {privacy['stopped_after_round']} (privacy.target_epsilon="
                   f"{privacy['target_epsilon']:g})" if "stopped_after_round" in privacy else "")
        print(f"  privacy: {privacy['mode']} DP, epsilon {privacy['epsilon']:.4g} at delta "
              f"{privacy['delta']:g} after {privacy['releases']} release(s){stopped}")
    print(f"  bytes sent: {summary['bytes_total'] / 1e6:.2f} MB (down + up); "
          f"rejected replies: {summary['rejected_replies']}")
    if "adapter_dir" in summary:
        reload_check = "ok" if check.get("matches") else check or "skipped"
        print(f"  adapter: {summary['adapter_dir']}  (reload check: {reload_check})")
    print(f"  metrics: {out_dir / 'metrics.csv'}  plot: {summary.get('plot', '-')}")


if __name__ == "__main__":
    main()
