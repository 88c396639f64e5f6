"""``.npy`` / ``.npz`` bytes: the one parser and writer used for shards, LPD files and outputs.

Reading never unpickles (object arrays are refused) and never copies: the array is a
read-only view over the bytes. The common header is matched by a regular expression;
numpy's own ``ast``-based parser, a third of ``np.load``'s time on LPD's many tiny
members, is only the fallback for unusual headers. Writing fixes every zip timestamp,
so the same arrays always give the same bytes.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["read_npy", "npy_bytes", "save_npz"]

_HEADER = re.compile(
    rb"\{'descr': '([<>|=]?[a-zA-Z]\d*)', 'fortran_order': (True|False), "
    rb"'shape': \(([\d, ]*)\), \}"
)


def read_npy(raw: bytes, name: str = ".npy member") -> np.ndarray:
    """A ``.npy`` file's bytes as a read-only array over them; ValueError names ``name``."""
    if raw[:6] != b"\x93NUMPY":
        raise ValueError(f"{name}: not a .npy member")
    if raw[6] == 1:
        hlen, start = int.from_bytes(raw[8:10], "little"), 10
    else:
        hlen, start = int.from_bytes(raw[8:12], "little"), 12
    m = _HEADER.match(raw[start : start + hlen].rstrip())
    if m is None or m.group(2) == b"True":
        return np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)
    dtype = np.dtype(m.group(1).decode())
    if dtype.hasobject:
        raise ValueError(f"{name}: object arrays are not allowed")
    shape = tuple(int(x) for x in m.group(3).split(b",") if x.strip())
    count = int(np.prod(shape)) if shape else 1
    return np.frombuffer(raw, dtype, count=count, offset=start + hlen).reshape(shape)


def npy_bytes(a: np.ndarray) -> bytes:
    """``a`` (C-contiguous, no pickle) as the bytes of a ``.npy`` file."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def save_npz(path: str | Path, **arrays: Any) -> None:
    """``np.savez_compressed`` with fixed zip timestamps: same arrays -> same bytes.

    (numpy stamps every member with the current time, so two identical runs would
    otherwise write different files.)
    """
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())
