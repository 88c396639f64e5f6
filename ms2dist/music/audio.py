"""Samples as audio: a MIDI file rendered by FluidSynth with a General MIDI SoundFont.

Rendering runs the ``fluidsynth`` command line in fast-render mode (no sound card, faster
than real time). On Debian both parts are packages::

    sudo apt-get install fluidsynth fluid-soundfont-gm

The SoundFont is ``$MS2DIST_SOUNDFONT`` when set, else the first of
:data:`DEBIAN_SOUNDFONTS` that exists. The last notes ring on for :data:`TAIL_S` seconds
past the phrase's end (their release and the reverb have decayed to about -60 dB by then),
then an All Sound Off ends them: left alone, FluidSynth renders a strings release for many
seconds more, near silent. FluidSynth itself then adds about two seconds of silence, so a
file lasts the phrase + :data:`TAIL_S` + ~2 s. Same MIDI, SoundFont and settings ->
byte-identical audio (measured with FluidSynth 2.3).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import mido

__all__ = ["AUDIO_FORMATS", "AudioInfo", "AudioUnavailable", "DEBIAN_SOUNDFONTS", "GAIN",
           "INSTALL", "MIME_TYPES", "RenderError", "SOUNDFONT_ENV", "TAIL_S", "audio_info",
           "available", "find_soundfont", "fluidsynth_command", "render", "require"]

SOUNDFONT_ENV = "MS2DIST_SOUNDFONT"
DEBIAN_SOUNDFONTS = (Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
                     Path("/usr/share/sounds/sf2/default-GM.sf2"))
INSTALL = "sudo apt-get install fluidsynth fluid-soundfont-gm"
AUDIO_FORMATS = ("flac", "wav")
MIME_TYPES = {"flac": "audio/flac", "wav": "audio/wav"}
# FluidSynth's default gain (0.2) leaves a five-track phrase quiet (peaks near -11 dBFS);
# 0.4 brings it up while keeping headroom for dense samples.
GAIN = 0.4
TAIL_S = 3.0
ALL_SOUND_OFF = 120  # MIDI controller: silence every voice of a channel at once
RENDER_TIMEOUT_S = 300


class AudioUnavailable(RuntimeError):
    """FluidSynth or a General MIDI SoundFont is missing; the message says what to install."""


class RenderError(RuntimeError):
    """FluidSynth ran but did not write a usable audio file."""


def fluidsynth_command() -> str:
    """The ``fluidsynth`` executable on ``PATH``.

    Raises
    ------
    AudioUnavailable
        When there is none (the message names the Debian packages).
    """
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise AudioUnavailable(f"audio needs the `fluidsynth` command, which is not on PATH: "
                               f"install it and a General MIDI SoundFont ({INSTALL})")
    return exe


def find_soundfont() -> Path:
    """The General MIDI SoundFont to render with.

    Returns
    -------
    Path
        ``$MS2DIST_SOUNDFONT`` when set, else the first existing Debian path of
        :data:`DEBIAN_SOUNDFONTS`.

    Raises
    ------
    AudioUnavailable
        When the variable names no SoundFont file, or none is installed.
    """
    env = os.environ.get(SOUNDFONT_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise AudioUnavailable(f"{SOUNDFONT_ENV}={env}: no such file; point it at a .sf2 "
                                   f"SoundFont, or unset it and install fluidsynth's General "
                                   f"MIDI SoundFont ({INSTALL})")
        with open(path, "rb") as f:
            head = f.read(12)
        if head[:4] != b"RIFF" or head[8:12] != b"sfbk":
            raise AudioUnavailable(f"{SOUNDFONT_ENV}={env}: not a SoundFont (.sf2) file; "
                                   f"point it at one, or unset it ({INSTALL})")
        return path
    for path in DEBIAN_SOUNDFONTS:
        if path.is_file():  # default-GM.sf2 is a link: is_file follows it
            return path
    raise AudioUnavailable(f"no General MIDI SoundFont for fluidsynth at "
                           f"{', '.join(map(str, DEBIAN_SOUNDFONTS))}: install one ({INSTALL}) "
                           f"or set {SOUNDFONT_ENV}=/path/to/soundfont.sf2")


def require() -> tuple[str, Path]:
    """``(fluidsynth executable, SoundFont)``, or :class:`AudioUnavailable` naming what is
    missing: what commands call before any work, so a missing package fails fast."""
    return fluidsynth_command(), find_soundfont()


def available() -> bool:
    """Whether :func:`render` can run here (FluidSynth and a SoundFont are installed)."""
    try:
        require()
    except AudioUnavailable:
        return False
    return True


@dataclass(frozen=True)
class AudioInfo:
    """What an audio file's header says: ``frames`` per channel, ``md5`` of the decoded
    samples where the format records it (FLAC), else of the PCM bytes (WAV)."""

    format: str
    sample_rate: int
    channels: int
    frames: int
    md5: str

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def audio_info(path: Path) -> AudioInfo:
    """The format, rate, channels and length of a WAV or FLAC file, read with the standard
    library only (WAV: :mod:`wave`; FLAC: its STREAMINFO block).

    Raises
    ------
    ValueError
        When the file is neither.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(42)
    if head[:4] == b"fLaC":
        # STREAMINFO comes first (block type 0): 10 bytes of block/frame sizes, then 64 bits
        # of rate (20), channels - 1 (3), bits - 1 (5), total samples (36), then the MD5.
        if len(head) < 42 or head[4] & 0x7F != 0:
            raise ValueError(f"{path}: FLAC file without its STREAMINFO block")
        bits = int.from_bytes(head[18:26], "big")
        return AudioInfo("flac", bits >> 44, ((bits >> 41) & 0x7) + 1, bits & (2**36 - 1),
                         head[26:42].hex())
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        with wave.open(str(path), "rb") as w:
            md5 = hashlib.md5(w.readframes(w.getnframes())).hexdigest()
            return AudioInfo("wav", w.getframerate(), w.getnchannels(), w.getnframes(), md5)
    raise ValueError(f"{path}: neither a FLAC nor a WAV file (starts {head[:12]!r})")


