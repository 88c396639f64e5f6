"""Samples as audio (``ms2dist.music.audio``): real FluidSynth with Debian's General MIDI
SoundFont, decoded with the standard library (``wave``; FLAC through its STREAMINFO header).

Known answers: a phrase with notes in bars 1 and 3 only is loud there and quiet in the bars
between; an empty phrase renders to (dithered) silence; the audio lasts the phrase, then
``TAIL_S`` of release that has died away before the All Sound Off (the tail is not cut
off), then silence. And without FluidSynth or a SoundFont, ``--audio`` is one line naming
the package, before any work.
"""

from __future__ import annotations

import array
import hashlib
import math
import os
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
from conftest import run_ms2dist

from ms2dist import TRACKS
from ms2dist.music.audio import (
    DEBIAN_SOUNDFONTS,
    SOUNDFONT_ENV,
    TAIL_S,
    AudioUnavailable,
    audio_info,
    available,
    find_soundfont,
    render,
    require,
)
from ms2dist.music.files import write_outputs
from ms2dist.music.midi import write_midi

BPM = 100.0
PHRASE_S = 16 * 60 / BPM  # 4 bars of 4/4
PAD_MAX_S = 3.0  # the silence FluidSynth adds after the last event (about 2 s)
DITHER = 4 / 32768
RATE = 44100


@pytest.fixture(scope="module")
def fluidsynth() -> None:
    """The real renderer; CI installs it (scripts/system-deps.sh) and must not skip."""
    if shutil.which("fluidsynth") and available():
        return
    msg = "fluidsynth or its General MIDI SoundFont is missing: run scripts/system-deps.sh"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def _samples(path: Path) -> np.ndarray:
    """A 16-bit WAV's samples, ``(frames, channels)`` float in [-1, 1]."""
    with wave.open(str(path), "rb") as w:
        assert w.getsampwidth() == 2 and w.getframerate() == RATE
        data = array.array("h", w.readframes(w.getnframes()))
        channels = w.getnchannels()
    return np.asarray(data, dtype=np.float64).reshape(-1, channels) / 32768.0


def _rms(x: np.ndarray, t0: float, t1: float) -> float:
    seg = x[int(t0 * RATE):int(t1 * RATE)]
    return math.sqrt(float(np.mean(seg ** 2)))


def _two_bar_roll() -> np.ndarray:
    """Piano chords on every beat of bars 1 and 3, nothing in bars 2 and 4: (192, 84, 5)."""
    roll = np.zeros((4 * 48, 84, len(TRACKS)), dtype=bool)
    piano = TRACKS.index("Piano")
    for bar in (0, 2):
        for beat in range(4):
            t = bar * 48 + beat * 12
            roll[t:t + 10, [36, 40, 43], piano] = True  # C major around middle C
    return roll


def test_notes_are_heard_where_they_are_played(fluidsynth, tmp_path):
    mid = tmp_path / "two_bars.mid"
    write_midi(_two_bar_roll(), mid, tempo_bpm=BPM)
    x = _samples(render(mid, tmp_path / "two_bars.wav", "wav"))
    bar = PHRASE_S / 4
    assert x.shape[1] == 2
    assert PHRASE_S + TAIL_S <= len(x) / RATE <= PHRASE_S + TAIL_S + PAD_MAX_S
    loud = [_rms(x, 0.0, bar), _rms(x, 2 * bar, 3 * bar)]
    # The second halves of the silent bars: the release of the last chord has died away.
    quiet = [_rms(x, 1.5 * bar, 2 * bar), _rms(x, 3.5 * bar, 4 * bar)]
    assert min(loud) > 0.01, loud  # about -40 dBFS at least
    assert max(quiet) * 30 < min(loud), (loud, quiet)


def test_an_empty_phrase_is_silent(fluidsynth, tmp_path):
    mid = tmp_path / "empty.mid"
    write_midi(np.zeros((192, 84, 5), bool), mid, tempo_bpm=BPM)
    x = _samples(render(mid, tmp_path / "empty.wav", "wav"))
    assert PHRASE_S + TAIL_S <= len(x) / RATE <= PHRASE_S + TAIL_S + PAD_MAX_S
    assert np.abs(x).max() <= DITHER


