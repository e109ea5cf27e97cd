"""Turn ``model.source`` into a local Hugging Face model directory.

Everything downstream (tokenizer, base model, export) only ever sees a plain local directory, so
``from_pretrained`` never needs the network. The forms that are not already a directory are
materialised once into :func:`cache_dir`:

* ``package:<module>[/<subdir>]`` -- weights shipped inside an installed Python package (located
  with :func:`importlib.util.find_spec`, which does *not* import the package: some model packages
  import optional dependencies at import time).
* ``gguf-package:<module>/<file.gguf>`` -- a GGUF file inside a package. transformers can read GGUF
  but then refuses ``save_pretrained``, quantisation and is slow (~15 s) to load, so the file is
  dequantised once to safetensors under ``<cache>/models/<module>-<stem>/``.
* ``tiny:bert`` / ``tiny:llama`` -- random models built in code (:mod:`fedlora.models.tiny`).
* an existing local directory, or a Hugging Face hub id (local HF cache first; download only when
  the hub is not offline).

Where each packaged source comes from on the Hugging Face hub (for model cards and
``adapter_config.json``) is in :mod:`fedlora.models.origins`.

Materialisation happens under a file lock into a temporary directory that is renamed into place,
because several simulation worker processes may ask for the same model at the same moment.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path

from filelock import FileLock

from fedlora.config.schema import ModelConfig

logger = logging.getLogger(__name__)

# Hub repos often carry the same weights in several formats; only safetensors + configs are needed.
_HUB_IGNORE = ["*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack", "*.onnx", "*.gguf", "*.ot", "onnx/*",
               "openvino/*"]


class ModelSourceError(ValueError):
    """``model.source`` cannot be turned into a local model directory."""


@dataclass(frozen=True)
class ResolvedModel:
    """A model directory ready for ``from_pretrained``.

    Attributes
    ----------
    path
        Local Hugging Face model directory (``config.json``, safetensors, tokenizer files).
    description
        Human-readable provenance, for logs and run metadata.
    """

    path: str
    description: str


def cache_dir() -> Path:
    """Directory for converted, generated and quantized models.

    It lives in the user's cache, never inside the checkout: a Flower deployment runs the code from
    an app bundle (``$FLWR_HOME/apps/<bundle hash>/``) whose hash changes with every code change, so
    a cache next to the code would redo every conversion (GGUF dequantisation, NF4 quantization)
    after each edit. Simulation and deployment on one machine therefore share one cache.

    Returns
    -------
    pathlib.Path
        ``$FEDLORA_CACHE`` if set; else ``$XDG_CACHE_HOME/fedlora`` if ``XDG_CACHE_HOME`` is set;
        else ``~/.cache/fedlora``. Not created here.
    """
    env = os.environ.get("FEDLORA_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).expanduser().is_absolute():  # the XDG spec says to ignore relative paths
        return Path(xdg).expanduser() / "fedlora"
    return Path.home() / ".cache" / "fedlora"


def resolve_model(cfg: ModelConfig) -> ResolvedModel:
    """Resolve ``cfg.source`` to a local model directory, converting or building it once if needed.

    Parameters
    ----------
    cfg
        The model configuration; only ``source`` is used here.

    Returns
    -------
    ResolvedModel

    Raises
    ------
    ModelSourceError
        If the source names a missing package or file, an unknown form, or a hub model that is not
        cached while the hub is offline.
    """
    source = cfg.source.strip()
    if not source:
        raise ModelSourceError("model.source: must not be empty")
    if source.startswith("package:"):
        return _resolve_package(source.removeprefix("package:"))
    if source.startswith("gguf-package:"):
        return _resolve_gguf_package(source.removeprefix("gguf-package:"))
    if source.startswith("tiny:"):
        return _resolve_tiny(source.removeprefix("tiny:"))
    local = Path(source).expanduser()
    if local.is_dir():
        _require_config(local, source)
        return ResolvedModel(str(local.resolve()), f"local directory {local.resolve()}")
    if ":" in source or source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise ModelSourceError(
            f"model.source: {source!r} is neither an existing local directory nor a known form; expected "
            "'package:<module>[/<subdir>]', 'gguf-package:<module>/<file.gguf>', 'tiny:bert', 'tiny:llama', "
            "a local model directory or a Hugging Face hub id"
        )
    return _resolve_hub(source)


def _package_dir(module: str, source: str) -> Path:
    spec = find_spec(module) if module and "." not in module else None
    if spec is None or not spec.submodule_search_locations:
        pip_name = module.replace("_", "-")
        raise ModelSourceError(
            f"model.source: {source!r} needs the Python package {module!r}, which is not installed; "
            f"install it with `pip install {pip_name}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


@cache
def _distribution(module: str) -> str:
    """``"<dist> <version>: <summary>"`` of the distribution that installs ``module`` (for provenance)."""
    names = metadata.packages_distributions().get(module, [])
    if not names:
        return module
    try:
        meta = metadata.metadata(names[0])
    except metadata.PackageNotFoundError:
        return names[0]
    summary = meta.get("Summary") or ""
    return f"{names[0]} {meta.get('Version')}" + (f": {summary.rstrip('.')}" if summary else "")


def _require_config(path: Path, source: str) -> None:
    if not (path / "config.json").is_file():
        raise ModelSourceError(
            f"model.source: {source!r} resolves to {path}, which has no config.json "
            "(not a Hugging Face model directory)"
        )


def _resolve_package(spec: str) -> ResolvedModel:
    source = f"package:{spec}"
    module, _, subdir = spec.partition("/")
    path = _package_dir(module, source) / subdir if subdir else _package_dir(module, source)
    if not path.is_dir():
        raise ModelSourceError(f"model.source: {source!r}: package {module!r} has no directory {subdir!r}")
    _require_config(path, source)
    where = f"{module}/{subdir}" if subdir else module
    return ResolvedModel(str(path), f"package {where} ({_distribution(module)})")


def has_config(path: Path) -> bool:
    """Whether ``path`` looks like a finished model directory (the default completeness check)."""
    return (path / "config.json").is_file()


TEMP_INFIX = ".tmp-"
""":func:`materialise` builds ``<name>`` in ``.<name>.tmp-<pid>`` and renames it into place."""


def materialise(parent: Path, name: str, build: Callable[[Path], None], what: str,
                complete: Callable[[Path], bool] = has_config) -> Path:
    """Create ``<parent>/<name>`` once, under a lock, via a temp dir renamed into place.

    Several worker processes may ask for the same directory at once: the lock makes one of them build
    it, and the rename means no process ever sees a half-written one. A directory that fails
    ``complete`` (a crash before the rename finished, a manual deletion of files) is rebuilt.
    """
    final = parent / name
    if complete(final):
        return mark_used(final)
    parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(parent / f"{name}.lock")):
        if complete(final):  # another process finished while we waited
            return mark_used(final)
        # Holding the lock, no other build of this entry runs: a temp dir left here is from a builder
        # that was killed (an OOM kill while converting a large model), and may be gigabytes.
        for stale in parent.glob(f".{name}{TEMP_INFIX}*"):
            logger.warning("removing %s, left behind by a build that did not finish", stale)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = parent / f".{name}{TEMP_INFIX}{os.getpid()}"
        if final.exists():  # a half-written or damaged leftover
            logger.warning("%s is incomplete; rebuilding it", final)
            shutil.rmtree(final)
        logger.info("building %s into %s (once; later runs reuse it)", what, final)
        start = time.perf_counter()
        try:
            build(tmp)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("built %s in %.1f s", what, time.perf_counter() - start)
    return mark_used(final)


LAST_USED = ".last-used"
"""Touched inside a cache entry each time a process uses it: ``python -m fedlora.models.cache``
prunes by it."""


def mark_used(path: Path) -> Path:
    """Record that ``path`` (a cache entry) was used now; a read-only cache is left as it is."""
    with contextlib.suppress(OSError):
        (path / LAST_USED).touch()
    return path


def _resolve_tiny(kind: str) -> ResolvedModel:
    from fedlora.models.tiny import TINY_KINDS, build_tiny

    if kind not in TINY_KINDS:
        choices = [f"tiny:{k}" for k in TINY_KINDS]
        raise ModelSourceError(f"model.source: unknown tiny model 'tiny:{kind}'; expected one of {choices}")
    path = materialise(cache_dir() / "models", f"tiny-{kind}", lambda out: build_tiny(kind, out),
                       f"tiny {kind} model")
    return ResolvedModel(str(path), f"tiny:{kind} (random weights built in code, cached in {path})")


def _resolve_gguf_package(spec: str) -> ResolvedModel:
    source = f"gguf-package:{spec}"
    module, _, file = spec.partition("/")
    if not file.endswith(".gguf"):
        raise ModelSourceError(f"model.source: {source!r}: expected 'gguf-package:<module>/<file.gguf>'")
    pkg = _package_dir(module, source)
    if not (pkg / file).is_file():
        found = sorted(p.name for p in pkg.glob("*.gguf"))
        raise ModelSourceError(
            f"model.source: {source!r}: no file {file!r} in package {module!r}; it has {found}"
        )
    name = f"{module}-{Path(file).stem}"
    path = materialise(cache_dir() / "models", name, lambda out: _convert_gguf(pkg, file, out),
                       f"safetensors from {file}")
    description = f"package {module} ({_distribution(module)}), {file} dequantised to {path}"
    return ResolvedModel(str(path), description)


def _convert_gguf(pkg: Path, file: str, out: Path) -> None:
    """Dequantise a GGUF file to a float32 safetensors model directory."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(pkg), gguf_file=file)
    model = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=file, dtype=torch.float32)
    # transformers refuses save_pretrained on a GGUF-loaded model; the weights are already dense here.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    seconds = time.perf_counter() - start
    provenance = {"gguf_file": str(pkg / file), "transformers": transformers.__version__,
                  "dtype": "float32", "convert_seconds": round(seconds, 2)}
    (out / "fedlora_source.json").write_text(json.dumps(provenance, indent=2) + "\n")
    logger.info("converted %s to safetensors in %.1f s", file, seconds)


def _hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _resolve_hub(repo_id: str) -> ResolvedModel:
    from huggingface_hub import snapshot_download, try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        path = Path(cached).parent
        return ResolvedModel(str(path), f"hub model {repo_id} (local HF cache {path})")
    if _hub_offline():
        raise ModelSourceError(
            f"model.source: {repo_id!r} is not a local directory, an installed package or a cached hub "
            "model, and the hub is offline (HF_HUB_OFFLINE=1)"
        )
    logger.info("downloading %s from the Hugging Face hub", repo_id)
    try:
        path = snapshot_download(repo_id, ignore_patterns=_HUB_IGNORE)
    except Exception as exc:
        raise ModelSourceError(f"model.source: could not download {repo_id!r} from the hub: {exc}") from exc
    return ResolvedModel(path, f"hub model {repo_id} (downloaded to {path})")
