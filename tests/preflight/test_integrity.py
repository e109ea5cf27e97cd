"""An exported adapter is checked against SHA256SUMS on load: one flipped byte names the file."""

from __future__ import annotations

import pytest

from fedlora.export.adapter import IntegrityError, _write_checksums, verify_checksums


def _export(tmp_path):
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 4)
    (d / "adapter_config.json").write_text('{"r": 4}')
    _write_checksums(d)
    return d


def test_intact_export_passes(tmp_path):
    d = _export(tmp_path)
    assert verify_checksums(d) == ["adapter_config.json", "adapter_model.safetensors"]


def test_one_corrupted_byte_names_the_file(tmp_path):
    d = _export(tmp_path)
    data = bytearray((d / "adapter_model.safetensors").read_bytes())
    data[100] ^= 0x01
    (d / "adapter_model.safetensors").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"adapter_model\.safetensors: SHA-256 .* does not match"):
        verify_checksums(d)


def test_a_missing_listed_file_is_named(tmp_path):
    d = _export(tmp_path)
    (d / "adapter_config.json").unlink()
    with pytest.raises(IntegrityError, match=r"adapter_config\.json: listed in SHA256SUMS but missing"):
        verify_checksums(d)


def test_load_exported_refuses_a_corrupted_export(tmp_path):
    from fedlora.export import load_exported

    d = _export(tmp_path)
    (d / "adapter_config.json").write_text('{"r": 5}')
    with pytest.raises(IntegrityError, match=r"adapter_config\.json"):
        load_exported(d)
