"""``ms2dist pack``: LPD / MIDI songs -> WebDataset shards of bit-packed 4-bar phrases.

Output layout (``--out``, default ``shards/<name>``)::

    <out>/rejects.jsonl                 every rejected input, with the reason
    <out>/<split>/manifest.json         counts, shard list (sha256, phrase counts), settings
    <out>/<split>/shard-00000.tar ...   WebDataset tar shards
    <out>/<split>/.progress.jsonl       finished-shard records (resume)
    <out>/.pack-config.json             settings + input list fingerprint (resume check)

A shard holds *blocks* of up to ``--block-size`` phrases (one tar sample per block, so tar
parsing is amortised over many phrases): ``<key>.phrases.npy`` = uint8 ``(k, 10080)``
(``np.packbits`` of each ``(4, 48, 84, 5)`` phrase) and ``<key>.meta.json`` =
``{"songs": [[song_id, n], ...], "phrase_index": [...], "nonempty": [bitmask, ...]}``
(``songs`` is run-length over the block's phrases; ``nonempty`` bit k = track k).

Determinism: inputs are sorted; a song's split is sha1(song id) (song id = file name stem),
known before reading it; each split is an independent stream of its songs in input order,
and a shard is closed at the first song boundary at or after ``--phrases-per-shard``
phrases. Tar headers are fixed (mtime 0, uid/gid 0, no user names), so the same inputs and
settings give byte-identical shards.

Resume: shards are written to ``*.tar.tmp`` and renamed when complete; then a record
(shard, sha256, counts, the split position after its last song, rejects so far) is appended
to ``.progress.jsonl``. A re-run with the same settings and inputs keeps every recorded
shard whose size and sha256 check out and reads only the songs after it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ms2dist import TRACKS, __version__
from ms2dist._malloc import keep_freed_buffers
from ms2dist.lpd import FORMATS, MIDI_SUFFIXES, RejectError, load_song, song_id_for
from ms2dist.phrases import (
    DEFAULT_PHRASE_CONFIG,
    SPLITS,
    PhraseConfig,
    assign_split,
    pack_bits,
    parse_split,
)

__all__ = ["add_arguments", "main", "pack", "PackResult", "collect_inputs", "SHARD_FORMAT"]

SHARD_FORMAT = "ms2dist-phrases-v1"
CONFIG_NAME = ".pack-config.json"
PROGRESS_NAME = ".progress.jsonl"


# ----------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", nargs="+", required=True, metavar="DIR_OR_FILE",
                   help="input folders (searched recursively) and/or files")
    p.add_argument("--name", required=True, help="dataset name (default output shards/<name>)")
    p.add_argument("--out", default=None, help="output folder (default shards/<name>)")
    p.add_argument("--format", default="auto", choices=FORMATS,
                   help="input format: auto (by suffix), lpd5, lpd (any LPD npz, merged), midi")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)),
                   help="processes reading songs, the writing main process included "
                        "(default: CPU count)")
    p.add_argument("--phrases-per-shard", type=int, default=2048,
                   help="close a shard at the first song boundary at/after this many phrases")
    p.add_argument("--block-size", type=int, default=256,
                   help="phrases per tar sample (one .npy member per block)")
    p.add_argument("--split", default="90,5,5", help="train,val,test shares (default 90,5,5)")
    p.add_argument("--overwrite", action="store_true",
                   help="discard an existing output made with other settings/inputs")
    d = PhraseConfig()
    g = p.add_argument_group("phrase settings")
    g.add_argument("--source-resolution", type=int, default=d.source_resolution,
                   help="steps per beat the inputs must have (others are rejected)")
    g.add_argument("--steps-per-beat", type=int, default=d.steps_per_beat)
    g.add_argument("--beats-per-bar", type=int, default=d.beats_per_bar)
    g.add_argument("--bars-per-phrase", type=int, default=d.bars_per_phrase)
    g.add_argument("--lowest-pitch", type=int, default=d.lowest_pitch)
    g.add_argument("--n-pitches", type=int, default=d.n_pitches)
    g.add_argument("--keep-empty", action="store_true",
                   help="keep windows where every track is empty")


def main(args: argparse.Namespace, extra: list[str]) -> int:
    try:
        cfg = PhraseConfig(
            source_resolution=args.source_resolution,
            steps_per_beat=args.steps_per_beat,
            beats_per_bar=args.beats_per_bar,
            bars_per_phrase=args.bars_per_phrase,
            lowest_pitch=args.lowest_pitch,
            n_pitches=args.n_pitches,
            drop_empty=not args.keep_empty,
        )
        split = parse_split(args.split)
        if args.workers < 1 or args.phrases_per_shard < 1 or args.block_size < 1:
            raise ValueError("--workers, --phrases-per-shard and --block-size must be >= 1")
    except ValueError as e:
        print(f"ms2dist pack: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("shards") / args.name
    try:
        result = pack(
            args.input, out, name=args.name, fmt=args.format, workers=args.workers,
            phrases_per_shard=args.phrases_per_shard, block_size=args.block_size,
            split=split, cfg=cfg, overwrite=args.overwrite, progress=True,
        )
    except PackUsageError as e:
        print(f"ms2dist pack: {e}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0 if result.n_packed_songs > 0 else 1


# ----------------------------------------------------------------------------- inputs


class PackUsageError(Exception):
    """Bad invocation (no inputs, settings differ from an existing output, ...)."""


def _suffixes_for(fmt: str) -> tuple[str, ...]:
    return {"auto": (".npz",) + MIDI_SUFFIXES, "lpd5": (".npz",), "lpd": (".npz",),
            "midi": MIDI_SUFFIXES}[fmt]


def collect_inputs(inputs: Iterable[str | os.PathLike], fmt: str = "auto") -> list[Path]:
    """Files named directly, plus files under folders with a suffix the format reads.

    Sorted by path, duplicates removed. A named file is always an input (and rejected
    later if unreadable); inside folders other files (manifest.csv, ...) are ignored.
    """
    found: set[Path] = set()
    suffixes = _suffixes_for(fmt)
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for root, _dirs, files in os.walk(p):
                for f in files:
                    if f.lower().endswith(suffixes):
                        found.add(Path(root) / f)
        elif p.exists():
            found.add(p)
        else:
            raise PackUsageError(f"input not found: {p}")
    return sorted(found, key=lambda q: str(q))


# ----------------------------------------------------------------------------- workers


@dataclass
class SongResult:
    pos: int  # position in the split's song list
    path: str
    song_id: str
    packed: np.ndarray | None = None  # (k, n_bytes) uint8
    index: np.ndarray | None = None
    nonempty: np.ndarray | None = None
    reason: str | None = None
    handover: tuple[str, int] | None = None  # (tmpfs file, phrase count) from a worker


_WORKER_CFG: tuple[PhraseConfig, str, str | None] | None = None


def _init_worker(cfg: PhraseConfig, fmt: str, handover_dir: str | None = None) -> None:
    global _WORKER_CFG
    _WORKER_CFG = (cfg, fmt, handover_dir)
    if handover_dir is not None:  # a pool process: keep freed song buffers
        keep_freed_buffers()


def _process(task: tuple[str, int, str, str]) -> SongResult:
    split, pos, path, song_id = task
    assert _WORKER_CFG is not None
    cfg, fmt, handover = _WORKER_CFG
    res = process_song(path, song_id, pos, cfg, fmt)
    if handover is not None and res.packed is not None:
        # hand the phrase bytes over through a tmpfs file: ~2x cheaper than a pipe
        f = os.path.join(handover, f"{split}-{pos}.bin")
        res.packed.tofile(f)
        res.packed = None
        res.handover = (f, res.index.shape[0])
    return res


def _receive(r: SongResult, n_bytes: int) -> SongResult:
    if r.handover is not None:
        f, k = r.handover
        r.packed = np.fromfile(f, np.uint8).reshape(k, n_bytes)
        os.unlink(f)
        r.handover = None
    return r


def process_song(path: str, song_id: str, pos: int, cfg: PhraseConfig, fmt: str) -> SongResult:
    """Read one input and cut it into packed phrases, or give the reason it is rejected."""
    from ms2dist.phrases import notes_phrases

    res = SongResult(pos=pos, path=path, song_id=song_id)
    try:
        song = load_song(path, fmt)
        if song.resolution != cfg.source_resolution:
            raise RejectError(
                f"resolution {song.resolution} steps/beat, expected {cfg.source_resolution}"
            )
        bar = cfg.source_resolution * cfg.beats_per_bar
        n_bars = max(0, song.n_steps - song.first_downbeat) // bar
        if song.times.size == 0:
            raise RejectError("empty song (no notes in any LPD-5 track)")
        if n_bars < cfg.bars_per_phrase:
            raise RejectError(f"shorter than {cfg.bars_per_phrase} bars ({n_bars} bars)")
        phrases, index, nonempty = notes_phrases(
            song.times, song.pitches, song.tracks, song.n_steps, cfg, start=song.first_downbeat
        )
        if phrases.shape[0] == 0:
            raise RejectError(
                f"no non-empty {cfg.bars_per_phrase}-bar phrase (pitches "
                f"{cfg.lowest_pitch}..{cfg.lowest_pitch + cfg.n_pitches - 1}, {n_bars} bars)"
            )
        res.packed, res.index, res.nonempty = pack_bits(phrases), index, nonempty
    except RejectError as e:
        res.reason = str(e)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - one bad song must not stop the pack
        res.reason = f"unexpected error ({type(e).__name__}: {e})"
    return res


# ----------------------------------------------------------------------------- tar writing


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = 0
    ti.mode = 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class SplitWriter:
    """One split's shard stream: blocks of phrases -> shard tars -> progress records."""

    def __init__(self, split_dir: Path, split: str, phrases_per_shard: int, block_size: int,
                 records: list[dict]):
        self.dir = split_dir
        self.split = split
        self.phrases_per_shard = phrases_per_shard
        self.block_size = block_size
        self.records = records
        self.shard_idx = len(records)
        self.cursor = records[-1]["end"] if records else 0
        self.rejects: list[dict] = []  # since the last finished shard
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._block_idx = 0
        self._shard_phrases = 0
        self._shard_songs = 0
        self._pending: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_n = 0

    def add(self, r: SongResult) -> None:
        if r.reason is not None:
            self.rejects.append({"path": r.path, "song_id": r.song_id, "split": self.split,
                                 "reason": r.reason})
        else:
            assert r.packed is not None and r.index is not None and r.nonempty is not None
            self._pending.append((r.song_id, r.packed, r.index, r.nonempty))
            self._pending_n += r.packed.shape[0]
            self._shard_phrases += r.packed.shape[0]
            self._shard_songs += 1
            while self._pending_n >= self.block_size:
                self._emit_block(self.block_size)
        self.cursor = r.pos + 1
        if self._shard_phrases >= self.phrases_per_shard:
            self._close_shard()

    def finish(self) -> None:
        if self._shard_phrases > 0:
            self._close_shard()

    def _open(self) -> tarfile.TarFile:
        if self._tar is None:
            self._tmp = self.dir / f"shard-{self.shard_idx:05d}.tar.tmp"
            self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT,
                                     copybufsize=4 << 20)
            self._block_idx = 0
        return self._tar

    def _emit_block(self, n: int) -> None:
        take: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
        got = 0
        while got < n and self._pending:
            sid, pk, ix, ne = self._pending[0]
            m = min(n - got, pk.shape[0])
            take.append((sid, pk[:m], ix[:m], ne[:m]))
            if m == pk.shape[0]:
                self._pending.pop(0)
            else:
                self._pending[0] = (sid, pk[m:], ix[m:], ne[m:])
            got += m
        self._pending_n -= got
        packed = np.concatenate([t[1] for t in take])
        weights = 1 << np.arange(len(TRACKS))
        meta = {
            "songs": [[t[0], int(t[1].shape[0])] for t in take],
            "phrase_index": [int(i) for t in take for i in t[2]],
            "nonempty": [int(v) for t in take for v in (t[3] * weights).sum(1)],
        }
        tar = self._open()
        key = f"{self.split}-{self.shard_idx:05d}-{self._block_idx:05d}"
        for name, data in ((f"{key}.phrases.npy", _npy_bytes(packed)),
                           (f"{key}.meta.json", json.dumps(meta, separators=(",", ":")).encode())):
            tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
        self._block_idx += 1

    def _close_shard(self) -> None:
        while self._pending_n > 0:
            self._emit_block(min(self.block_size, self._pending_n))
        assert self._tar is not None and self._tmp is not None
        self._tar.close()
        with open(self._tmp, "rb+") as f:
            os.fsync(f.fileno())
        final = self.dir / f"shard-{self.shard_idx:05d}.tar"
        os.replace(self._tmp, final)
        rec = {
            "shard": final.name,
            "sha256": _sha256(final),
            "bytes": final.stat().st_size,
            "n_phrases": self._shard_phrases,
            "n_songs": self._shard_songs,
            "end": self.cursor,
            "rejects": self.rejects,
        }
        with open(self.dir / PROGRESS_NAME, "a") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.append(rec)
        self.rejects = []
        self.shard_idx += 1
        self._tar, self._tmp = None, None
        self._shard_phrases = self._shard_songs = 0