@pytest.mark.data
def test_a_real_phrase_renders_to_its_length_with_its_tail(fluidsynth, lpd5_test_small,
                                                           tmp_path):
    """A phrase of a real song through ``write_outputs(audio=...)``: WAV and FLAC of the
    phrase's length plus a tail that ends quiet; byte-identical on a second render."""
    from ms2dist.songs.files import file_phrases

    song = sorted(lpd5_test_small.rglob("*.npz"))[0]
    phrases, bpm = file_phrases(song)
    busy = int(np.argmax([p.sum() for p in phrases]))
    phrase = phrases[busy:busy + 1]
    seconds = phrase.shape[1] * phrase.shape[2] / 12 * 60 / bpm
    entries = {}
    for fmt in ("wav", "flac"):
        (e,) = write_outputs(phrase.astype(np.float32), phrase, tmp_path / fmt, "real", bpm=bpm,
                             pictures=False, audio=fmt)
        assert e["audio"] == f"real_000.{fmt}"
        entries[fmt] = tmp_path / fmt / e["audio"]
    x = _samples(entries["wav"])
    wav, flac = audio_info(entries["wav"]), audio_info(entries["flac"])
    assert (flac.format, flac.sample_rate, flac.channels) == ("flac", RATE, 2)
    assert flac.frames == wav.frames == len(x)
    end = seconds + TAIL_S
    assert end <= wav.seconds <= end + PAD_MAX_S, (seconds, wav.seconds)
    peak = float(np.abs(x).max())
    assert peak > 0.05 and _rms(x, 0, seconds) > 0.005, peak
    # Before the All Sound Off the release has died away (-40 dB): the tail is not cut ...
    assert float(np.abs(x[int((end - 0.1) * RATE):int(end * RATE)]).max()) < 0.01 * peak
    # ... and after it the file is silent.
    assert float(np.abs(x[int((end + 0.05) * RATE):]).max()) <= DITHER
    # FLAC's own MD5 of its decoded samples is not that of silence of the same length.
    silence = hashlib.md5(bytes(flac.frames * flac.channels * 2)).hexdigest()
    assert flac.md5 != silence and len(flac.md5) == 32
    # Same MIDI, same bytes (both formats).
    mid = tmp_path / "wav" / "real_000.mid"
    for fmt, first in entries.items():
        again = render(mid, tmp_path / f"again.{fmt}", fmt)
        assert again.read_bytes() == first.read_bytes(), fmt
    assert not list(tmp_path.rglob(".*part*"))


def test_a_bad_format_and_a_missing_midi_are_named(fluidsynth, tmp_path):
    with pytest.raises(ValueError, match="'mp3'.*flac, wav"):
        render(tmp_path / "x.mid", tmp_path / "x.mp3", "mp3")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "x.mid")):
        render(tmp_path / "x.mid", tmp_path / "x.wav", "wav")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------- missing FluidSynth


def test_soundfont_variable_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv(SOUNDFONT_ENV, str(tmp_path / "nowhere.sf2"))
    with pytest.raises(AudioUnavailable) as e:
        find_soundfont()
    msg = str(e.value)
    assert f"{SOUNDFONT_ENV}={tmp_path / 'nowhere.sf2'}: no such file" in msg
    assert "apt-get install fluidsynth fluid-soundfont-gm" in msg and "\n" not in msg
    assert not available()
    not_sf2 = tmp_path / "song.mid"
    write_midi(np.zeros((48, 84, 5), bool), not_sf2)
    monkeypatch.setenv(SOUNDFONT_ENV, str(not_sf2))
    with pytest.raises(AudioUnavailable, match="not a SoundFont"):
        require()
    monkeypatch.setenv(SOUNDFONT_ENV, str(DEBIAN_SOUNDFONTS[0]))
    assert find_soundfont().is_file()


def test_missing_fluidsynth_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AudioUnavailable) as e:
        render(tmp_path / "x.mid", tmp_path / "x.flac")
    msg = str(e.value)
    assert "`fluidsynth`" in msg and "sudo apt-get install fluidsynth fluid-soundfont-gm" in msg
    assert not available() and not (tmp_path / "x.flac").exists()


def test_sample_without_fluidsynth_fails_fast(tmp_path):
    """A user's shell without FluidSynth: exit 2, one line naming it, nothing written."""
    empty = tmp_path / "bin"
    empty.mkdir()
    out = tmp_path / "out"
    proc = run_ms2dist(["sample", "--model", "pretrained:lpd5", "--n", "2", "--audio", "flac",
                        "--device", "cpu", "--out", out], env={"PATH": str(empty)},
                       check=False, timeout=300)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith("ms2dist sample: error: ") and "fluidsynth" in err
    assert "apt-get install fluidsynth fluid-soundfont-gm" in err
    assert not out.exists() and proc.stdout == ""


def test_evaluate_without_a_soundfont_fails_before_any_work(tmp_path, monkeypatch, capsys):
    from ms2dist.cli import main

    monkeypatch.setenv(SOUNDFONT_ENV, str(tmp_path / "gone.sf2"))
    # Neither the model nor the data exists: the audio check comes first.
    assert main(["evaluate", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "d"),
                 "--out", str(tmp_path / "o"), "--audio", "wav", "--no-mlflow"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("ms2dist evaluate: error: ")
    assert f"{SOUNDFONT_ENV}={tmp_path / 'gone.sf2'}" in err and "fluid-soundfont-gm" in err
    assert not (tmp_path / "o").exists()
