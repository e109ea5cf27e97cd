"""16-bit wires end to end: half the tensor bytes, fp32 aggregation, the oracle still exact.

Three real runs (``python -m simulations.run``, smoke preset, 2 rounds, FFA-LoRA, the same seeds,
``export.audit=true``), one per ``federation.wire_dtype``: float32, float16, bfloat16.

* Bytes. A record is one packed array of values in the wire dtype plus a JSON layout (keys and
  shapes) as uint8, each serialized as an ``.npy`` buffer with its 128-byte header
  (:mod:`fedlora.packing`, :func:`fedlora.lora.codec.record_nbytes`). The layout and the headers do
  not depend on the dtype, so the *tensor* bytes halve exactly and the fixed part stays: per round
  ``bytes(float32) = 4 T + F`` and ``bytes(16-bit) = 2 T + F``, with ``T`` the values sent (FFA:
  every client's B and head, down and up alike; A never travels) counted from the audit files and
  ``F`` the per-record overhead, the same for every wire.
* fp32 aggregation. Replies are decoded to float32 before aggregating: the audited client
  adapters hold values that are exactly representable in the wire dtype (they are what arrived),
  while the audited global state and the exported adapter are float32 and not representable in it.
* Oracle. The exact update ``sum_k p_k s_k B_k A`` is recomputed in float64 from the audited
  client adapters (p_k and s_k from their metadata) and compared with the audited global update.
  Because the client states were rounded to the wire dtype *before* aggregation, the oracle of what
  arrived is matched to float32 round-off (measured ~4e-8), not to the wire's precision (2^-11
  for float16, 2^-8 for bfloat16): the test asserts a relative Frobenius error below 1e-6 for
  every wire, float32 included, far tighter than the wire's rounding (1e-3 / 1e-4 would hide an
  aggregation done in 16 bits). The head is the p_k-weighted mean, checked the same way.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fedlora.lora.codec import record_nbytes, to_arrayrecord
from fedlora.results import read_jsonl
from tests.integration.runs import run_to_end

pytestmark = pytest.mark.integration
RUN = ["preset=smoke", "strategy=ffa", "export.audit=true", "progress=log"]
WIRES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
ROUNDS = (1, 2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for wire in ("float32", *WIRES):
        run_dir = tmp_path_factory.mktemp(f"wire-{wire}")
        out[wire] = (run_dir, run_to_end([*RUN, f"federation.wire_dtype={wire}"], run_dir))
    return out


def _clients(run_dir, rnd):
    """``{partition: (tensors in float64, metadata)}`` of one round's audited client adapters."""
    out = {}
    for path in sorted((run_dir / "audit" / f"round-{rnd:04d}").glob("client-*.safetensors")):
        with safe_open(str(path), "pt") as f:
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            out[int(path.stem.split("-")[1])] = ({k: f.get_tensor(k) for k in f.keys()}, meta)  # noqa: SIM118
    return out


def _sent(state):
    """What FFA sends a client and gets back: B and the head (A is regenerated, never sent)."""
    return {k: v for k, v in state.items() if "lora_A" not in k}


def _overhead(state, wire):
    """F of one record: its bytes beyond the values (npy headers and layout)."""
    values = sum(t.numel() for t in state.values())
    return record_nbytes(to_arrayrecord(state, wire)) - values * (4 if wire == "float32" else 2)


@pytest.mark.parametrize("wire", list(WIRES))
def test_tensor_bytes_halve_exactly(runs, wire):
    rows32 = {r["round"]: r for r in read_jsonl(runs["float32"][0] / "metrics.jsonl")}
    rows16 = {r["round"]: r for r in read_jsonl(runs[wire][0] / "metrics.jsonl")}
    clients32 = {(c["round"], c["partition_id"]): c for c in read_jsonl(runs["float32"][0] / "clients.jsonl")}
    clients16 = {(c["round"], c["partition_id"]): c for c in read_jsonl(runs[wire][0] / "clients.jsonl")}
    for rnd in ROUNDS:
        clients = _clients(runs[wire][0], rnd)
        assert len(clients) == 2
        total_t = total_f = 0
        for pid, (state, _) in clients.items():
            sent = _sent(state)
            t = sum(v.numel() for v in sent.values())
            f = _overhead(sent, wire)
            assert f == _overhead(sent, "float32") > 0  # the fixed part does not depend on the dtype
            for key in ("bytes_up", "bytes_down"):
                assert clients32[(rnd, pid)][key] == 4 * t + f, (rnd, pid, key)
                assert clients16[(rnd, pid)][key] == 2 * t + f, (rnd, pid, key)
            total_t, total_f = total_t + t, total_f + f
        for key in ("bytes_up", "bytes_down"):  # the round's totals: tensor bytes exactly halved
            assert rows32[rnd][key] - total_f == 2 * (rows16[rnd][key] - total_f) == 4 * total_t, (rnd, key)


@pytest.mark.parametrize("wire", list(WIRES))
def test_aggregation_is_fp32_over_what_arrived(runs, wire):
    run_dir, summary = runs[wire]
    for rnd in ROUNDS:
        for state, _ in _clients(run_dir, rnd).values():
            for key, t in _sent(state).items():  # exactly what the 16-bit reply carried
                assert t.dtype == torch.float32
                assert torch.equal(t.to(WIRES[wire]).to(torch.float32), t), key
        after = load_file(str(run_dir / "audit" / f"round-{rnd:04d}" / "global-after.safetensors"))
        assert {t.dtype for t in after.values()} == {torch.float32}
        b = torch.cat([t.reshape(-1) for k, t in after.items() if k.endswith(".B")])
        assert not torch.equal(b.to(WIRES[wire]).to(torch.float32), b)  # averaged in fp32, not 16-bit
    exported = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert {t.dtype for t in exported.values()} == {torch.float32}
    assert summary["export_check"]["matches"] is True


@pytest.mark.parametrize("wire", ["float32", *WIRES])
def test_oracle_over_the_replies_that_arrived(runs, wire):
    run_dir, _ = runs[wire]
    for rnd in ROUNDS:
        clients = _clients(run_dir, rnd)
        assert sum(meta["weight"] for _, meta in clients.values()) == pytest.approx(1.0, abs=1e-12)
        after = {k: v.double() for k, v in
                 load_file(str(run_dir / "audit" / f"round-{rnd:04d}" / "global-after.safetensors")).items()}
        modules = sorted(k[: -len(".B")] for k in after if k.endswith(".B"))
        assert modules
        worst = 0.0
        for m in modules:
            oracle = sum(meta["weight"] * meta["scaling"]
                         * (s[f"{m}.lora_B.weight"].double() @ s[f"{m}.lora_A.weight"].double())
                         for s, meta in clients.values())
            got = after[f"{m}.B"] @ after[f"{m}.A"]
            worst = max(worst, float((got - oracle).norm() / oracle.norm()))
        assert worst < 1e-6, (wire, rnd, worst)  # measured: ~4e-8 for every wire
        heads = [k for k in after if not k.endswith((".A", ".B"))]  # the head: the p_k-weighted mean
        for k in heads:
            mean = sum(meta["weight"] * s[k].double() for s, meta in clients.values())
            assert float((after[k] - mean).norm() / mean.norm()) < 1e-6, k
