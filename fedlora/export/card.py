"""The model card (README.md) written next to an exported adapter."""

from __future__ import annotations

from typing import Any

from fedlora.config.schema import RunConfig


def _selected(manifest: dict[str, Any]) -> str:
    sel = manifest.get("selected") or {}
    if sel.get("select") == "best":
        metric = str(sel.get("metric", "")).removeprefix("eval_")
        return f"{sel.get('round')}, the best by {metric} (export.select=best)"
    return f"{sel.get('round', manifest.get('rounds'))}, the last (export.select=last)"


def model_card(cfg: RunConfig, manifest: dict[str, Any]) -> str:
    """Markdown with how to load the adapter and where it came from."""
    classification = cfg.model.task == "classification"
    task_cls = "AutoModelForSequenceClassification" if classification else "AutoModelForCausalLM"
    labels = manifest.get("labels")
    extra = f", num_labels={len(labels)}" if labels else ""
    final = manifest.get("final_metrics") or {}
    metrics = "\n".join(f"| {k} | {v:.4f} |" for k, v in final.items() if isinstance(v, float)) or "| - | - |"
    base = (f"`{cfg.model.source}` ({cfg.model.task}, {cfg.model.dtype}, "
            f"quantization {cfg.model.quantization})")
    targets = ", ".join(cfg.lora.target_modules)
    data = f"`{cfg.data.source}` split `{cfg.data.partitioner}` (field `{cfg.data.partition_field}`)"
    clients = f"{manifest.get('num_clients')} / {manifest.get('rounds')}"
    fraction = f"fraction {cfg.federation.fraction_train} per round"
    local = f"{cfg.train.local_steps} steps x batch {cfg.train.batch_size}"
    lr = f"lr {cfg.train.lr} ({cfg.train.lr_schedule})"
    return f"""---
library_name: peft
tags: [lora, federated-learning, flower, fedlora]
---
# Federated LoRA adapter ({cfg.strategy.name}) for {cfg.model.name}

Trained with [fedlora](https://github.com/) by federated learning: {manifest.get("num_clients")} clients,
{manifest.get("rounds")} rounds, strategy `{cfg.strategy.name}`. Only LoRA tensors left the clients.

## Load

```python
from transformers import {task_cls}
from peft import PeftModel
base = {task_cls}.from_pretrained("{manifest.get("base_model_path")}"{extra})
model = PeftModel.from_pretrained(base, "<this directory>")
```
or `fedlora.export.load_exported("<this directory>")`, which also restores the label names.

## Provenance

| field | value |
|---|---|
| base model | {base} |
| adapter | rank {manifest.get("rank")}, alpha {manifest.get("alpha")}, targets {targets} |
| data | {data}, seed {cfg.data.seed} |
| labels | {labels} |
| strategy | `{cfg.strategy.name}` |
| clients / rounds | {clients} ({fraction}) |
| local training | {local}, {lr} |
| run directory | `{manifest.get("run_dir")}` |
| adapter checksum | `{manifest.get("state_checksum")}` |
| exported round | {_selected(manifest)} |

## Central evaluation of the exported round

| metric | value |
|---|---|
{metrics}
"""
