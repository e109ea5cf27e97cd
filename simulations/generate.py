"""Answer prompts with an exported adapter, exactly as the server's generation evaluation does.

    python -m simulations.generate outputs/.../adapter --prompt "What is 2 plus 3?" --prompt "..."
    python -m simulations.generate outputs/.../adapter --prompts prompts.txt     # one prompt per line
    python -m simulations.generate outputs/.../adapter --prompts samples.jsonl   # JSONL, "prompt" key

The base model is rebuilt from the adapter's ``fedlora.json`` (source, dtype, quantization), on the
run's device, and the adapter loaded on it (:func:`fedlora.export.adapter.load_exported`). Prompts
are formatted by :func:`fedlora.training.generation.inference_prompt` and answered by
:func:`~fedlora.training.generation.generate_answers` with the run's ``federation.max_new_tokens``,
``model.max_length`` and ``train.eval_batch_size``, read from the run's ``config.yaml`` (next to the
adapter directory, or ``--config``). So the same prompts in the same order give the answers of the
server's samples file for that adapter.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from fedlora.config.load import ConfigError
from fedlora.config.schema import RunConfig
from fedlora.logs import setup_logging

log = logging.getLogger("fedlora.simulations.generate")

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "fedlora.json")
#: Model fields that must agree between the adapter's manifest and a run config used with it.
MODEL_IDENTITY = ("source", "task", "dtype", "quantization", "trust_remote_code")


class UsageError(ValueError):
    """Bad command-line input (a path, a prompts file); printed without a traceback, exit 2."""


def read_manifest(adapter_dir: Path) -> dict[str, Any]:
    """The adapter's ``fedlora.json``, after checking the directory is a fedlora export."""
    expected = "expected an exported adapter directory, e.g. <run>/adapter"
    if not adapter_dir.exists():
        raise UsageError(f"{adapter_dir}: no such directory ({expected})")
    if not adapter_dir.is_dir():
        raise UsageError(f"{adapter_dir}: is a file ({expected})")
    missing = [name for name in ADAPTER_FILES if not (adapter_dir / name).is_file()]
    if missing:
        is_run = (adapter_dir / "adapter").is_dir()
        hint = " (it is a run directory: use its adapter/ folder)" if is_run else ""
        raise UsageError(f"{adapter_dir}: not an exported fedlora adapter; missing "
                         f"{', '.join(missing)}{hint}")
    try:
        manifest = json.loads((adapter_dir / "fedlora.json").read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"{adapter_dir / 'fedlora.json'}: not valid JSON ({err})") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("model"), dict):
        raise UsageError(f"{adapter_dir / 'fedlora.json'}: expected an object with a 'model' section")
    return manifest


def run_config_path(adapter_dir: Path, manifest: dict[str, Any], explicit: Path | None) -> Path | None:
    """The run's ``config.yaml``: ``--config``, else beside the adapter, else in the manifest's run_dir."""
    if explicit is not None:
        if not explicit.is_file():
            raise UsageError(f"--config {explicit}: no such file (expected a run's config.yaml)")
        return explicit
    candidates = [adapter_dir.parent / "config.yaml"]
    if manifest.get("run_dir"):
        candidates.append(Path(manifest["run_dir"]) / "config.yaml")
    return next((c for c in candidates if c.is_file()), None)


def load_run_config(adapter_dir: Path, manifest: dict[str, Any], explicit: Path | None = None,
                    required: bool = False) -> tuple[dict[str, Any], Path | None]:
    """The run's config as a plain tree (server-only fields cleared) and where it came from.

    Without a ``config.yaml``: an error if ``required``, else the manifest's model section with
    every other field at its default, which is logged.
    """
    path = run_config_path(adapter_dir, manifest, explicit)
    if path is None:
        where = f"{adapter_dir.parent / 'config.yaml'}" + (f" or {manifest['run_dir']}/config.yaml"
                                                           if manifest.get("run_dir") else "")
        if required:
            raise UsageError(f"{adapter_dir}: no run config found ({where}); pass --config <run>/config.yaml")
        log.warning("no run config found (%s): using the adapter's model with default settings "
                    "(federation.max_new_tokens, train.eval_batch_size, model.max_length)", where)
        return {"model": dict(manifest["model"])}, None
    import yaml

    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UsageError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(tree, dict):
        raise UsageError(f"{path}: expected a mapping (a fedlora run's config.yaml)")
    tree.update(output_dir="", resume="", overwrite=False)
    return tree, path


def check_model_matches(cfg: RunConfig, manifest: dict[str, Any], origin: str) -> None:
    """Refuse a config whose model is not the one the adapter was trained on."""
    diff = [f"model.{k}: {getattr(cfg.model, k)!r} vs {manifest['model'].get(k)!r}"
            for k in MODEL_IDENTITY if getattr(cfg.model, k) != manifest["model"].get(k)]
    if diff:
        raise UsageError(f"{origin}: its model differs from the adapter's fedlora.json ({'; '.join(diff)})")


