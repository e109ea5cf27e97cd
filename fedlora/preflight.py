"""Everything that can be checked before anything heavy starts, reported at once.

Why: without it a wrong label column, an unwritable output directory or a misspelt target module
surfaces 20 s in, after Ray has started, at the end of a long traceback, and a rerun into the
directory of a finished run has already deleted its summary. :func:`preflight` runs after the
schema checks (:func:`fedlora.config.load.build_config`) and before Ray or any model weights: it
opens the data (:func:`fedlora.data.checks.check_data`), resolves the model source and matches
``lora.target_modules`` on a weightless (meta-device) copy of the architecture, checks the output
directory (writable, and not holding a finished run unless ``overwrite=true`` or ``resume=``), and
checks a resume against its checkpoint. Problems are returned together; warnings are logged.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from fedlora.config.choices import AUTO_GPUS
from fedlora.config.load import ConfigError
from fedlora.config.schema import RunConfig
from fedlora.results.checkpoint import has_checkpoint, resume_problems

log = logging.getLogger(__name__)

#: Files and folders that mark a directory as holding a fedlora run.
RUN_MARKERS = ("config.yaml", "metrics.jsonl", "summary.json", "checkpoint", "adapter", "clients.jsonl")
#: What ``overwrite=true`` removes before the new run starts.
RUN_OUTPUTS = (*RUN_MARKERS, "metrics.csv", "metrics.png", "rejected.jsonl", "audit", "merged",
               "resumes.jsonl", "samples", "tensorboard")


class PreflightError(ConfigError):
    """The run cannot start; ``problems`` lists every reason (exit code 2)."""

    def __init__(self, problems: list[str]):
        super().__init__(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        self.args = (f"fedlora: cannot start ({len(self.problems)} problem(s)):\n{lines}",)

    def __str__(self) -> str:
        return str(self.args[0])


def holds_run(path: Path) -> list[str]:
    """The run files found in ``path`` (empty: not a run directory)."""
    return [m for m in RUN_MARKERS if (Path(path) / m).exists()]


def output_problems(cfg: RunConfig, out_dir: Path) -> list[str]:
    """``out_dir`` must be creatable and writable, and must not hold a run unless asked to."""
    out_dir = Path(out_dir)
    if cfg.resume:
        if not Path(cfg.resume).is_dir():
            return [f"resume: {cfg.resume!r} is not a directory"]
        return resume_problems(cfg)
    found = holds_run(out_dir) if out_dir.is_dir() else []
    problems = []
    if found and not cfg.overwrite:
        hint = " or resume=<dir> to continue it" if has_checkpoint(out_dir) else ""
        problems.append(
            f"output_dir: {out_dir} already holds a run ({', '.join(found)}); name a new output_dir{hint}, "
            "or add overwrite=true to replace it"
        )
    existing = next((p for p in [out_dir, *out_dir.parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        problems.append(f"output_dir: {existing} exists and is not a directory")
    elif existing is not None:
        try:
            with tempfile.NamedTemporaryFile(dir=existing, prefix=".fedlora-write-test-"):
                pass
        except OSError as err:
            problems.append(f"output_dir: cannot write in {existing} ({err.strerror or err})")
    return problems


def model_problems(cfg: RunConfig) -> list[str]:
    """Resolve ``model.source`` and match ``lora.target_modules`` (or resolve the ``lora.targets``
    preset) without loading any weights."""
    from fedlora.models.sources import ModelSourceError, resolve_model

    try:
        path = resolve_model(cfg.model).path
    except (ModelSourceError, FileNotFoundError, OSError) as err:
        return [str(err) if str(err).startswith("model.") else f"model.source: {err}"]
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

        from fedlora.models.peft_wrap import check_target_modules
        from fedlora.models.targets import resolve_target_modules

        config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
        classify = cfg.model.task == "classification"
        auto = AutoModelForSequenceClassification if classify else AutoModelForCausalLM
        with torch.device("meta"):
            skeleton = auto.from_config(config, trust_remote_code=cfg.model.trust_remote_code)
        check_target_modules(skeleton, resolve_target_modules(skeleton, cfg.lora))
    except ValueError as err:
        msg = str(err)
        return [msg if msg.startswith(("lora.", "model.")) else f"model.source: {path}: {msg}"]
    except (OSError, ImportError) as err:
        return [f"model.source: cannot read the model config in {path}: {err}"]
    return []


def client_gpus(cfg: RunConfig, cuda: bool | None = None) -> float:
    """The GPUs Ray gives each simulated client: ``federation.client_num_gpus``, auto-resolved.

    Why auto: Ray hides every GPU from an actor that requests none, so a literal 0 default trains
    on the CPU of a GPU machine. ``-1`` (the default) gives each client worker a whole GPU when the
    clients use CUDA (``model.device`` auto or cuda, and this machine has it): Ray then runs one
    worker per GPU, which trains its sampled clients in turn with one resident base model, the
    memory-safe choice for a large model. Fractions (e.g. 0.25) pack more workers on a GPU, each
    with its own copy of the base; 0 keeps the clients on CPU.
    """
    gpus = cfg.federation.client_num_gpus
    if gpus != AUTO_GPUS:
        return gpus
    if cfg.model.device not in ("auto", "cuda"):
        return 0.0
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    return 1.0 if cuda else 0.0


def device_problems(cfg: RunConfig, cuda: bool | None = None) -> tuple[list[str], list[str]]:
    """Problems and warnings about the device the *simulated* clients will train on.

    Why here: the clients of a simulation are Ray actors on this machine, so whether they get a GPU
    is known before anything starts, and a CUDA-only choice would otherwise fail in every client of
    round 1. Ray hides every GPU from an actor that requests none (it sets
    ``CUDA_VISIBLE_DEVICES=""``), so on a GPU machine clients see the GPU only with
    ``federation.client_num_gpus > 0``. A deployment's nodes decide their own device
    (:func:`fedlora.training.node.node_facts`) and check it when they train.

    Parameters
    ----------
    cfg
        The run config.
    cuda
        Whether this machine has a CUDA device (``None``: ask torch).

    Returns
    -------
    tuple[list[str], list[str]]
        ``(problems, warnings)``.
    """
    from fedlora.training.optim import NEEDS_CUDA

    device, optimizer = cfg.model.device, cfg.train.optimizer
    if device not in ("auto", "cuda"):
        return [], []  # cpu/mps with a CUDA-only optimizer is a config error (fedlora.config.load)
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    wants = [f"model.device={device!r}"] if device == "cuda" else []
    if optimizer in NEEDS_CUDA:
        wants.append(f"train.optimizer={optimizer!r}")
    field = "train.optimizer" if optimizer in NEEDS_CUDA else "model.device"
    need = "needs" if len(wants) == 1 else "need"
    if not cuda:
        if not wants:
            return [], []  # auto on a CPU machine: CPU, as asked
        fix = ("use model.device=cpu" if field == "model.device"
               else "use train.optimizer=adamw or adamw_8bit")
        return [f"{field}: {' and '.join(wants)} {need} a CUDA device, and this machine has none "
                f"(torch.cuda.is_available() is False); {fix}"], []
    if client_gpus(cfg, cuda) > 0:
        return [], []
    hidden = ("federation.client_num_gpus=0 makes Ray hide this machine's GPU from the simulated clients "
              "(CUDA_VISIBLE_DEVICES=''); set federation.client_num_gpus, e.g. -1 (auto: one worker per GPU) "
              "or 0.25 for four clients per GPU")
    if wants:
        return [f"federation.client_num_gpus: {' and '.join(wants)} {need} a GPU in every client, "
                f"but {hidden}"], []
    return [], [f"model.device=auto: the clients will train on CPU: {hidden}"]


def preflight(cfg: RunConfig, out_dir: Path, check_model: bool = True, simulation: bool = True) -> list[str]:
    """Check data, model, output directory and resume; return the warnings.

    ``simulation``: the clients run on this machine (fedlora's Simulation Engine), so their device
    is checked here too (:func:`device_problems`); ``flwr run`` passes ``False``.

    Raises
    ------
    PreflightError
        Listing every problem found, each naming the config field (and file or row) to fix.
    """
    from fedlora.data.checks import check_data

    problems = output_problems(cfg, out_dir)
    if cfg.tensorboard:
        from fedlora.results.tensorboard import tensorboard_problem

        problems += [p for p in [tensorboard_problem()] if p]
    report = check_data(cfg)
    problems += report.problems
    if check_model and not any(p.startswith("model.source") for p in problems):
        problems += model_problems(cfg)
    warnings = list(report.warnings)
    if simulation:
        device, device_warnings = device_problems(cfg)
        problems += device
        warnings += device_warnings
    if problems:
        raise PreflightError(problems)
    for warning in warnings:
        log.warning("%s", warning)
    return warnings


def clear_previous_run(out_dir: Path) -> list[str]:
    """With ``overwrite=true``: remove the previous run's outputs (only fedlora's own files)."""
    removed = []
    for name in RUN_OUTPUTS:
        path = Path(out_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(name)
    if removed:
        log.warning("overwrite=true: removed the previous run's %s from %s", ", ".join(removed), out_dir)
    return removed