def _with_tail(midi_path: Path, out: Path) -> Path:
    """A copy of ``midi_path`` with one more track: All Sound Off on every channel
    :data:`TAIL_S` seconds after the file's end (at its last tempo)."""
    mid = mido.MidiFile(str(midi_path))
    end = max((sum(m.time for m in t) for t in mid.tracks), default=0)
    tempi = [m.tempo for t in mid.tracks for m in t if m.type == "set_tempo"]
    tail = round(mido.second2tick(TAIL_S, mid.ticks_per_beat, tempi[-1] if tempi else 500000))
    track = mido.MidiTrack()
    for ch in range(16):
        track.append(mido.Message("control_change", channel=ch, control=ALL_SOUND_OFF,
                                  value=0, time=end + tail if ch == 0 else 0))
    track.append(mido.MetaMessage("end_of_track", time=0))
    if mid.type == 0:  # a type-0 file holds one track only
        mid.type = 1
    mid.tracks.append(track)
    mid.save(str(out))
    return out


def render(midi_path: Path, out_path: Path, fmt: str = "flac",
           sample_rate: int = 44100) -> Path:
    """Render a MIDI file to ``out_path`` (``fmt``: ``"flac"`` or ``"wav"``, 16-bit stereo).

    The file appears under its name only once FluidSynth has written it and its header
    checks out (written beside, then renamed).

    Parameters
    ----------
    midi_path
        A Standard MIDI File (General MIDI programs; drums on channel 10).
    out_path
        Where the audio goes.
    fmt
        ``"flac"`` (lossless, about a fifth of the size) or ``"wav"``.
    sample_rate
        Samples per second.

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    AudioUnavailable
        FluidSynth or the SoundFont is missing.
    RenderError
        FluidSynth failed, or wrote something that is not audio of the MIDI's length.
    ValueError
        ``fmt`` is not one of :data:`AUDIO_FORMATS`.
    """
    if fmt not in AUDIO_FORMATS:
        raise ValueError(f"audio format {fmt!r}: choose from {', '.join(AUDIO_FORMATS)}")
    exe, soundfont = require()
    midi_path, out_path = Path(midi_path), Path(out_path)
    if not midi_path.is_file():
        raise FileNotFoundError(f"{midi_path}: no such MIDI file")
    tmp = out_path.with_name(f".{out_path.stem}.part.{fmt}")
    tail_mid = out_path.with_name(f".{out_path.stem}.tail.mid")
    # -n -i: no MIDI input, no shell; -F: fast render to a file; -O s16: 16-bit samples.
    cmd = [exe, "-n", "-i", "-q", "-g", str(GAIN), "-r", str(sample_rate), "-T", fmt,
           "-O", "s16", "-F", str(tmp), str(soundfont), str(tail_mid)]
    try:
        try:
            _with_tail(midi_path, tail_mid)
        except (OSError, ValueError, EOFError) as e:
            raise RenderError(f"{midi_path}: not a readable MIDI file ({e})") from None
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RENDER_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
            said = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
            raise RenderError(f"fluidsynth could not render {midi_path} to {fmt} (exit "
                              f"{proc.returncode}{': ' + said[-1] if said else ''})")
        try:
            info = audio_info(tmp)
        except ValueError as e:
            raise RenderError(f"fluidsynth wrote no {fmt} audio for {midi_path}: {e}") from None
        if info.format != fmt or info.sample_rate != sample_rate or info.frames == 0:
            raise RenderError(f"fluidsynth wrote {info} for {midi_path}, not {fmt} at "
                              f"{sample_rate} Hz")
        os.replace(tmp, out_path)
    except subprocess.TimeoutExpired:
        raise RenderError(f"fluidsynth took over {RENDER_TIMEOUT_S} s on {midi_path}") from None
    finally:
        tmp.unlink(missing_ok=True)
        tail_mid.unlink(missing_ok=True)
    return out_path
