"""Write and reload the global adapter in PEFT's own format.

The adapter is written in PEFT's own layout (``adapter_config.json`` +
``adapter_model.safetensors``), so anything that loads PEFT adapters loads ours: by
``PeftModel.save_pretrained`` itself when the server holds the loaded model (central evaluation
on), else from a weightless meta-device copy, so the server never loads the base model (but once, at
export, to write a frozen classification head: :func:`write_frozen_head`). Next to it go a
model card (``README.md``) with the run's provenance, ``fedlora.json`` (what is needed to rebuild
the base: source, task, labels) and ``SHA256SUMS``. :func:`load_exported` reloads it the way a
user would: a *fresh* base model from disk, then ``PeftModel.from_pretrained``.

rsLoRA and DoRA adapters keep their variant: ``adapter_config.json`` says ``use_rslora``/``use_dora``
as the run did (the adapter's own flags must match ``lora.use_rslora``/``lora.use_dora``), a
folded-scaling adapter carries ``alpha = sqrt(r)`` per module under rsLoRA (scaling 1), and a DoRA
adapter's ``lora_magnitude_vector`` tensors are written with its factors.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import load_file
from safetensors.torch import save_file as safe_save_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from fedlora.aggregation import GlobalAdapter
from fedlora.config.schema import LoraConfig, ModelConfig, RunConfig
from fedlora.export.card import model_card, stamp_adapter_config
from fedlora.lora.state import LoraStateError, check_state_fits, expected_shapes, set_lora_state
from fedlora.models.build import LOAD_SEED, build_lora_model
from fedlora.models.device import quantization_kwargs, select_device, select_dtype
from fedlora.models.peft_wrap import quiet_peft_deprecation
from fedlora.models.shapes import meta_lora_model, meta_target_modules
from fedlora.models.shared_weights import load_shared
from fedlora.models.sources import resolve_model

log = logging.getLogger(__name__)

MANIFEST = "fedlora.json"


def save_adapter(
    cfg: RunConfig, adapter: GlobalAdapter, labels: list[str] | None, out_dir: Path,
    provenance: dict[str, Any],
) -> Path:
    """Write ``adapter`` as a PEFT adapter directory; return its path.

    With ``federation.central_eval`` the server already holds the loaded PeftModel (cached), and
    PEFT's own ``save_pretrained`` writes the files (a non-default adapter name would put them in a
    subfolder, which is flattened here). Without it the server must not load the base model, so
    :func:`write_weightless` writes the same two files from a meta-device copy.
    """
    check_variant(cfg.lora, adapter)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lora = dataclasses.replace(cfg.lora, alpha=adapter.alpha)
    num_labels = len(labels) if labels else None
    frozen_head = cfg.model.task == "classification" and not cfg.lora.train_head
    if not cfg.federation.central_eval and not frozen_head:
        write_weightless(cfg.model, lora, adapter, num_labels, out_dir)
    else:
        if not cfg.federation.central_eval:
            log.info("lora.train_head=false: loading the base model once to write its frozen "
                     "classification head into the adapter (PEFT reloads no classifier adapter without it)")
        model = build_lora_model(cfg.model, lora, rank=adapter.rank, num_labels=num_labels,
                                 rank_pattern=adapter.rank_pattern, alpha_pattern=adapter.alpha_pattern)
        set_lora_state(model, adapter.state)
        name = model.active_adapter
        with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
            model.save_pretrained(tmp, selected_adapters=[name])
            written = Path(tmp) / name if name != "default" else Path(tmp)
            for path in written.iterdir():
                shutil.move(str(path), out_dir / path.name)
        if frozen_head:
            write_frozen_head(model, cfg.model, lora, adapter, num_labels, out_dir)
    manifest = {
        "fedlora_version": "0.1.0",
        "model": dataclasses.asdict(cfg.model),
        "base_model_path": resolve_model(cfg.model).path,
        "task": cfg.model.task,
        "labels": labels,
        "rank": adapter.rank,
        "alpha": adapter.alpha,
        "rank_pattern": adapter.rank_pattern,
        "alpha_pattern": adapter.alpha_pattern,
        "use_rslora": adapter.use_rslora,
        "use_dora": adapter.use_dora,
        "target_modules": meta_target_modules(cfg.model, cfg.lora),  # a lora.targets preset resolved
        **provenance,
    }
    stamp_adapter_config(out_dir, cfg.model, manifest["base_model_path"])  # hub id, where one is known
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    (out_dir / "README.md").write_text(model_card(cfg, manifest))
    _write_checksums(out_dir)
    log.info("exported PEFT adapter to %s", out_dir)
    return out_dir


def check_variant(lora_cfg: LoraConfig, adapter: GlobalAdapter) -> None:
    """Refuse to export ``adapter`` under a config of another LoRA variant.

    Why: the PEFT config is built from ``lora_cfg``; an adapter whose factors were scaled for
    ``alpha / r`` written with ``use_rslora: true`` (or a DoRA state without it) would load
    without an error and compute something else.
    """
    for flag in ("use_rslora", "use_dora"):
        if getattr(adapter, flag) != getattr(lora_cfg, flag):
            raise ValueError(f"lora.{flag}: the adapter to export has {flag}={getattr(adapter, flag)} but "
                             f"the config says {getattr(lora_cfg, flag)}; export it with the config it was "
                             "trained under")


def write_weightless(
    model_cfg: ModelConfig, lora_cfg: LoraConfig, adapter: GlobalAdapter, num_labels: int | None,
    out_dir: Path,
) -> None:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` without loading the base model.

    The PEFT config comes from a meta-device PeftModel wrapped exactly as in training
    (:func:`fedlora.models.shapes.meta_lora_model`), finished as ``save_pretrained`` finishes it
    (``base_model_name_or_path``, ``inference_mode``). The state's keys are already PEFT's saved
    keys (``get_peft_model_state_dict`` format, checked against the skeleton), so the tensors are
    written as they are, in the state's own dtype: ``PeftModel.from_pretrained`` casts them to the
    base's dtype on load, as it would a file written from a loaded model.
    """
    model = meta_lora_model(model_cfg, lora_cfg, rank=adapter.rank, num_labels=num_labels,
                            rank_pattern=adapter.rank_pattern, alpha_pattern=adapter.alpha_pattern)
    check_state_fits(adapter.state, expected_shapes(model))
    config = copy.deepcopy(model.peft_config[model.active_adapter])
    if config.base_model_name_or_path is None:
        config.base_model_name_or_path = model.base_model.model.__dict__.get("name_or_path") or None
    config.inference_mode = True
    # Own copies: safetensors refuses tensors that share storage (slices of one aggregated tensor).
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in adapter.state.items()}
    safe_save_file(tensors, str(Path(out_dir) / SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})
    config.save_pretrained(str(out_dir))