# ----------------------------------------------------------------------------- pack


@dataclass
class PackResult:
    out: Path
    n_inputs: int = 0
    n_packed_songs: int = 0
    n_rejected: int = 0
    n_phrases: dict[str, int] = field(default_factory=dict)
    n_songs: dict[str, int] = field(default_factory=dict)
    n_shards: dict[str, int] = field(default_factory=dict)
    n_resumed_shards: int = 0
    n_read: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        per = ", ".join(
            f"{s} {self.n_songs.get(s, 0)} songs/{self.n_phrases.get(s, 0)} phrases/"
            f"{self.n_shards.get(s, 0)} shards" for s in SPLITS
        )
        rate = self.n_read / self.seconds if self.seconds > 0 else 0.0
        resumed = f"; {self.n_resumed_shards} shards kept from an earlier run" \
            if self.n_resumed_shards else ""
        return (
            f"ms2dist pack: {self.n_inputs} inputs = {self.n_packed_songs} packed + "
            f"{self.n_rejected} rejected (see {self.out / 'rejects.jsonl'}); {per}; "
            f"{self.n_read} songs read in {self.seconds:.1f} s ({rate:.1f} songs/s){resumed}"
        )


def _load_records(split_dir: Path) -> list[dict]:
    """Recorded shards whose files are intact (longest valid prefix); later files removed."""
    records: list[dict] = []
    prog = split_dir / PROGRESS_NAME
    if prog.exists():
        for line in prog.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break  # torn last line
            path = split_dir / rec["shard"]
            if rec["shard"] != f"shard-{len(records):05d}.tar" or not path.exists() \
                    or path.stat().st_size != rec["bytes"] or _sha256(path) != rec["sha256"]:
                break
            records.append(rec)
    with open(prog, "w") as f:  # rewrite without any invalid tail
        for rec in records:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
    keep = {r["shard"] for r in records}
    for p in split_dir.iterdir():
        if p.name.startswith("shard-") and p.name not in keep:
            p.unlink()
    return records