def read_prompts(path: Path) -> list[str]:
    """Prompts of a file: JSONL with a ``prompt`` key (``.jsonl``, or lines starting with ``{``),
    else one prompt per non-empty line."""
    if not path.is_file():
        raise UsageError(f"--prompts {path}: no such file")
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]
    if not lines:
        raise UsageError(f"--prompts {path}: the file has no prompts")
    if path.suffix != ".jsonl" and not lines[0][1].lstrip().startswith("{"):
        return [line for _, line in lines]
    prompts = []
    for n, line in lines:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise UsageError(f"--prompts {path}:{n}: not valid JSON ({err})") from err
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
            raise UsageError(f"--prompts {path}:{n}: expected an object with a string 'prompt' key")
        prompts.append(obj["prompt"])
    return prompts


def load_model(adapter_dir: Path, cfg: RunConfig, device: str | None = None) -> tuple[Any, Any]:
    """The adapter on a fresh base (the run's dtype/quantization, ``device`` or the run's), and the
    tokenizer the server used (:func:`fedlora.models.build.load_tokenizer`: same pad fallback)."""
    from fedlora.export.adapter import load_exported
    from fedlora.models.build import load_tokenizer

    model, _, _ = load_exported(adapter_dir, device=device or cfg.model.device)
    return model, load_tokenizer(cfg.model)


def generate(adapter_dir: Path, prompts: list[str], *, config: Path | None = None,
             max_new_tokens: int | None = None, batch_size: int | None = None,
             device: str | None = None) -> list[dict[str, str]]:
    """``[{"prompt", "answer"}]`` for ``prompts``, answered greedily by the exported adapter."""
    from fedlora.config.load import build_config
    from fedlora.training.generation import generate_answers, inference_prompt

    adapter_dir = Path(adapter_dir)
    manifest = read_manifest(adapter_dir)
    if manifest.get("task") != "causal_lm":
        raise UsageError(f"{adapter_dir}: a {manifest.get('task')!r} adapter; generation needs a "
                         "causal_lm one")
    if not prompts:
        raise UsageError("no prompts: give --prompt TEXT (repeatable) or --prompts FILE")
    tree, origin = load_run_config(adapter_dir, manifest, config)
    try:
        cfg = build_config(tree)
    except ConfigError as err:
        raise UsageError(f"{origin or 'fedlora.json'}: {err}") from err
    check_model_matches(cfg, manifest, str(origin or "fedlora.json"))
    if max_new_tokens is not None:
        federation = dataclasses.replace(cfg.federation, max_new_tokens=max_new_tokens)
        cfg = dataclasses.replace(cfg, federation=federation)
    model, tokenizer = load_model(adapter_dir, cfg, device)
    # one user turn each, after the run's system prompt: how the server asks its held-out prompts
    ids = [inference_prompt({"prompt": p}, tokenizer, cfg.data.system_prompt)[0] for p in prompts]
    answers = generate_answers(model, tokenizer, ids, max_new_tokens=cfg.federation.max_new_tokens,
                               batch_size=batch_size or cfg.train.eval_batch_size,
                               max_length=cfg.model.max_length)
    return [{"prompt": p, "answer": a} for p, a in zip(prompts, answers, strict=True)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.generate",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("adapter_dir", type=Path, help="an exported adapter directory (<run>/adapter)")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    parser.add_argument("--prompts", type=Path,
                        help="a file: one prompt per line, or JSONL with a 'prompt' key")
    parser.add_argument("--max-new-tokens", type=int, help="default: the run's federation.max_new_tokens")
    parser.add_argument("--batch-size", type=int, help="default: the run's train.eval_batch_size")
    parser.add_argument("--device", help="default: the run's model.device")
    parser.add_argument("--config", type=Path, help="the run's config.yaml (default: beside the adapter)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    args = parser.parse_args(argv)
    setup_logging()
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens: expected >= 1, got {args.max_new_tokens}")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size: expected >= 1, got {args.batch_size}")
    from fedlora.export.adapter import IntegrityError

    try:
        prompts = list(args.prompt) + (read_prompts(args.prompts) if args.prompts else [])
        results = generate(args.adapter_dir, prompts, config=args.config, max_new_tokens=args.max_new_tokens,
                           batch_size=args.batch_size, device=args.device)
    except (UsageError, IntegrityError) as err:
        print(f"simulations.generate: {err}", file=sys.stderr)
        return 2
    for i, result in enumerate(results, start=1):
        if args.json:
            print(json.dumps(result))
        else:
            print(f"[{i}] {result['prompt']}\n    -> {result['answer']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
