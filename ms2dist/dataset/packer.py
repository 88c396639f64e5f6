"""Packing: LPD / MIDI songs -> WebDataset shards of bit-packed phrases (``ms2dist pack``).

Output layout (``--out``, default ``shards/<name>``)::

    <out>/rejects.jsonl                 every rejected input, with the reason
    <out>/near_duplicates.jsonl         packed songs that start like one in another split
    <out>/<split>/manifest.json         counts, shard list (sha256, phrase counts), settings
    <out>/<split>/shard-00000.tar ...   WebDataset tar shards
    <out>/<split>/.progress.jsonl       finished-shard records (resume)
    <out>/.pack-config.json             settings + input list fingerprint (resume check)

A shard holds *blocks* of up to ``--block-size`` phrases (one tar sample per block, so tar
parsing is amortised over many phrases; :mod:`ms2dist.dataset.blocks`). The manifest
(:mod:`ms2dist.dataset.manifest`) records the phrase layout the songs were cut into.

Determinism: inputs are sorted; a song's split is sha1(song id) (song id = file name stem),
known before reading it; each split is an independent stream of its songs in input order,
and a shard is closed at the first song boundary at or after ``--phrases-per-shard``
phrases. Tar headers are fixed (mtime 0, uid/gid 0, no user names), so the same inputs and
settings give byte-identical shards.

Duplicates: a song whose content (``Song.content_hashes``: its note onsets, from the first
one) equals an earlier packed song's, in the one global input order the results are taken
in, is rejected ("duplicate of <first path>"), whatever its name, format or split. A packed
song whose first ``NEAR_BARS`` bars equal an earlier packed song's in another split is only
reported (``near_duplicates.jsonl``): a cheap signature of edited or cut versions.

Resume (:mod:`ms2dist.dataset.writer`): a re-run with the same settings and inputs keeps
every recorded shard whose size and sha256 check out and reads only the songs after it;
the hashes of the songs in kept shards (in their records) stand for the songs not read again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ms2dist.dataset.malloc import keep_freed_buffers
from ms2dist.dataset.manifest import (
    SHARD_FORMAT,
    SPLITS,
    assign_split,
    manifest_for,
    write_manifest,
)
from ms2dist.dataset.writer import PROGRESS_NAME, SplitWriter, load_records
from ms2dist.layout import pack_bits
from ms2dist.songs.files import InputError, collect_inputs, load_song
from ms2dist.songs.phrases import DEFAULT_PHRASE_CONFIG, PhraseConfig, notes_phrases
from ms2dist.songs.song import RejectError, song_id_for

__all__ = ["pack", "PackResult", "PackUsageError", "process_song", "SHARD_FORMAT"]

CONFIG_NAME = ".pack-config.json"
NEAR_NAME = "near_duplicates.jsonl"
NEAR_BARS = 16  # near-duplicates: the same first 16 bars (4 phrases of the default layout)
Task = tuple[str, int, str, str]  # (split, position in the split, path, song id)


class PackUsageError(Exception):
    """Bad invocation (no inputs, settings differ from an existing output, ...)."""


@dataclass
class SongResult:
    pos: int  # position in the split's song list
    path: str
    song_id: str
    packed: np.ndarray | None = None  # (k, n_bytes) uint8
    index: np.ndarray | None = None
    nonempty: np.ndarray | None = None
    reason: str | None = None
    content_hash: str | None = None  # of the whole song (packed songs only)
    head_hash: str | None = None  # of its first NEAR_BARS bars
    handover: tuple[str, int] | None = None  # (tmpfs file, phrase count) from a worker


_WORKER_CFG: tuple[PhraseConfig, str, str | None] | None = None


def _init_worker(cfg: PhraseConfig, fmt: str, handover_dir: str | None = None) -> None:
    global _WORKER_CFG
    _WORKER_CFG = (cfg, fmt, handover_dir)
    if handover_dir is not None:  # a pool process: keep freed song buffers
        keep_freed_buffers()


def _process(task: Task) -> SongResult:
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
        res.content_hash, res.head_hash = song.content_hashes(NEAR_BARS)
    except RejectError as e:
        res.reason = str(e)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - one bad song must not stop the pack
        res.reason = f"unexpected error ({type(e).__name__}: {e})"
    return res


@dataclass
class PackResult:
    out: Path
    n_inputs: int = 0
    n_packed_songs: int = 0
    n_rejected: int = 0
    n_near_duplicates: int = 0
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
        near = f"; {self.n_near_duplicates} near-duplicates across splits (the same first " \
            f"{NEAR_BARS} bars, see {self.out / NEAR_NAME})" if self.n_near_duplicates else ""
        return (
            f"ms2dist pack: {self.n_inputs} inputs = {self.n_packed_songs} packed + "
            f"{self.n_rejected} rejected (see {self.out / 'rejects.jsonl'}); {per}; "
            f"{self.n_read} songs read in {self.seconds:.1f} s ({rate:.1f} songs/s){resumed}"
            f"{near}"
        )


def _plan(files: list[Path], split: tuple[float, float, float]
          ) -> tuple[dict[str, list[tuple[str, str]]], list[dict]]:
    """Song ids, duplicates and splits: all known without reading a song."""
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
    return plan, early_rejects


def _claim_output(out: Path, config: dict, overwrite: bool) -> None:
    """Record the settings in ``out``; refuse (or, with overwrite, clear) a pack made with
    other settings or inputs, so a resume never mixes two packs."""
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / CONFIG_NAME
    if cfg_path.exists() and json.loads(cfg_path.read_text()) != config:
        if not overwrite:
            raise PackUsageError(
                f"{out} holds a pack made with other settings or inputs; "
                "use another --out or --overwrite"
            )
        for s in SPLITS:
            d = out / s
            if d.is_dir():
                for p in d.iterdir():
                    if p.name.startswith("shard-") or p.name in (PROGRESS_NAME, "manifest.json"):
                        p.unlink()
    cfg_path.write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")


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
    try:
        files = collect_inputs(inputs, fmt)
    except InputError as e:
        raise PackUsageError(str(e)) from None
    if not files:
        raise PackUsageError("no input files found")
    split = tuple(float(x) for x in split)  # type: ignore[assignment]
    plan, early_rejects = _plan(files, split)
    fingerprint = hashlib.sha256("\n".join(map(str, files)).encode()).hexdigest()
    _claim_output(out, {
        "format": SHARD_FORMAT, "input_format": fmt, "phrase_config": cfg.to_dict(),
        "split": list(split), "phrases_per_shard": phrases_per_shard,
        "block_size": block_size, "inputs_sha256": fingerprint, "n_inputs": len(files),
    }, overwrite)

    writers, tasks = _open_writers(out, plan, phrases_per_shard, block_size)
    result = PackResult(out=out, n_inputs=len(files))
    result.n_resumed_shards = sum(len(w.records) for w in writers.values())
    # one global order (input order) so progress is even across splits
    order = {str(f): i for i, f in enumerate(files)}
    tasks.sort(key=lambda t: order[t[2]])
    if max_songs is not None:
        tasks = tasks[:max_songs]

    first = {h: path for path, _, h, _ in _kept_songs(writers, plan)}
    results = _run(tasks, cfg, fmt, workers, progress)
    for (s, *_), r in zip(tasks, results, strict=True):
        _reject_duplicate(r, first)
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
    _write_manifests(writers, early_rejects, result, name=name, split=split, cfg=cfg,
                     phrases_per_shard=phrases_per_shard, block_size=block_size)
    result.n_near_duplicates = _write_near_duplicates(writers, plan, order, out)
    result.seconds = time.perf_counter() - t0
    assert result.n_packed_songs + result.n_rejected == result.n_inputs, "lost an input"
    return result


def _open_writers(out: Path, plan: dict[str, list[tuple[str, str]]], phrases_per_shard: int,
                  block_size: int) -> tuple[dict[str, SplitWriter], list[Task]]:
    """Each split's writer, resumed after its kept shards, and the songs left to read."""
    writers: dict[str, SplitWriter] = {}
    tasks: list[Task] = []
    for s in SPLITS:
        d = out / s
        d.mkdir(exist_ok=True)
        for p in d.glob("*.tmp"):
            p.unlink()
        w = SplitWriter(d, s, phrases_per_shard, block_size, load_records(d))
        writers[s] = w
        tasks += [(s, i, path, sid) for i, (path, sid) in enumerate(plan[s]) if i >= w.cursor]
    return writers, tasks


