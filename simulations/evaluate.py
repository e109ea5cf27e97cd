"""Score an exported adapter with the server's own central evaluation (loss, and generation for LMs).

    python -m simulations.evaluate outputs/.../adapter                        # the run's own test split
    python -m simulations.evaluate outputs/.../adapter data=files data.path=my.jsonl --out scores.json
    python -m simulations.evaluate outputs/.../adapter federation.generate_samples=32 --samples s.jsonl

The configuration is the run's ``config.yaml`` (beside the adapter directory, or ``--config``) with
the overrides applied: ``section.field=value`` sets one field (the value parsed as YAML), and
``group=option`` (e.g. ``data=files``) replaces the whole section by ``conf/<group>/<option>.yaml``
before the dotted overrides apply. The model section must stay the adapter's (source, task, dtype,
quantization); ``model.device`` and ``model.max_length`` may change. Scoring is
:class:`fedlora.training.central.CentralEvaluator` on the adapter reloaded from disk, the code the
server's ``export.verify`` uses, so on the run's own config the numbers are the server's last
central metrics for that adapter. Metrics are printed as JSON on stdout (logs go to stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from fedlora.config.load import CONF_DIR, ConfigError, build_config
from fedlora.logs import setup_logging
from simulations.generate import UsageError, check_model_matches, load_model, load_run_config, read_manifest

log = logging.getLogger("fedlora.simulations.evaluate")


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``tree`` with ``group=option`` and ``section.field=value`` overrides applied, in order.

    Raises
    ------
    UsageError
        For an override without ``=``, Hydra's ``+``/``~`` forms, an unknown group option, or a
        preset (presets edit several sections; give their fields instead).
    """
    tree = {k: (dict(v) if isinstance(v, dict) else v) for k, v in tree.items()}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or key.startswith(("+", "~")):
            raise UsageError(f"override {item!r}: expected section.field=value or group=option")
        if "." not in key:
            group_dir = CONF_DIR / key
            if key == "preset":
                raise UsageError(f"override {item!r}: a preset cannot be applied to a saved run config; "
                                 "give the fields it sets instead")
            if group_dir.is_dir():
                option = group_dir / f"{raw}.yaml"
                if not option.is_file():
                    known = sorted(p.stem for p in group_dir.glob("*.yaml"))
                    raise UsageError(f"override {item!r}: no {option}; options of {key}: {known}")
                tree[key] = yaml.safe_load(option.read_text()) or {}
                continue
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            raise UsageError(f"override {item!r}: the value is not valid YAML ({err})") from err
        *sections, field = key.split(".")
        node = tree
        for section in sections:
            child = node.get(section)
            if child is None:
                child = node[section] = {}
            elif not isinstance(child, dict):
                raise UsageError(f"override {item!r}: {section!r} is not a section")
            node = child
        node[field] = value
    return tree


def evaluate_adapter(adapter_dir: Path, overrides: list[str], *, config: Path | None = None,
                     samples_out: Path | None = None) -> dict[str, Any]:
    """The central metrics of the exported adapter under the run's config plus ``overrides``."""
    from fedlora.training.central import CentralEvaluator

    adapter_dir = Path(adapter_dir)
    manifest = read_manifest(adapter_dir)
    tree, origin = load_run_config(adapter_dir, manifest, config, required=True)
    try:
        cfg = build_config(apply_overrides(tree, overrides))
    except ConfigError as err:
        raise UsageError(f"{origin} with overrides {overrides}: {err}") from err
    check_model_matches(cfg, manifest, f"{origin} with overrides {overrides}")
    try:  # the data layer's errors name the field and file (e.g. "data.path: file 'x' not found")
        evaluator = CentralEvaluator(cfg)
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot load the evaluation data ({cfg.data.name}): {err}") from err
    if evaluator.labels != manifest.get("labels"):
        raise UsageError(f"data: its labels {evaluator.labels} are not the adapter's "
                         f"{manifest.get('labels')} (the classification head was trained on those)")
    model, _ = load_model(adapter_dir, cfg)
    metrics = evaluator.evaluate_model(model)
    if samples_out is not None and evaluator.last_samples:
        samples_out.parent.mkdir(parents=True, exist_ok=True)
        samples_out.write_text("".join(json.dumps(s) + "\n" for s in evaluator.last_samples))
    elif samples_out is not None:
        log.warning("--samples %s: nothing written (generation is off: a causal LM with "
                    "federation.generate_samples > 0 is needed)", samples_out)
    return {"adapter": str(adapter_dir), "config": str(origin), "overrides": overrides,
            "data": cfg.data.name, "test_examples": len(evaluator.dataset),
            "generate_samples": len(evaluator.generation_rows), "metrics": metrics}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.evaluate",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("adapter_dir", type=Path, help="an exported adapter directory (<run>/adapter)")
    parser.add_argument("overrides", nargs="*", help="section.field=value or group=option (e.g. data=files)")
    parser.add_argument("--config", type=Path, help="the run's config.yaml (default: beside the adapter)")
    parser.add_argument("--out", type=Path, help="also write the result JSON to this file")
    parser.add_argument("--samples", type=Path, help="write the generated answers here (JSONL)")
    args = parser.parse_args(argv)
    setup_logging()
    from fedlora.export.adapter import IntegrityError

    try:
        result = evaluate_adapter(args.adapter_dir, args.overrides, config=args.config,
                                  samples_out=args.samples)
    except (UsageError, IntegrityError) as err:
        print(f"simulations.evaluate: {err}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
