"""Read Lakh Pianoroll Dataset songs (``.npz``: LPD-5, any LPD subset, LPD-17) as a Song.

The ``.npz`` files are read directly (keys ``pianoroll_<i>_csc_{data,indices,indptr,shape}``,
``info.json``, ``tempo``, ``downbeat``): faster than ``pypianoroll.load``, and it never builds
a dense array per source track. Other LPD track sets are merged to LPD-5.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from ms2dist import TRACKS
from ms2dist.npyio import read_npy
from ms2dist.songs.song import N_PITCHES, RejectError, Song, lpd5_track, song_id_for

__all__ = ["read_lpd_npz", "is_lpd5_npz"]


def is_lpd5_npz(path: str | Path) -> bool:
    """True for an LPD-5 ``.npz`` (its info.json names exactly the five LPD-5 tracks)."""
    try:
        with zipfile.ZipFile(path) as zf:
            info = json.loads(zf.read("info.json"))
    except Exception:  # noqa: BLE001 - the real read reports the reason
        return False
    return _is_lpd5_info(info)


def _is_lpd5_info(info: dict) -> bool:
    tracks = _track_infos(info)
    if len(tracks) != len(TRACKS):
        return False
    for (i, t), name in zip(tracks, TRACKS, strict=True):
        if int(i) != TRACKS.index(name) or t.get("name") != name:
            return False
    return True


def _track_infos(info: dict) -> list[tuple[int, dict]]:
    return sorted((int(k), v) for k, v in info.items() if k.isdigit() and isinstance(v, dict))


class _NpzReader:
    """Minimal ``.npz`` reader: zip members -> arrays through :func:`ms2dist.npyio.read_npy`
    (no copy, no pickle, no ast-based header parsing)."""

    def __init__(self, path: Path):
        self.zf = zipfile.ZipFile(path)
        self.files = [n[:-4] if n.endswith(".npy") else n for n in self.zf.namelist()]

    def __enter__(self) -> _NpzReader:
        return self

    def __exit__(self, *exc) -> None:
        self.zf.close()

    def __getitem__(self, key: str):
        name = key + ".npy" if key + ".npy" in self.zf.NameToInfo else key
        raw = self.zf.read(name)
        if not name.endswith(".npy"):
            return raw
        return read_npy(raw, name)


def read_lpd_npz(path: str | Path, *, expect_lpd5: bool = False) -> Song:
    """Read an LPD ``.npz`` (any subset, LPD-5 or LPD-17) and merge it to LPD-5."""
    path = Path(path)
    try:
        z = _NpzReader(path)
    except Exception as e:  # noqa: BLE001
        raise RejectError(f"not a readable npz ({type(e).__name__}: {e})") from None
    try:
        with z:
            try:
                raw = z["info.json"]
            except KeyError:
                raise RejectError("npz has no info.json (not an LPD file)") from None
            info = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
            resolution = int(info.get("beat_resolution", info.get("resolution", 0)) or 0)
            tracks = _track_infos(info)
            if expect_lpd5 and not _is_lpd5_info(info):
                raise RejectError("not an LPD-5 file (expected tracks " + ",".join(TRACKS) + ")")
            n_steps = None
            tempo = z["tempo"].astype(np.float64) if "tempo" in z.files else np.zeros(0)
            downbeat = z["downbeat"] if "downbeat" in z.files else np.zeros(0, bool)
            parts = []
            for i, t in tracks:
                k = lpd5_track(int(t.get("program", 0)), bool(t.get("is_drum", False)))
                pre = f"pianoroll_{i}_csc_"
                if pre + "shape" not in z.files:
                    raise RejectError(f"track {i} listed in info.json but missing")
                shape = tuple(int(s) for s in z[pre + "shape"])
                if len(shape) != 2 or shape[1] != N_PITCHES:
                    raise RejectError(f"track {i} has shape {shape}, expected (T, 128)")
                n_steps = shape[0] if n_steps is None else max(n_steps, shape[0])
                if k is None:
                    continue
                data = z[pre + "data"]
                indices = z[pre + "indices"]
                indptr = z[pre + "indptr"]
                if indptr.shape != (N_PITCHES + 1,) or data.shape != indices.shape:
                    raise RejectError(f"track {i}: malformed CSC arrays")
                parts.append((k, data, indices, indptr, shape[0]))
    except RejectError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated / corrupt members
        raise RejectError(f"corrupt npz ({type(e).__name__}: {e})") from None
    if not tracks:
        raise RejectError("no tracks in info.json")
    if resolution <= 0:
        raise RejectError("no beat resolution in info.json")
    n_steps = int(n_steps or 0)
    times, pitches, track_ids, velocities = _csc_notes(parts)
    db = np.flatnonzero(downbeat) if downbeat.size else np.zeros(0, np.int64)
    first = _first_downbeat_4_4(db, resolution)
    if tempo.shape[0] != n_steps:
        tempo = np.resize(tempo, n_steps) if tempo.size else np.full(n_steps, 120.0)
    return Song(
        song_id=song_id_for(path),
        n_steps=n_steps,
        resolution=resolution,
        tempo=tempo,
        times=times,
        pitches=pitches,
        tracks=track_ids,
        velocities=velocities,
        first_downbeat=first,
        source=str(path),
        source_format="lpd5" if _is_lpd5_info(info) else "lpd",
        meta={"name": info.get("name", "")},
    )


def _csc_notes(parts: list[tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(times, pitches, tracks, velocities) of the active cells of LPD's CSC tracks
    ``(lpd5 track, data, indices, indptr, n_steps)``; RejectError on malformed arrays."""
    ts, ps, ks, vs = [], [], [], []
    for k, data, indices, indptr, t_len in parts:
        if data.size == 0:
            continue
        counts = np.diff(indptr.astype(np.int64))
        if (counts < 0).any() or indptr[-1] != data.size:
            raise RejectError("malformed CSC arrays (indptr)")
        t = indices.astype(np.intp, copy=False)
        if t.size and (t.min() < 0 or t.max() >= t_len):
            raise RejectError("malformed CSC arrays (time index out of range)")
        pitch = np.repeat(np.arange(N_PITCHES, dtype=np.intp), counts)
        vals = data if data.dtype == np.uint8 else np.clip(data, 0, 127).astype(np.uint8)
        on = vals > 0
        if not on.all():
            t, pitch, vals = t[on], pitch[on], vals[on]
        ts.append(t)
        ps.append(pitch)
        ks.append(np.full(t.size, k, np.intp))
        vs.append(vals)
    cat = np.concatenate
    return (cat(ts) if ts else np.zeros(0, np.intp), cat(ps) if ps else np.zeros(0, np.intp),
            cat(ks) if ks else np.zeros(0, np.intp), cat(vs) if vs else np.zeros(0, np.uint8))


def _first_downbeat_4_4(downbeats: np.ndarray, resolution: int) -> int:
    """Bars are 4 beats: lpd_cleansed marks only step 0; other subsets mark every bar.

    With several downbeats, every bar must be 4 beats long (else the song is not 4/4).
    """
    if downbeats.size == 0:
        return 0
    if downbeats.size > 1:
        gaps = np.diff(downbeats)
        if not (gaps == 4 * resolution).all():
            raise RejectError("not 4/4 (bar lengths from downbeats differ from 4 beats)")
    return int(downbeats[0])
