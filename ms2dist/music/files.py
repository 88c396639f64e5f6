"""Model outputs as files: one MIDI, pianoroll ``.npz`` and PNG picture (and, on request,
a FLAC or WAV rendering) per phrase.

Used by ``ms2dist sample``, by training (sample artifacts in MLflow) and by
``ms2dist evaluate``. Binarising is explicit: probabilities and the notes played (chosen
by a :class:`ms2dist.inference.calibration.BinarizeRule`) both go in.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ms2dist import TRACKS
from ms2dist.layout import DEFAULT_LAYOUT, PhraseLayout
from ms2dist.music.audio import render
from ms2dist.music.midi import write_midi
from ms2dist.music.multitrack import write_sample_npz
from ms2dist.music.page import audio_settings, write_page
from ms2dist.music.pianoroll import plot_pianoroll

__all__ = ["write_outputs", "notes_per_track", "OutputIndex", "SampleFiles", "dump_json_list",
           "DEFAULT_BPM", "notes_line"]

DEFAULT_BPM = 100.0


def notes_per_track(roll: np.ndarray) -> dict[str, int]:
    """Notes (maximal runs of on-steps of one pitch, as in MIDI) per track of one phrase
    ``(bars, T, P, tracks)``: what a listener hears, not the count of on-cells."""
    x = np.asarray(roll) != 0
    x = x.reshape(-1, *x.shape[-2:])  # (time, pitch, tracks)
    starts = x & ~np.concatenate([np.zeros_like(x[:1]), x[:-1]], axis=0)
    return {t: int(n) for t, n in zip(TRACKS, starts.sum((0, 1)).tolist(), strict=True)}


def notes_line(entry: dict[str, Any]) -> str:
    """``generate_000.mid: Drums 88, Piano 46, ... notes (217 in all)`` for an index entry."""
    counts = entry["notes_per_track"]
    return (f"{Path(entry['midi']).name}: " + ", ".join(f"{t} {counts[t]}" for t in TRACKS)
            + f" notes ({sum(counts.values())} in all)")


def write_outputs(probs: np.ndarray, binary: np.ndarray, out: Path, prefix: str,
                  bpm: float = DEFAULT_BPM, titles: list[str] | None = None,
                  pictures: bool = True, layout: PhraseLayout = DEFAULT_LAYOUT, *,
                  start: int = 0, index: bool = True,
                  audio: str | None = None) -> list[dict[str, Any]]:
    """One ``.mid``, ``.npz`` and ``.png`` per phrase; returns an index of the files.

    ``probs``: note probabilities ``(N, bars, T, P, tracks)`` (stored as float16);
    ``binary``: the notes played, same shape (non-zero = on; stored as bool). The MIDI
    file holds exactly the npz's ``pianoroll`` (``ms2dist.music.midi.read_midi`` gives it back).
    Same inputs -> byte-identical files. ``layout``: pitch window and grid of the phrases.

    ``start``: the number of the first phrase (``<prefix>_<start>.mid``, ...), so that a
    caller writing in batches continues the numbering; ``index=False`` leaves
    ``<prefix>_index.json`` to that caller (written once, at the end). Every file appears
    under its name only once complete (written beside it, then renamed), so an interrupted
    run never leaves a truncated ``.npz`` or ``.mid`` behind.

    ``audio``: ``"flac"`` or ``"wav"`` also renders each MIDI file to ``<stem>.<audio>``
    beside it (:func:`ms2dist.music.audio.render`) and names it in the entry
    (``"audio": "<file name>"``); it raises ``AudioUnavailable`` if FluidSynth or its
    SoundFont is missing, so check ``ms2dist.music.audio.require()`` before costly work.
    """
    out = Path(out)
    binary = np.asarray(binary) != 0
    probs = np.asarray(probs)
    if probs.shape != binary.shape:
        raise ValueError(f"probabilities {probs.shape} and notes {binary.shape} differ in shape")
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(len(binary)):
        stem = out / f"{prefix}_{start + i:03d}"
        title = (titles[i] if titles else f"{prefix} {start + i}") if pictures else None
        entry = _write_phrase(stem, probs[i], binary[i], bpm, title, layout)
        if audio is not None:
            entry["audio"] = render(stem.with_suffix(".mid"), stem.with_suffix(f".{audio}"),
                                    audio).name
        entries.append(entry)
    if index:
        (out / f"{prefix}_index.json").write_text(json.dumps(entries, indent=1))
    return entries


def _write_phrase(stem: Path, probs: np.ndarray, binary: np.ndarray, bpm: float,
                  title: str | None, layout: PhraseLayout) -> dict[str, Any]:
    """``stem.mid``, ``stem.npz`` and (with a ``title``) ``stem.png``; their index entry."""
    roll = binary.reshape(-1, *binary.shape[-2:])  # (bars * steps, pitches, tracks)
    with _atomic(stem.with_suffix(".mid")) as tmp:
        write_midi(roll, tmp, tempo_bpm=bpm, steps_per_beat=layout.steps_per_beat,
                   lowest_pitch=layout.lowest_pitch)
    with _atomic(stem.with_suffix(".npz")) as tmp:
        # A pypianoroll Multitrack (pypianoroll.load opens it) with our arrays alongside.
        write_sample_npz(tmp, binary, probs, bpm, layout, name=stem.name)
    entry = {"midi": str(stem.with_suffix(".mid")), "npz": str(stem.with_suffix(".npz")),
             "notes_on": int(binary.sum()), "notes_per_track": notes_per_track(binary)}
    if title is not None:
        with _atomic(stem.with_suffix(".png")) as tmp:
            plot_pianoroll(roll, tmp, title=title, steps_per_beat=layout.steps_per_beat,
                           beats_per_bar=layout.beats_per_bar, lowest_pitch=layout.lowest_pitch)
        entry["png"] = str(stem.with_suffix(".png"))
    return entry


@contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """A temporary name to write ``path`` under, renamed to ``path`` once the write is done:
    the name only ever holds a whole file. The temporary keeps the suffix (matplotlib picks
    the format from it) and is hidden."""
    tmp = path.with_name(f".{path.stem}.part{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class OutputIndex:
    """``<prefix>_index.json`` (what :func:`write_outputs` writes) for outputs written in
    batches: the entries go to a hidden ``.<prefix>_index.jsonl`` as each batch is written
    (memory flat in the number of outputs; an interrupted run leaves it readable) and become
    the JSON list, the same bytes as one ``write_outputs`` call, at :meth:`finish`."""

    def __init__(self, out: Path, prefix: str) -> None:
        self.path = Path(out) / f"{prefix}_index.json"
        self.part = Path(out) / f".{prefix}_index.jsonl"
        self.n = 0
        self.part.unlink(missing_ok=True)  # a previous interrupted run's

    def add(self, entries: list[dict[str, Any]]) -> None:
        with open(self.part, "a") as f:
            f.write("".join(json.dumps(e) + "\n" for e in entries))
        self.n += len(entries)

    def entries(self) -> Iterator[dict[str, Any]]:
        """The entries written, up to a line an interruption may have cut short."""
        if not self.part.is_file():
            return
        with open(self.part) as f:
            for line in f:
                try:
                    yield json.loads(line)
                except ValueError:
                    return

    def recount(self) -> int:
        """``n`` from the file (an interruption may fall between a write and its count)."""
        self.n = sum(1 for _ in self.entries())
        return self.n

    def write_into(self, path: Path, head: dict[str, Any], key: str) -> None:
        """``json.dumps({**head, key: entries}, indent=1)`` into ``path``, streamed."""
        with open(path, "w") as f:
            f.write((json.dumps(head, indent=1)[:-2] + "," if head else "{")
                    + f"\n {json.dumps(key)}: ")
            dump_json_list(f, self.entries(), level=1)
            f.write("\n}")

    def finish(self) -> None:
        with open(self.path, "w") as f:
            dump_json_list(f, self.entries(), level=0)
        self.discard()

    def discard(self) -> None:
        self.part.unlink(missing_ok=True)


class SampleFiles:
    """The files of one ``ms2dist sample`` run, written batch by batch: each output (and
    the input phrase it came from, if any) by :func:`write_outputs`; at :meth:`finish`
    ``<prefix>_index.json``, ``input_index.json``, ``summary.json`` and ``index.html``."""

    def __init__(self, out: Path, prefix: str, with_inputs: bool, *, bpm: float,
                 layout: PhraseLayout, pictures: bool, audio: str | None) -> None:
        self.out, self.prefix = Path(out), prefix
        self.kw = {"bpm": bpm, "layout": layout, "pictures": pictures, "audio": audio,
                   "index": False}
        self.index = OutputIndex(out, prefix)
        self.inputs = OutputIndex(out, "input") if with_inputs else None

    def write(self, start: int, probs: np.ndarray, binary: np.ndarray,
              inputs: np.ndarray | None, titles: list[str]) -> list[dict[str, Any]]:
        """Write outputs ``start, start + 1, ...`` (and their ``inputs``); their entries."""
        written = []
        if inputs is not None:  # the input phrases, next to what became of them
            written = write_outputs(
                inputs.astype(np.float32), inputs, self.out, "input", start=start,
                titles=[f"input phrase {i}" for i in range(start, start + len(inputs))],
                **self.kw)
        entries = write_outputs(probs, binary, self.out, self.prefix, start=start,
                                titles=titles, **self.kw)
        if self.inputs is not None:  # the two indexes grow together, batch by batch
            self.inputs.add(written)
        self.index.add(entries)
        return entries

    def finish(self, summary: dict[str, Any], title: str, interrupted: bool = False) -> None:
        """``summary.json`` (``summary`` + the entries as ``files``), the indexes and the
        listening page (``summary`` is its settings). ``interrupted``: of the samples that
        were written, and nothing when none was."""
        if interrupted and self.index.recount() == 0:
            self.index.discard()
            if self.inputs is not None:
                self.inputs.discard()
            return
        summary = {**summary, "n": self.index.n}
        if interrupted:
            summary["interrupted"] = True
        self.index.write_into(self.out / "summary.json", summary, "files")
        inputs = list(self.inputs.entries()) if self.inputs is not None else []
        page = []
        for i, entry in enumerate(self.index.entries()):
            page.append(entry)
            if i < len(inputs):  # each output, then the phrase it was made from
                page.append({**inputs[i], "title": f"input_{i:03d}: the input of "
                             f"{Path(entry['midi']).stem}"})
        write_page(self.out, page, {**summary, **audio_settings(self.kw["audio"])}, title)
        if self.inputs is not None:
            self.inputs.finish()
        self.index.finish()


def dump_json_list(f: Any, items: Iterable[Any], level: int) -> None:
    """Write ``items`` as ``json.dumps(..., indent=1)`` writes a list nested ``level`` deep
    (the same bytes), one item at a time."""
    pad = "\n" + " " * (level + 1)
    first = True
    for item in items:
        f.write(("[" if first else ",") + pad + json.dumps(item, indent=1).replace("\n", pad))
        first = False
    f.write("[]" if first else "\n" + " " * level + "]")