def write_frozen_head(
    model: PeftModel, model_cfg: ModelConfig, lora_cfg: LoraConfig, adapter: GlobalAdapter,
    num_labels: int | None, out_dir: Path,
) -> list[str]:
    """Add a frozen (``lora.train_head=false``) classification head to an exported adapter.

    Why: PEFT's sequence-classification wrapper always wraps the head in ``modules_to_save`` and
    then requires its tensors in the adapter file, so an adapter written without them fails
    ``PeftModel.from_pretrained`` with a ``KeyError``. Training never sends the frozen head (every
    process draws the same one under :data:`~fedlora.models.build.LOAD_SEED`, or reads it from the
    checkpoint), but the export must carry it: it is part of what the adapter computes, and a
    user's reload should not depend on reproducing a random initialisation. The tensors are read
    from ``model`` (the frozen head as trained), under the keys and with the ``modules_to_save``
    that PEFT writes for a trained head (taken from a weightless twin with ``train_head=true``), so
    the files are what ``save_pretrained`` writes for an adapter whose head is this one.
    Returns the head keys added.
    """
    twin = meta_lora_model(model_cfg, dataclasses.replace(lora_cfg, train_head=True), rank=adapter.rank,
                           num_labels=num_labels, rank_pattern=adapter.rank_pattern,
                           alpha_pattern=adapter.alpha_pattern)
    head_shapes = {k: v for k, v in expected_shapes(twin).items() if k not in adapter.state}
    weights = model.state_dict()
    missing = sorted(k for k in head_shapes if k not in weights or tuple(weights[k].shape) != head_shapes[k])
    if missing:
        raise LoraStateError(f"the frozen classification head of {model_cfg.name} has no tensor {missing} "
                             "of the shape PEFT expects; cannot export a reloadable adapter")
    path = Path(out_dir) / SAFETENSORS_WEIGHTS_NAME
    tensors = load_file(str(path))
    tensors.update({k: weights[k].detach().to("cpu", copy=True).contiguous() for k in head_shapes})
    safe_save_file(tensors, str(path), metadata={"format": "pt"})
    config_path = Path(out_dir) / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["modules_to_save"] = twin.peft_config[twin.active_adapter].modules_to_save
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return sorted(head_shapes)


