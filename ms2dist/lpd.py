"""Read songs from the Lakh Pianoroll Dataset (``.npz``) and from MIDI files.

Every reader returns a :class:`Song` whose ``roll`` is a ``(T, 128, 5)`` uint8 velocity
array in ``ms2dist.TRACKS`` order (Drums, Piano, Guitar, Bass, Strings); any multi-track
input is merged with LPD-5's rule (element-wise max, see :func:`lpd5_track`).

LPD ``.npz`` files are read directly with numpy (keys ``pianoroll_<i>_csc_{data,indices,
indptr,shape}``, ``info.json``, ``tempo``, ``downbeat``): faster than ``pypianoroll.load``
and it never builds a dense array per source track. MIDI files go through
``pypianoroll.from_pretty_midi``; bars come from the MIDI time signatures, computed here
(pypianoroll 1.0.4's ``downbeat`` is unreliable), and non-4/4 songs are rejected.

Anything unreadable raises :class:`RejectError` with a short human reason.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ms2dist import TRACKS

__all__ = [
    "FORMATS",
    "MIDI_SUFFIXES",
    "RejectError",
    "Song",
    "detect_format",
    "load_song",
    "lpd5_track",
    "merge_to_lpd5",
    "read_lpd_npz",
    "read_midi",
    "song_id_for",
]

FORMATS = ("auto", "lpd5", "lpd", "midi")
MIDI_SUFFIXES = (".mid", ".midi")
N_PITCHES = 128
LPD5_PROGRAMS = (0, 0, 24, 32, 48)


class RejectError(Exception):
    """An input that cannot become a song; ``str(e)`` is the reason recorded in rejects."""


@dataclass
class Song:
    """One song merged to LPD-5.

    The notes are kept sparse (``times``, ``pitches``, ``tracks``, ``velocities``: one entry
    per active (step, pitch, track) cell, velocity > 0, duplicates allowed and merged by
    max); ``roll`` builds the dense ``(T, 128, 5)`` uint8 array on demand.
    ``resolution``: time steps per beat (24 for LPD); ``tempo``: float64 BPM per step;
    ``first_downbeat``: time step of the first bar line (bars are 4 beats, 4/4).
    """

    song_id: str
    n_steps: int
    resolution: int
    tempo: np.ndarray
    times: np.ndarray
    pitches: np.ndarray
    tracks: np.ndarray
    velocities: np.ndarray
    first_downbeat: int = 0
    source: str = ""
    source_format: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def roll(self) -> np.ndarray:
        """Dense ``(T, 128, 5)`` uint8 velocities (element-wise max over merged tracks)."""
        out = np.zeros((self.n_steps, N_PITCHES, len(TRACKS)), np.uint8)
        np.maximum.at(out, (self.times, self.pitches, self.tracks), self.velocities)
        return out

    @property
    def bpm(self) -> float:
        """Median tempo in beats per minute (120 when unknown)."""
        return float(np.median(self.tempo)) if self.tempo.size else 120.0

    def nonempty_tracks(self) -> np.ndarray:
        out = np.zeros(len(TRACKS), bool)
        out[np.unique(self.tracks)] = True
        return out

    @classmethod
    def from_roll(cls, song_id: str, roll: np.ndarray, resolution: int, tempo: np.ndarray,
                  **kw) -> Song:
        t, p, k = np.nonzero(roll)
        return cls(song_id=song_id, n_steps=int(roll.shape[0]), resolution=resolution,
                   tempo=tempo, times=t, pitches=p, tracks=k,
                   velocities=roll[t, p, k].astype(np.uint8), **kw)


def lpd5_track(program: int, is_drum: bool) -> int | None:
    """LPD-5 target track index for a source track, or None when the track is dropped.

    Drums = is_drum; Piano = 0-7; Guitar = 24-31; Bass = 32-39; Strings = every other
    program < 96 or 104-111; programs 96-103 and 112-127 are dropped.
    """
    if is_drum:
        return 0
    program = int(program)
    if 0 <= program <= 7:
        return 1
    if 24 <= program <= 31:
        return 2
    if 32 <= program <= 39:
        return 3
    if program < 96 or 104 <= program <= 111:
        return 4
    return None


def merge_to_lpd5(
    rolls: Sequence[np.ndarray], programs: Sequence[int], is_drums: Sequence[bool]
) -> np.ndarray:
    """Merge dense source tracks ``(T_i, 128)`` into a ``(T, 128, 5)`` LPD-5 roll.

    Pure function: element-wise max of the tracks mapped to each LPD-5 track; tracks of
    different length are zero-padded to the longest. Output dtype is uint8 (velocities
    are clipped to 0..127 first for non-uint8 input).
    """
    if not (len(rolls) == len(programs) == len(is_drums)):
        raise ValueError("rolls, programs and is_drums must have the same length")
    n_steps = max((int(r.shape[0]) for r in rolls), default=0)
    out = np.zeros((n_steps, N_PITCHES, len(TRACKS)), np.uint8)
    for roll, program, is_drum in zip(rolls, programs, is_drums, strict=True):
        k = lpd5_track(program, is_drum)
        if k is None:
            continue
        if roll.ndim != 2 or roll.shape[1] != N_PITCHES:
            raise ValueError(f"expected a (T, 128) roll, got {roll.shape}")
        if roll.dtype == np.uint8:
            r = roll
        elif roll.dtype == np.bool_:
            r = roll.astype(np.uint8)
        else:
            r = np.clip(roll, 0, 127).astype(np.uint8)
        view = out[: r.shape[0], :, k]
        np.maximum(view, r, out=view)
    return out


def song_id_for(path: str | Path) -> str:
    """The song id of an input file: its file name without suffix (LPD: the MIDI md5)."""
    return Path(path).name.split(".")[0]


def detect_format(path: str | Path) -> str:
    """``midi`` for .mid/.midi, ``lpd5`` for a 5-track LPD-5 npz, else ``lpd``."""
    p = Path(path)
    if p.suffix.lower() in MIDI_SUFFIXES:
        return "midi"
    if p.suffix.lower() == ".npz":
        try:
            with zipfile.ZipFile(p) as zf:
                info = json.loads(zf.read("info.json"))
        except Exception:  # noqa: BLE001 - the real read reports the reason
            return "lpd"
        return "lpd5" if _is_lpd5_info(info) else "lpd"
    raise RejectError(f"unsupported file type {p.suffix or '(no suffix)'!r}")


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


_NPY_HEADER = re.compile(
    rb"\{'descr': '([<>|=]?[a-zA-Z]\d*)', 'fortran_order': (True|False), "
    rb"'shape': \(([\d, ]*)\), \}"
)


class _NpzReader:
    """Minimal ``.npz`` reader: zip members -> arrays without numpy's ast-based header
    parser (a third of np.load's time on LPD's many tiny members). Anything unusual falls
    back to ``np.lib.format``."""

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
        if raw[:6] != b"\x93NUMPY":
            raise ValueError(f"{name}: not a .npy member")
        major = raw[6]
        if major == 1:
            hlen, start = int.from_bytes(raw[8:10], "little"), 10
        else:
            hlen, start = int.from_bytes(raw[8:12], "little"), 12
        header = raw[start : start + hlen].rstrip()
        m = _NPY_HEADER.match(header)
        if m is None or m.group(2) == b"True":
            return np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)
        dtype = np.dtype(m.group(1).decode())
        if dtype.hasobject:
            raise ValueError(f"{name}: object arrays are not allowed")
        shape = tuple(int(x) for x in m.group(3).split(b",") if x.strip())
        count = int(np.prod(shape)) if shape else 1
        data = np.frombuffer(raw, dtype, count=count, offset=start + hlen)
        return data.reshape(shape)


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
    db = np.flatnonzero(downbeat) if downbeat.size else np.zeros(0, np.int64)
    first = _first_downbeat_4_4(db, resolution)
    if tempo.shape[0] != n_steps:
        tempo = np.resize(tempo, n_steps) if tempo.size else np.full(n_steps, 120.0)
    cat = np.concatenate
    return Song(
        song_id=song_id_for(path),
        n_steps=n_steps,
        resolution=resolution,
        tempo=tempo,
        times=cat(ts) if ts else np.zeros(0, np.intp),
        pitches=cat(ps) if ps else np.zeros(0, np.intp),
        tracks=cat(ks) if ks else np.zeros(0, np.intp),
        velocities=cat(vs) if vs else np.zeros(0, np.uint8),
        first_downbeat=first,
        source=str(path),
        source_format="lpd5" if _is_lpd5_info(info) else "lpd",
        meta={"name": info.get("name", "")},
    )


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


def read_midi(path: str | Path, *, resolution: int = 24) -> Song:
    """Read a MIDI file with pypianoroll, merge to LPD-5; non-4/4 songs are rejected."""
    import pretty_midi
    import pypianoroll

    path = Path(path)
    try:
        pm = pretty_midi.PrettyMIDI(str(path))
    except Exception as e:  # noqa: BLE001
        raise RejectError(f"unreadable MIDI ({type(e).__name__}: {e})") from None
    sigs = pm.time_signature_changes
    for ts in sigs:
        if (ts.numerator, ts.denominator) != (4, 4):
            raise RejectError(
                f"not 4/4 (time signature {ts.numerator}/{ts.denominator} at {ts.time:.2f} s)"
            )
    try:
        mt = pypianoroll.from_pretty_midi(pm, resolution=resolution)
    except Exception as e:  # noqa: BLE001
        raise RejectError(f"MIDI conversion failed ({type(e).__name__}: {e})") from None
    rolls = [np.asarray(t.pianoroll) for t in mt.tracks]
    roll = merge_to_lpd5(rolls, [t.program for t in mt.tracks], [t.is_drum for t in mt.tracks])
    # Bars: the first 4/4 signature (none means 4/4 from time 0 per the MIDI spec). Steps
    # follow MIDI ticks: step = tick * resolution / ticks_per_beat.
    first = 0
    if sigs:
        tick = pm.time_to_tick(sigs[0].time)
        first = int(round(tick * resolution / pm.resolution))
    n_steps = roll.shape[0]
    tempo = np.full(n_steps, 120.0)
    _, tempi = pm.get_tempo_changes()
    if len(tempi):
        tempo[:] = float(tempi[0])
    return Song.from_roll(
        song_id_for(path),
        roll,
        resolution,
        tempo,
        first_downbeat=first,
        source=str(path),
        source_format="midi",
    )


def load_song(path: str | Path, fmt: str = "auto") -> Song:
    """Read one input file as an LPD-5 :class:`Song` (``fmt``: auto|lpd5|lpd|midi)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    path = Path(path)
    if not path.is_file():
        raise RejectError("not a file")
    if fmt == "auto":
        suffix = path.suffix.lower()
        if suffix == ".npz":
            return read_lpd_npz(path)  # LPD-5 and other LPD files share one reader
        fmt = detect_format(path)
    if fmt == "midi":
        return read_midi(path)
    return read_lpd_npz(path, expect_lpd5=(fmt == "lpd5"))