def _reject_duplicate(r: SongResult, first: dict[str, str]) -> None:
    """Reject ``r`` when an earlier packed song has its content; else record it as the first.

    Called in the global input order, so "earlier" never depends on ``workers``."""
    if r.reason is not None or r.content_hash is None:
        return
    path = first.setdefault(r.content_hash, r.path)
    if path != r.path:
        r.reason = f"duplicate of {path}"
        r.packed = r.index = r.nonempty = None


def _kept_songs(writers: dict[str, SplitWriter], plan: dict[str, list[tuple[str, str]]]
                ) -> list[tuple[str, str, str, str]]:
    """(path, split, hash, head hash) of the songs in the finished shards."""
    return [(plan[s][pos][0], s, h, head) for s, w in writers.items()
            for rec in w.records for pos, h, head in rec["hashes"]]


def _write_near_duplicates(writers: dict[str, SplitWriter],
                           plan: dict[str, list[tuple[str, str]]], order: dict[str, int],
                           out: Path) -> int:
    """Write ``near_duplicates.jsonl``: every packed song whose first ``NEAR_BARS`` bars
    equal those of an earlier packed song (input order) in another split. A report only:
    the same start is a hint of an edited or cut version, not proof of one song."""
    songs = sorted((order[path], path, s, head) for path, s, _, head
                   in _kept_songs(writers, plan))
    first: dict[str, tuple[str, str]] = {}
    near = []
    for _, path, s, head in songs:
        path0, s0 = first.setdefault(head, (path, s))
        if s0 != s:
            near.append({"path": path, "split": s, "starts_like": path0, "its_split": s0,
                         "bars": NEAR_BARS})
    with open(out / NEAR_NAME, "w") as f:
        for r in near:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    return len(near)