def save_merged(adapter_dir: Path, out_dir: Path) -> Path:
    """Merge the exported adapter into a fresh full-precision base and save the full model."""
    model, tokenizer, _ = load_exported(adapter_dir, device="cpu", quantization="none")
    merged = model.merge_and_unload()
    merged.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    _write_checksums(Path(out_dir))
    log.info("wrote the merged full model to %s", out_dir)
    return Path(out_dir)


def load_exported(
    adapter_dir: Path, device: str = "cpu", quantization: str | None = None
) -> tuple[PeftModel, Any, dict[str, Any]]:
    """Reload an export as a user would: fresh base from disk + ``PeftModel.from_pretrained``.

    Returns ``(model, tokenizer, manifest)``. The base is loaded directly with transformers (not
    through fedlora's per-process cache), so nothing carried over from training can leak in; a
    converted CPU base (``model.share_weights``) is read from its shared copy, whose tensors were
    checked against a load from the source when it was written.
    ``quantization`` defaults to the training run's (``'nf4'`` reloads a 4-bit base, as the
    server evaluated it); pass ``'none'`` for a full-precision base.
    """
    adapter_dir = Path(adapter_dir)
    verify_checksums(adapter_dir)
    manifest = json.loads((adapter_dir / MANIFEST).read_text())
    model_cfg = ModelConfig(**{**manifest["model"], "device": device})
    if quantization is not None:
        model_cfg = dataclasses.replace(model_cfg, quantization=quantization)
    resolved = resolve_model(model_cfg)
    base_path = resolved.path
    dev = select_device(model_cfg.device)
    dtype = select_dtype(model_cfg.dtype, dev)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    kwargs: dict[str, Any] = {"dtype": dtype, **quantization_kwargs(model_cfg, dev, dtype)}
    labels = manifest["labels"] if manifest["task"] == "classification" else None

    def load_base(path: str) -> Any:
        if labels is None:
            return AutoModelForCausalLM.from_pretrained(path, **kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(LOAD_SEED)  # a newly sized head as in training (the adapter's replaces it)
            return AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=len(labels), id2label=dict(enumerate(labels)),
                label2id={name: i for i, name in enumerate(labels)}, ignore_mismatched_sizes=True, **kwargs,
            )  # a checkpoint head of another label count is re-drawn; the adapter's head replaces it

    if model_cfg.share_weights and dev.type == "cpu" and model_cfg.quantization == "none":
        # a converted CPU base comes from its verified shared copy (the same tensors, mapped), so
        # a reload beside a running evaluator holds no second private copy of the weights
        base, _ = load_shared(resolved, model_cfg, len(labels) if labels else None, dtype, load_base)
    else:
        base = load_base(base_path)
    if labels is not None and base.config.pad_token_id is None:
        base.config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    if model_cfg.quantization == "none":
        base = base.to(dev)
    with quiet_peft_deprecation():
        model = PeftModel.from_pretrained(base, str(adapter_dir))
    for config in model.peft_config.values():  # the file's hub id is for other machines; PEFT would query
        config.base_model_name_or_path = base_path  # the hub for it when reading the state back
    model.eval()
    return model, tokenizer, manifest


class IntegrityError(ValueError):
    """An exported file does not match its ``SHA256SUMS`` line (corrupted or edited after export)."""


def verify_checksums(adapter_dir: Path) -> list[str]:
    """Check every file listed in ``SHA256SUMS``; return the names checked.

    Why: an adapter copied between machines can arrive truncated or flipped, and PEFT would load
    a corrupted float without a word. A directory without ``SHA256SUMS`` (not written by fedlora,
    or deliberately stripped) is loaded with a warning.

    Raises
    ------
    IntegrityError
        Naming the first file that is missing or whose SHA-256 differs.
    """
    sums = Path(adapter_dir) / "SHA256SUMS"
    if not sums.is_file():
        log.warning("%s has no SHA256SUMS: its files cannot be checked", adapter_dir)
        return []
    checked = []
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        expected, _, name = line.partition("  ")
        path = Path(adapter_dir) / name
        if not path.is_file():
            raise IntegrityError(f"{path}: listed in SHA256SUMS but missing")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != expected:
            raise IntegrityError(
                f"{path}: SHA-256 {digest[:16]}... does not match SHA256SUMS ({expected[:16]}...); "
                "the file is corrupted or was changed after export"
            )
        checked.append(name)
    return checked


def _write_checksums(out_dir: Path) -> None:
    lines = []
    for path in sorted(out_dir.iterdir()):
        if path.is_file() and path.name != "SHA256SUMS":
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            lines.append(f"{digest}  {path.name}")
    (out_dir / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def state_checksum(state: dict[str, torch.Tensor]) -> str:
    """A short hash of a state's keys and values (for logs and model cards)."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
