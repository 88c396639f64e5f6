"""Real music that ships inside a package: music21's bundled corpus, written to MIDI.

The embedded default data of ``ms2dist demo``: Bach chorales and string quartets by
Haydn, Mozart and Beethoven (public-domain scores bundled with music21). Each piece is
written to a multi-instrument MIDI file and then packed through exactly the same MIDI
path as user data, so the LPD-5 rule maps programs to tracks.

Part -> program (by part name; the corpus has no drums, so Drums stays empty):

| part name contains | program | LPD-5 track |
|---|---|---|
| soprano, alto | 0 (Acoustic Grand Piano) | Piano |
| tenor | 24 (Nylon Guitar) | Guitar |
| bass, cello, contrabass, continuo | 32 (Acoustic Bass) | Bass |
| violin, viola | 48 (String Ensemble) | Strings |
| anything else music21 knows a program for (horn, oboe, ...) | its program | LPD-5 rule |

Parts that match nothing and carry no program are reported and left out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

__all__ = ["PART_PROGRAMS", "program_for_part", "corpus_pieces", "write_corpus_midi"]

PART_PROGRAMS: tuple[tuple[tuple[str, ...], int], ...] = (
    (("cello", "contrabass", "continuo", "bass"), 32),  # before "viol": violoncello
    (("soprano", "alto"), 0),
    (("tenor",), 24),
    (("violin", "viola"), 48),
)
TICKS = 480  # per quarter note


def program_for_part(name: str, instrument_program: int | None) -> int | None:
    low = (name or "").lower()
    for keys, program in PART_PROGRAMS:
        if any(k in low for k in keys):
            return program
    if instrument_program is not None:
        return instrument_program
    try:  # "Horn 2", "Oboe", "Trumpet 1": music21 knows their General MIDI program
        from music21 import instrument

        return instrument.fromString(name).midiProgram
    except Exception:  # noqa: BLE001 - music21 raises its own errors for unknown names
        return None


def corpus_pieces(composers: Iterable[str] = ("bach", "haydn", "mozart", "beethoven"),
                  max_pieces: int | None = None) -> list[str]:
    """Corpus paths (strings), chorales first, sorted for reproducibility."""
    from music21 import corpus

    paths: list[str] = []
    for c in composers:
        paths += sorted(str(p) for p in corpus.getComposer(c)
                        if str(p).endswith((".mxl", ".xml", ".musicxml", ".krn")))
    return paths[:max_pieces] if max_pieces else paths


def _piece_id(path: str) -> str:
    tail = path.split("corpus/")[-1]
    # No dots: file stems become song ids, and ids must stay unique.
    return tail.rsplit(".", 1)[0].replace("/", "_").replace(".", "-")


def _convert(args: tuple[str, str]) -> dict:
    """One corpus piece -> one .mid; returns a report row (never raises)."""
    import mido
    from music21 import converter, meter, tempo

    path, out_dir = args
    pid = _piece_id(path)
    row: dict = {"piece": pid, "source": path.split("corpus/")[-1], "parts": [],
                 "unmapped": []}
    try:
        score = converter.parse(path).stripTies()
        ts = next(iter(score.recurse().getElementsByClass(meter.TimeSignature)), None)
        num, den = (ts.numerator, ts.denominator) if ts else (4, 4)
        mm = next(iter(score.recurse().getElementsByClass(tempo.MetronomeMark)), None)
        bpm = float(mm.getQuarterBPM()) if mm and mm.getQuarterBPM() else 100.0
        # A pickup bar would shift every bar line: pad it to a full bar.
        pad = 0.0
        first = next(iter(score.parts[0].getElementsByClass("Measure")), None) \
            if score.parts else None
        if first is not None and ts is not None:
            bar = ts.barDuration.quarterLength
            if 0 < first.duration.quarterLength < bar:
                pad = float(bar - first.duration.quarterLength)
        mid = mido.MidiFile(ticks_per_beat=TICKS)
        meta = mido.MidiTrack()
        meta.append(mido.MetaMessage("time_signature", numerator=num, denominator=den, time=0))
        meta.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm), time=0))
        mid.tracks.append(meta)
        channel = 0
        for part in score.parts:
            inst = part.getInstrument(returnDefault=False)
            prog = program_for_part(part.partName or "", inst.midiProgram if inst else None)
            if prog is None:
                row["unmapped"].append(part.partName or "?")
                continue
            row["parts"].append({"name": part.partName, "program": prog})
            events = []
            for n in part.flatten().notes:
                on = round((float(n.offset) + pad) * TICKS)
                off = on + max(1, round(float(n.duration.quarterLength) * TICKS))
                for p in n.pitches:
                    events.append((on, 1, p.midi))
                    events.append((off, 0, p.midi))
            events.sort()
            tr = mido.MidiTrack()
            tr.append(mido.MetaMessage("track_name", name=part.partName or "part", time=0))
            tr.append(mido.Message("program_change", program=prog, channel=channel, time=0))
            now = 0
            for tick, kind, pitch in events:
                msg = "note_on" if kind else "note_off"
                tr.append(mido.Message(msg, note=int(pitch), velocity=80 if kind else 0,
                                       channel=channel, time=tick - now))
                now = tick
            mid.tracks.append(tr)
            channel = (channel + 1) % 16
            if channel == 9:  # never the drum channel
                channel = 10
        out = Path(out_dir) / f"{pid}.mid"
        mid.save(str(out))
        row.update({"midi": str(out), "time_signature": f"{num}/{den}", "bpm": bpm})
    except Exception as e:  # noqa: BLE001 - a bad score is reported, not fatal
        row["error"] = f"{type(e).__name__}: {e}"
    return row


def write_corpus_midi(out_dir: Path, max_pieces: int | None = None, workers: int = 2,
                      composers: Iterable[str] = ("bach", "haydn", "mozart", "beethoven"),
                      ) -> list[dict]:
    """Write the corpus as MIDI into ``out_dir`` (cached: existing files are kept).

    Returns one report row per piece; ``out_dir/corpus_report.json`` holds the same.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path = out_dir / "corpus_report.json"
    pieces = corpus_pieces(composers, max_pieces)
    if report_path.is_file():
        cached = json.loads(report_path.read_text())
        if [r["source"] for r in cached] == [p.split("corpus/")[-1] for p in pieces] and all(
                Path(r["midi"]).is_file() for r in cached if "midi" in r):
            return cached
    jobs = [(p, str(out_dir)) for p in pieces]
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            rows = list(ex.map(_convert, jobs, chunksize=4))
    else:
        rows = [_convert(j) for j in jobs]
    report_path.write_text(json.dumps(rows, indent=1))
    return rows