def pack(
    inputs: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    name: str = "",
    fmt: str = "auto",
    workers: int = 1,
    phrases_per_shard: int = 2048,
    block_size: int = 256,
    split: tuple[float, float, float] = (0.9, 0.05, 0.05),
    cfg: PhraseConfig = DEFAULT_PHRASE_CONFIG,
    overwrite: bool = False,
    progress: bool = False,
    max_songs: int | None = None,
) -> PackResult:
    """Pack songs into shards under ``out`` (see module docstring). Resumes when possible.

    ``max_songs``: stop after reading this many songs (testing a simulated interruption).
    """
    t0 = time.perf_counter()
    out = Path(out)
    files = collect_inputs(inputs, fmt)
    if not files:
        raise PackUsageError("no input files found")
    split = tuple(float(x) for x in split)  # type: ignore[assignment]

    # plan: song ids, duplicates, splits (all known without reading a song)
    plan: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    early_rejects: list[dict] = []
    seen: dict[str, str] = {}
    for f in files:
        sid = song_id_for(f)
        if sid in seen:
            early_rejects.append({"path": str(f), "song_id": sid, "split": None,
                                  "reason": f"duplicate song id (first: {seen[sid]})"})
            continue
        seen[sid] = str(f)
        plan[assign_split(sid, split)].append((str(f), sid))

    fingerprint = hashlib.sha256("\n".join(map(str, files)).encode()).hexdigest()
    config = {
        "format": SHARD_FORMAT, "input_format": fmt, "phrase_config": cfg.to_dict(),
        "split": list(split), "phrases_per_shard": phrases_per_shard,
        "block_size": block_size, "inputs_sha256": fingerprint, "n_inputs": len(files),
    }
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / CONFIG_NAME
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        if old != config:
            if not overwrite:
                raise PackUsageError(
                    f"{out} holds a pack made with other settings or inputs; "
                    "use another --out or --overwrite"
                )
            for s in SPLITS:
                d = out / s
                if d.is_dir():
                    for p in d.iterdir():
                        if p.name.startswith("shard-") or p.name in (PROGRESS_NAME,
                                                                     "manifest.json"):
                            p.unlink()
    cfg_path.write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")

    writers: dict[str, SplitWriter] = {}
    tasks: list[tuple[str, int, str, str]] = []
    result = PackResult(out=out, n_inputs=len(files))
    for s in SPLITS:
        d = out / s
        d.mkdir(exist_ok=True)
        for p in d.glob("*.tmp"):
            p.unlink()
        records = _load_records(d)
        result.n_resumed_shards += len(records)
        w = SplitWriter(d, s, phrases_per_shard, block_size, records)
        writers[s] = w
        tasks += [(s, i, path, sid) for i, (path, sid) in enumerate(plan[s]) if i >= w.cursor]
    # one global order (input order) so progress is even across splits
    order = {str(f): i for i, f in enumerate(files)}
    tasks.sort(key=lambda t: order[t[2]])
    if max_songs is not None:
        tasks = tasks[:max_songs]

    results = _run(tasks, cfg, fmt, workers, progress)
    for (s, *_), r in zip(tasks, results, strict=True):
        writers[s].add(r)
        result.n_read += 1
    if max_songs is not None and len(tasks) == max_songs:
        # simulated interruption: leave open shards unfinished, as a kill would
        for w in writers.values():
            if w._tar is not None:
                w._tar.close()
        result.seconds = time.perf_counter() - t0
        return result
    for w in writers.values():
        w.finish()

    rejects = list(early_rejects)
    for s in SPLITS:
        w = writers[s]
        split_rejects = [r for rec in w.records for r in rec["rejects"]] + w.rejects
        rejects += split_rejects
        n_ph = sum(r["n_phrases"] for r in w.records)
        n_so = sum(r["n_songs"] for r in w.records)
        manifest = {
            "format": SHARD_FORMAT,
            "ms2dist_version": __version__,
            "name": name,
            "split": s,
            "split_fractions": list(split),
            "n_phrases": n_ph,
            "n_songs": n_so,
            "n_rejected": len(split_rejects),
            "phrase_bytes": cfg.n_bytes,
            "phrase_shape": list(cfg.shape),
            "tracks": list(TRACKS),
            "phrase_config": cfg.to_dict(),
            "phrases_per_shard": phrases_per_shard,
            "block_size": block_size,
            "shards": [
                {"name": r["shard"], "sha256": r["sha256"], "bytes": r["bytes"],
                 "n_phrases": r["n_phrases"], "n_songs": r["n_songs"]} for r in w.records
            ],
        }
        (out / s / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        result.n_phrases[s], result.n_songs[s], result.n_shards[s] = n_ph, n_so, len(w.records)
    rejects.sort(key=lambda r: r["path"])
    with open(out / "rejects.jsonl", "w") as f:
        for r in rejects:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    result.n_rejected = len(rejects)
    result.n_packed_songs = sum(result.n_songs.values())
    result.seconds = time.perf_counter() - t0
    assert result.n_packed_songs + result.n_rejected == result.n_inputs, "lost an input"
    return result


def _run(tasks: list[tuple[str, int, str, str]], cfg: PhraseConfig, fmt: str, workers: int,
         progress: bool) -> Iterator[SongResult]:
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), unit="song", desc="pack", disable=not progress or None,
               file=sys.stderr)
    try:
        if workers <= 1 or len(tasks) <= 1:
            _init_worker(cfg, fmt)
            for t in tasks:
                yield _process(t)
                bar.update()
            return
        import multiprocessing as mp

        # `workers` readers = the main process + a pool of workers-1. The pool is fed in
        # input order (at most `ahead` songs in flight: memory streams); whenever the song
        # the writer needs next is not ready, the main process reads the next unassigned
        # song itself instead of waiting. Results are consumed in input order, so who read
        # a song never changes the output.
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        _init_worker(cfg, fmt)
        ahead = 8 * (workers - 1)
        results: dict[int, object] = {}
        nxt = 0  # next task not yet assigned
        in_pool = 0
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        with contextlib.ExitStack() as stack:
            handover = stack.enter_context(tempfile.TemporaryDirectory(
                prefix="ms2dist-pack-", dir=shm)) if shm else None
            pool = stack.enter_context(ctx.Pool(
                workers - 1, initializer=_init_worker, initargs=(cfg, fmt, handover)))
            for i in range(len(tasks)):
                while nxt < len(tasks) and in_pool < ahead:
                    results[nxt] = pool.apply_async(_process, (tasks[nxt],))
                    nxt += 1
                    in_pool += 1
                r = results.pop(i)
                if not isinstance(r, SongResult):
                    in_pool -= 1
                    while not r.ready() and nxt < len(tasks) and nxt - i < 4 * ahead:
                        results[nxt] = _process(tasks[nxt])
                        nxt += 1
                    r = _receive(r.get(), cfg.n_bytes)
                yield r
                bar.update()
    finally:
        bar.close()