def _write_manifests(writers: dict[str, SplitWriter], early_rejects: list[dict],
                     result: PackResult, *, name: str, split: tuple[float, float, float],
                     cfg: PhraseConfig, phrases_per_shard: int, block_size: int) -> None:
    """Every split's manifest and the one ``rejects.jsonl`` (every rejected input)."""
    rejects = list(early_rejects)
    for s in SPLITS:
        w = writers[s]
        split_rejects = [r for rec in w.records for r in rec["rejects"]] + w.rejects
        rejects += split_rejects
        manifest = manifest_for(s, w.records, name=name, fractions=split,
                                n_rejected=len(split_rejects), phrase_config=cfg.to_dict(),
                                layout=cfg.layout, phrases_per_shard=phrases_per_shard,
                                block_size=block_size)
        write_manifest(result.out / s, manifest)
        result.n_phrases[s], result.n_songs[s] = manifest["n_phrases"], manifest["n_songs"]
        result.n_shards[s] = len(w.records)
    rejects.sort(key=lambda r: r["path"])
    with open(result.out / "rejects.jsonl", "w") as f:
        for r in rejects:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    result.n_rejected = len(rejects)
    result.n_packed_songs = sum(result.n_songs.values())


def _run(tasks: list[Task], cfg: PhraseConfig, fmt: str, workers: int,
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
