"""One adapter, one array on the wire: every tensor of a record packed into a single 1-D array.

Flower 1.41 moves each ``Array`` of a message as its own object, one request per object per hop
(ServerApp -> SuperLink -> SuperNode -> ClientApp and back). A Llama adapter on the attention
projections of a 30-layer model is 240 arrays, so a round paid hundreds of small requests per
client and hop. Packed, a record is two arrays: the concatenated values in the wire dtype, and a
small JSON layout (keys and shapes, in order) as bytes. The layout carries no dtype: the packed
array declares it, so 16-bit wires still halve the payload exactly.

numpy and json only: the thin ClientApp proxy packs and unpacks without importing torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

PACKED = "fedlora-packed"
LAYOUT = "fedlora-layout"


class PackingError(ValueError):
    """A record that claims to be packed but whose layout and values do not agree."""


def pack(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{key: array}`` (one dtype) -> ``{LAYOUT: uint8 JSON, PACKED: 1-D values}``; ``{}`` stays ``{}``.

    Raises
    ------
    PackingError
        If the arrays do not share one dtype (a record travels in one wire dtype).
    """
    if not arrays:
        return {}
    dtypes = sorted({str(nd.dtype) for nd in arrays.values()})
    if len(dtypes) != 1:
        raise PackingError(f"cannot pack arrays of several dtypes {dtypes}: a record has one wire dtype")
    layout = json.dumps([[key, list(nd.shape)] for key, nd in arrays.items()]).encode()
    flat = np.concatenate([np.ascontiguousarray(nd).reshape(-1) for nd in arrays.values()])
    return {LAYOUT: np.frombuffer(layout, dtype=np.uint8).copy(), PACKED: flat}


def is_packed(arrays: Mapping[str, np.ndarray]) -> bool:
    return set(arrays) == {LAYOUT, PACKED}


def unpack(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of :func:`pack`. A record of plain named arrays (not packed) is returned as is.

    Raises
    ------
    PackingError
        If the layout is not a JSON list of ``[key, shape]`` or its sizes do not add up to the
        packed values, naming what is wrong.
    """
    if not is_packed(arrays):
        if LAYOUT in arrays or PACKED in arrays:
            raise PackingError(f"record holds only one of {LAYOUT!r} and {PACKED!r}: {sorted(arrays)}")
        return dict(arrays)
    try:
        layout = json.loads(np.asarray(arrays[LAYOUT], dtype=np.uint8).tobytes())
        entries = [(str(key), tuple(int(d) for d in shape)) for key, shape in layout]
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        raise PackingError(f"packed record layout is not a JSON list of [key, shape]: {err}") from err
    flat = np.asarray(arrays[PACKED]).reshape(-1)
    sizes = [int(np.prod(shape, dtype=np.int64)) for _, shape in entries]
    if sum(sizes) != flat.size:
        raise PackingError(f"packed record layout describes {sum(sizes)} values but {flat.size} arrived")
    out: dict[str, np.ndarray] = {}
    offset = 0
    for (key, shape), size in zip(entries, sizes, strict=True):
        if key in out:
            raise PackingError(f"packed record layout names {key!r} twice")
        out[key] = flat[offset : offset + size].reshape(shape)
        offset += size
    return out
