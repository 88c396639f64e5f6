"""The listening page (``<out>/index.html``, ``ms2dist.music.page``) in headless Chromium,
served by a real HTTP server, as a user opens it: no console errors, every audio player's
source loads, every picture loads, and the notes per track on the page are the index's.

The samples come from ``ms2dist sample --audio flac`` with the shipped ``pretrained:lpd5``
model (tiny, CPU). ``check_page`` is reused by ``tests/test_evaluate.py``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import browser_page, screenshot_dir
from test_audio import fluidsynth  # noqa: F401  (the fixture: fails in CI when missing)

from ms2dist import TRACKS
from ms2dist.music.audio import TAIL_S, audio_info
from ms2dist.music.page import write_page

PHRASE_S = 16 * 60 / 100.0  # 4 bars at the default 100 bpm
N = 3


def _sample(out: Path, *args: str | Path) -> Path:
    from ms2dist.cli import main

    assert main(["sample", "--model", "pretrained:lpd5", "--out", str(out), "--device", "cpu",
                 *map(str, args)]) == 0
    return out


@pytest.fixture(scope="module")
def flac_run(fluidsynth, tmp_path_factory) -> Path:  # noqa: F811
    return _sample(tmp_path_factory.mktemp("listen") / "out", "--n", N, "--seed", 2,
                   "--audio", "flac")


@contextmanager
def serve(root: Path) -> Iterator[str]:
    """``python -m http.server`` on 127.0.0.1 (a free port) serving ``root``; its URL."""
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind",
                             "127.0.0.1", "--directory", str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()  # "Serving HTTP on 127.0.0.1 port 41234 (...) ..."
        m = re.search(r"port (\d+)", line)
        assert m, f"http.server said {line!r}"
        yield f"http://127.0.0.1:{m.group(1)}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# Waits for each <audio>'s metadata (or its error), from the page's side.
_AUDIO_JS = """async () => Promise.all([...document.querySelectorAll('audio')].map(a =>
  new Promise(resolve => {
    const s = a.querySelector('source');
    const done = ok => resolve({ok, id: a.closest('article').id, type: s.type,
      can: a.canPlayType(s.type), src: a.currentSrc, ready: a.readyState,
      duration: a.duration, error: a.error ? a.error.code : null});
    if (a.readyState >= 1) return done(true);
    a.addEventListener('loadedmetadata', () => done(true), {once: true});
    a.addEventListener('error', () => done(false), {once: true});
    s.addEventListener('error', () => done(false), {once: true});
    setTimeout(() => done(false), 30000);
    a.load();
  })))"""

_PAGE_JS = """() => ({
  images: [...document.images].map(i => ({src: i.currentSrc, w: i.naturalWidth,
                                          done: i.complete})),
  samples: [...document.querySelectorAll('article.sample')].map(a => ({id: a.id,
    title: a.querySelector('h3').textContent,
    notes: Object.fromEntries([...a.querySelectorAll('td[data-track]')].map(
      td => [td.dataset.track, Number(td.textContent)]))})),
  settings: Object.fromEntries([...document.querySelectorAll('table.settings tr')].map(
    tr => [tr.querySelector('th').textContent, tr.querySelector('td').textContent]))})"""


def check_page(out: Path, entries: list[dict[str, Any]], shot: str,
               page_dir: Path | None = None) -> dict[str, Any]:
    """Open ``page_dir/index.html`` (default ``out``) over HTTP in headless Chromium and
    check it against the index ``entries``; returns what the page showed."""
    page_dir = page_dir or out
    with serve(page_dir) as url, browser_page() as (page, errors):
        bad: list[str] = []
        page.on("response", lambda r: bad.append(f"{r.status} {r.url}")
                if r.status >= 400 else None)
        page.goto(f"{url}/index.html", wait_until="load")
        audios = page.evaluate(_AUDIO_JS)
        shown = page.evaluate(_PAGE_JS)
        page.screenshot(path=str(screenshot_dir() / shot), full_page=True)
    assert not errors, errors
    assert not bad, bad
    with_audio = [e for e in entries if e.get("audio")]
    assert len(audios) == len(with_audio)
    for a, e in zip(audios, with_audio, strict=True):
        assert a["ok"] and a["error"] is None, a
        assert a["can"] in ("probably", "maybe") and a["ready"] >= 1, a
        assert a["src"].endswith("/" + e["audio"]), a
        heard = audio_info(Path(e["midi"]).parent / e["audio"]).seconds
        assert a["duration"] == pytest.approx(heard, abs=0.05), (a, heard)
    pictures = [e for e in entries if e.get("png")]
    assert len(shown["images"]) == len(pictures)
    for img in shown["images"]:
        assert img["done"] and img["w"] > 0, img
    by_id = {s["id"]: s for s in shown["samples"]}
    assert len(by_id) == len(entries) == len(shown["samples"])
    for e in entries:
        s = by_id[Path(e["midi"]).stem]
        counts = e["notes_per_track"]
        assert s["notes"] == {**counts, "all": sum(counts.values())}, s
    return shown


def test_sample_audio_files_match_the_index(flac_run):
    index = json.loads((flac_run / "generate_index.json").read_text())
    assert [e["audio"] for e in index] == [f"generate_{i:03d}.flac" for i in range(N)]
    for e in index:
        info = audio_info(flac_run / e["audio"])
        assert (info.format, info.sample_rate, info.channels) == ("flac", 44100, 2)
        assert PHRASE_S + TAIL_S <= info.seconds <= PHRASE_S + TAIL_S + 3.0, info
    assert json.loads((flac_run / "summary.json").read_text())["files"] == index
    assert sum(e["notes_on"] for e in index) > 0
    html = (flac_run / "index.html").read_text()
    assert html.count("<audio ") == N and html.count('type="audio/flac"') == N


def test_the_page_in_chromium(flac_run):
    index = json.loads((flac_run / "generate_index.json").read_text())
    shown = check_page(flac_run, index, "listening_page_sample.png")
    summary = json.loads((flac_run / "summary.json").read_text())
    s = shown["settings"]
    assert s["model"] == "pretrained:lpd5" and s["mode"] == "generate" and s["seed"] == "2"
    assert s["temperature"] == "1" and s["binarize.rule"] == summary["binarize"]["rule"]
    for t in TRACKS:
        assert float(s[f"binarize.thresholds.{t}"]) == pytest.approx(
            summary["binarize"]["thresholds"][t], rel=1e-3)
    assert s["audio"].startswith("flac") and s["soundfont"].endswith(".sf2")


def test_restore_page_shows_each_input_beside_its_output(fluidsynth, tmp_path):  # noqa: F811
    from test_fail_sampling import _write_song

    out = _sample(tmp_path / "r", "--mode", "restore", "--input",
                  _write_song(tmp_path / "song.mid"), "--n", 2, "--audio", "wav", "--no-png")
    outs = json.loads((out / "restore_index.json").read_text())
    ins = json.loads((out / "input_index.json").read_text())
    entries = [outs[0], ins[0], outs[1], ins[1]]
    shown = check_page(out, entries, "listening_page_restore.png")
    assert [s["id"] for s in shown["samples"]] == ["restore_000", "input_000",
                                                     "restore_001", "input_001"]
    assert shown["samples"][1]["title"] == "input_000: the input of restore_000"
    assert not shown["images"] and all(e["audio"].endswith(".wav") for e in entries)


def test_no_audio_no_players(tmp_path):
    out = _sample(tmp_path / "q", "--n", 2)
    index = json.loads((out / "generate_index.json").read_text())
    assert not any("audio" in e for e in index)
    html = (out / "index.html").read_text()
    assert "<audio" not in html and html.count("<img ") == 2
    assert "no audio (render it with --audio)" in html


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [v or "" for k, v in attrs if k in ("src", "href")]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_page_escapes_text_and_links_only_its_own_files(tmp_path):
    from ms2dist.music.files import write_outputs

    roll = np.zeros((1, 4, 48, 84, 5), bool)
    roll[0, 0, :12, 40, 1] = True
    sub = tmp_path / "figures"
    (entry,) = write_outputs(roll.astype(np.float32), roll, sub, "a&b")
    evil = "<script>alert('x')</script> & \"q\""
    page = write_page(tmp_path, [{**entry, "title": evil}],
                      {"model": evil, "nested": {"k": [1, 2.5, None]}}, title=evil)
    text = page.read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text
    parser = _Links()
    parser.feed(text)
    assert evil in "".join(parser.text)  # the text itself survives, escaped
    assert "nested.k" in text and "1, 2.5, none" in text
    files = [link for link in parser.links if not link.startswith("data:")]
    assert files == ["figures/a%26b_000.png", "figures/a%26b_000.mid",
                     "figures/a%26b_000.npz"]
    assert "http" not in text  # nothing from outside: the page works offline
