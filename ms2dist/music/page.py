"""The listening page: ``<out>/index.html`` beside a command's samples.

One static, self-contained HTML file (inline style, no script, no external resources, so it
works offline and from any static file server): per sample its pianoroll picture, an audio
player when the sample was rendered (:mod:`ms2dist.music.audio`), its notes per track and
links to its MIDI and ``.npz`` files; then the settings that made them. Links are relative,
so the folder can be moved, zipped or logged as an artifact whole.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ms2dist import TRACKS
from ms2dist.music.audio import MIME_TYPES, find_soundfont

__all__ = ["PAGE_NAME", "audio_settings", "flatten_settings", "sample_settings", "write_page"]

PAGE_NAME = "index.html"

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 72em;
       padding: 0 1em; color: #1d1d1f; background: #fff; }
h1 { font-size: 1.5em; margin-bottom: .2em; }
.lead { color: #555; margin-top: 0; }
.sample { border-top: 1px solid #ddd; padding: 1em 0; display: grid; gap: .4em 1.5em;
          grid-template-columns: minmax(0, 3fr) minmax(12em, 1fr); }
.sample h3 { grid-column: 1 / -1; margin: 0; font-size: 1.05em; }
.sample img { width: 100%; height: auto; border: 1px solid #eee; }
audio { width: 100%; }
table { border-collapse: collapse; }
th, td { text-align: left; padding: .15em .8em .15em 0; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
table.settings td { font-family: ui-monospace, monospace; word-break: break-word; }
.files a { display: block; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _url(path: str | Path, page_dir: Path) -> str:
    """``path`` relative to the page's folder, as a URL path (quoted, ``/``-separated)."""
    rel = os.path.relpath(Path(path).resolve(), page_dir.resolve())
    return quote(Path(rel).as_posix())


def _value(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_value(x) for x in v) if v else "none"
    if isinstance(v, Mapping):
        return json.dumps(v, sort_keys=False, default=str) if v else "none"
    return str(v)


def flatten_settings(settings: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"binarize": {"rule": ...}}`` -> ``{"binarize.rule": "..."}``: one table row per
    setting, values as text (floats to 4 significant digits, ``None`` as ``none``)."""
    rows: dict[str, str] = {}
    for k, v in settings.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            rows.update(flatten_settings(v, key + "."))
        else:
            rows[key] = _value(v)
    return rows


def audio_settings(audio: str | None) -> dict[str, Any]:
    """The page's settings rows for the audio (format and SoundFont, or none)."""
    if audio is None:
        return {"audio": None}
    return {"audio": f"{audio}, rendered by FluidSynth", "soundfont": find_soundfont().name}


def sample_settings(args: Any, n: int, bpm: float, binarize: Mapping[str, Any], refine: bool,
                    keep: list[str] | None) -> dict[str, Any]:
    """The settings of an ``ms2dist sample`` run (``args``: its parsed arguments): the head
    of its ``summary.json`` and the page's settings table."""
    settings = {"model": str(args.model), "mode": args.mode, "seed": args.seed, "n": n,
                "inputs": [str(p) for p in args.input], "tempo_bpm": bpm,
                "binarize": binarize, "threshold": args.threshold,
                "temperature": args.temperature, "refine": refine, "keep": keep}
    # The settings of the latent modes, where given (song, infill, vary, attributes).
    for key in ("bars", "form", "link", "tracks", "amount"):
        if getattr(args, key, None) is not None:
            settings[key] = getattr(args, key)
    if getattr(args, "attribute", None):
        settings["attributes"] = list(args.attribute)
    return settings


def _sample(entry: Mapping[str, Any], page_dir: Path) -> str:
    midi = Path(entry["midi"])
    name = entry.get("title") or midi.stem
    parts = [f'<article class="sample" id="{_e(midi.stem)}">', f"<h3>{_e(name)}</h3>",
             '<div class="media">']
    if entry.get("audio"):
        audio = midi.parent / entry["audio"]
        kind = MIME_TYPES.get(audio.suffix.lstrip("."), "audio/" + audio.suffix.lstrip("."))
        src = _e(_url(audio, page_dir))
        parts.append(f'<audio controls preload="metadata"><source src="{src}" '
                     f'type="{_e(kind)}"><a href="{src}">{_e(audio.name)}</a></audio>')
    if entry.get("png"):
        parts.append(f'<img src="{_e(_url(entry["png"], page_dir))}" '
                     f'alt="{_e("pianoroll of " + midi.stem)}">')
    parts.append('</div><div class="facts"><table class="notes">'
                 "<tr><th>track</th><th>notes</th></tr>")
    counts = entry.get("notes_per_track", {})
    for track in [*TRACKS, *(t for t in counts if t not in TRACKS)]:
        if track in counts:
            parts.append(f'<tr><td>{_e(track)}</td><td class="n" data-track="{_e(track)}">'
                         f"{int(counts[track])}</td></tr>")
    parts.append(f'<tr><th>all</th><td class="n" data-track="all">'
                 f"{sum(int(c) for c in counts.values())}</td></tr></table>")
    links = [f'<a href="{_e(_url(midi, page_dir))}">MIDI ({_e(midi.name)})</a>']
    if entry.get("npz"):
        links.append(f'<a href="{_e(_url(entry["npz"], page_dir))}">pianoroll '
                     f'({_e(Path(entry["npz"]).name)})</a>')
    parts.append(f'<p class="files">{"".join(links)}</p></div></article>')
    return "\n".join(parts)


def write_page(out_dir: Path, entries: Iterable[Mapping[str, Any]], settings: Mapping[str, Any],
               title: str) -> Path:
    """Write ``<out_dir>/index.html``: every entry's picture, audio, notes and files, then
    the settings. The player comes above the picture: play, then follow the roll.

    Parameters
    ----------
    out_dir
        The page's folder; the entries' files are linked relative to it.
    entries
        Index entries of :func:`ms2dist.music.files.write_outputs` (``midi``, ``npz``,
        ``notes_per_track``, optional ``png``, ``audio`` (a name beside the MIDI file) and
        ``title`` (the heading; default: the file's stem)).
    settings
        What made the samples (model, seed, temperature, binarize rule, ...); nested
        mappings become dotted rows.
    title
        The page's title and heading.

    Returns
    -------
    Path
        The page. It is written beside and renamed, so it is never half-written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = [_sample(e, out_dir) for e in entries]
    heard = sum('<audio ' in s for s in samples)
    lead = (f"{len(samples)} sample(s)"
            + (f", {heard} with audio" if heard else ", no audio (render it with --audio)"))
    rows = "\n".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>"
                     for k, v in flatten_settings(settings).items())
    # The empty icon keeps the browser from asking the server for /favicon.ico (a 404).
    doc = "\n".join([
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">', f"<title>{_e(title)}</title>",
        f"<style>{_STYLE}</style></head><body>", f"<h1>{_e(title)}</h1>",
        f'<p class="lead">{_e(lead)}</p>', '<section id="samples">', *samples, "</section>",
        '<section id="settings"><h2>Settings</h2>', f'<table class="settings">{rows}</table>',
        "</section></body></html>", ""])
    page = out_dir / PAGE_NAME
    tmp = out_dir / f".{PAGE_NAME}.part"
    tmp.write_text(doc, encoding="utf-8")
    os.replace(tmp, page)
    return page
