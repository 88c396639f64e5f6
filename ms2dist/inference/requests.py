"""Requests to the served model: parsing, checking, and the answers a client can use.

The request format is documented in ``docs/serving.md``. One request (one row) is a mapping
of the :data:`FIELDS` below; rows come from any MLflow input format (``dataframe_split``,
``dataframe_records``, ``inputs`` as a dict or a list, ``instances``) and ``params``
supplies the values a row leaves out. Every key is checked against :data:`FIELDS` and
every value against its range; a bad one raises :class:`RequestError` with one line
naming the key, the value and what is allowed.

Answers (:func:`notes_answer`, :func:`midi_answer`) are one dict per sample: the notes of
each track as ``[start_step, midi_pitch, duration_steps]`` with the grid needed to play
them, or the base64 of the MIDI file ``ms2dist sample`` writes for the same roll.
"""

from __future__ import annotations

import base64
import math
import re
import tempfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ms2dist import TRACKS
from ms2dist.inference.modes import ATTRIBUTE_MODES
from ms2dist.layout import PhraseLayout, parse_tracks
from ms2dist.music.files import DEFAULT_BPM
from ms2dist.music.midi import _runs, write_midi

__all__ = ["FIELDS", "DEFAULTS", "MAX_N", "MAX_PHRASES", "MAX_SONG_BARS", "MODES",
           "PHRASE_MODES", "BINARIZE", "OUTPUTS",
           "Request", "RequestError", "parse_requests", "notes_answer", "midi_answer",
           "notes_to_roll"]

MODES = ("generate", "restore", "song", "infill", "vary")
#: Modes that read ``phrases`` / that take ``n`` and ``temperature`` / ``attributes``.
PHRASE_MODES = ("restore", "infill", "vary")
COUNT_MODES = ("generate", "song")
BINARIZE = ("calibrated", "threshold", "bernoulli")
OUTPUTS = ("notes", "midi", "probabilities")
#: Most samples one request may ask for (``n``) / phrases one restore may send: a bound on
#: the memory and time of a single call.
MAX_N = 64
MAX_PHRASES = 64
MAX_TEMPERATURE = 10.0
#: Longest song one request may ask for, in bars.
MAX_SONG_BARS = 256
#: Most phrases one call may produce, all its requests together.
MAX_CALL_PHRASES = 4 * MAX_N

#: Every key a request may carry, with what it is.
FIELDS: dict[str, str] = {
    "mode": f"one of {', '.join(MODES)}",
    "n": f"samples to generate, an integer in 1..{MAX_N} (generate: phrases, song: songs)",
    "seed": "an integer >= 0 (generate noise and bernoulli draws)",
    "temperature": f"prior scale, a number in (0, {MAX_TEMPERATURE:g}] (generate, song)",
    "binarize": f"which notes are played: one of {', '.join(BINARIZE)} (default: the "
                "model's calibrated thresholds, 0.5 for a model without them)",
    "threshold": "one cutoff in (0, 1) for every track (goes with binarize threshold)",
    "output": f"one of {', '.join(OUTPUTS)}",
    "phrases": "restore, infill, vary: phrases (N, bars, steps_per_bar, pitches, tracks), 0/1",
    "bars": f"song: its length in bars, a multiple of the phrase up to {MAX_SONG_BARS}; "
            "infill: the bars of each phrase to regenerate, e.g. \"3-4\" or \"1,3\"",
    "form": "song: one letter per section, e.g. AABA (the A sections repeat)",
    "link": "song, infill: correlation of neighbouring bars' latents, a number in [0, 1)",
    "tracks": "infill: comma-separated tracks to regenerate, e.g. Piano,Bass (default all)",
    "amount": "vary: distance from the input phrase, a number in [0, 1]",
    "attributes": "generate, restore, song, vary: TRACK.ATTR=SCALE, comma-separated, e.g. "
                  "Drums.density=1.5,Piano.polyphony=-1 (the model's attribute vectors)",
}
#: The value of a key neither the row nor ``params`` gives (None: not set).
DEFAULTS: dict[str, Any] = {"mode": "generate", "n": 1, "seed": 0, "temperature": 1.0,
                            "binarize": None, "threshold": None, "output": "notes",
                            "phrases": None, "bars": None, "form": None, "link": None,
                            "tracks": None, "amount": None, "attributes": None}


class RequestError(ValueError):
    """A request the model cannot answer; the message says which key and why."""


@dataclass(frozen=True)
class Request:
    """One checked request (one input row)."""

    mode: str
    n: int
    seed: int
    temperature: float
    binarize: str | None  # None: the model's own rule (calibrated, else 0.5)
    threshold: float | None
    output: str
    phrases: np.ndarray | None  # float32 (N, bars, steps, pitches, tracks): PHRASE_MODES
    song_bars: int | None = None  # song: its length in bars
    form: str | None = None  # song
    link: float | None = None  # song, infill (None: modes.LINK)
    infill_bars: tuple[int, ...] | None = None  # infill: 0-based bars
    tracks: tuple[int, ...] | None = None  # infill: track indexes
    amount: float | None = None  # vary
    attributes: dict[str, float] | None = None  # name -> scale


def _is_missing(v: Any) -> bool:
    # A DataFrame row carries NaN (or None) for the cells a request left empty.
    return v is None or (isinstance(v, float) and math.isnan(v))


def _scalar(key: str, v: Any, where: str) -> Any:
    """A JSON scalar from what MLflow's parsers hand over (0-d arrays, numpy scalars)."""
    if isinstance(v, np.ndarray):
        if v.ndim == 0:
            return v.item()
        if v.size == 1:  # ``instances`` / column forms wrap a row's value in a list
            return v.reshape(-1)[0].item()
        raise RequestError(f"{where}: {key} must be one value, got an array of shape {v.shape}")
    if isinstance(v, (list, tuple)):
        if len(v) == 1:
            return _scalar(key, v[0], where)
        raise RequestError(f"{where}: {key} must be one value, got a list of {len(v)}")
    return v.item() if isinstance(v, np.generic) else v


def _integer(key: str, v: Any, lo: int, hi: int, where: str) -> int:
    if isinstance(v, str):
        try:
            v = int(v.strip())
        except ValueError:
            raise RequestError(f"{where}: {key}={v!r} is not an integer "
                               f"({FIELDS[key]})") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or \
            (isinstance(v, float) and not v.is_integer()):
        raise RequestError(f"{where}: {key}={v!r} is not an integer ({FIELDS[key]})")
    v = int(v)
    if not lo <= v <= hi:
        raise RequestError(f"{where}: {key}={v} is out of range ({FIELDS[key]})")
    return v


def _number(key: str, v: Any, where: str) -> float:
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            raise RequestError(f"{where}: {key}={v!r} is not a number ({FIELDS[key]})") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise RequestError(f"{where}: {key}={v!r} is not a finite number ({FIELDS[key]})")
    return float(v)


def _choice(key: str, v: Any, allowed: tuple[str, ...], where: str) -> str:
    if not isinstance(v, str) or v not in allowed:
        raise RequestError(f"{where}: {key}={v!r} is not allowed ({FIELDS[key]})")
    return v


def _phrases(v: Any, layout: PhraseLayout, where: str) -> np.ndarray:
    expected = f"(N, {', '.join(map(str, layout.shape))})"
    try:
        x = np.asarray(v, dtype=np.float32)
    except (ValueError, TypeError):
        raise RequestError(f"{where}: phrases is not a rectangular array of numbers; "
                           f"expected shape {expected}") from None
    if x.ndim == len(layout.shape):  # one phrase without the batch axis
        x = x[None]
    if x.ndim != len(layout.shape) + 1 or tuple(x.shape[1:]) != layout.shape:
        raise RequestError(f"{where}: phrases has shape {tuple(x.shape)}; the model reads "
                           f"{expected} (bars, steps per bar, pitches from MIDI "
                           f"{layout.lowest_pitch}, tracks {', '.join(TRACKS)})")
    if not 1 <= x.shape[0] <= MAX_PHRASES:
        raise RequestError(f"{where}: phrases holds {x.shape[0]} phrases; send 1..{MAX_PHRASES}")
    if not np.all((x == 0) | (x == 1)):
        raise RequestError(f"{where}: phrases must hold only 0 and 1 (notes off / on)")
    return x


def _check_row(row: Mapping[str, Any], defaults: Mapping[str, Any], layout: PhraseLayout,
               attributes: Collection[str] | None, where: str) -> Request:
    unknown = sorted(str(k) for k in row if k not in FIELDS)
    if unknown:
        raise RequestError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                           f"known keys: {', '.join(FIELDS)}")
    given = {k: v for k, v in row.items() if not _is_missing(v)}
    vals = {k: (v if k == "phrases" else _scalar(k, v, where)) for k, v in given.items()}
    get = {**DEFAULTS, **{k: v for k, v in defaults.items() if v is not None}, **vals}
    mode = _choice("mode", get["mode"], MODES, where)
    for key, modes_of_key in (("n", COUNT_MODES), ("temperature", COUNT_MODES),
                              ("bars", ("song", "infill")), ("form", ("song",)),
                              ("link", ("song", "infill")), ("tracks", ("infill",)),
                              ("amount", ("vary",)), ("attributes", ATTRIBUTE_MODES)):
        # Only a row's own keys: params are defaults shared by rows of several modes.
        if key in vals and mode not in modes_of_key:
            raise RequestError(f"{where}: {key} applies to mode {' or '.join(modes_of_key)}, "
                               f"not {mode}" + ("; one sample comes back per phrase sent"
                                                if mode in PHRASE_MODES and key == "n"
                                                else ""))
    if mode in PHRASE_MODES:
        if get["phrases"] is None:
            raise RequestError(f"{where}: mode {mode} needs phrases "
                               f"(N, {', '.join(map(str, layout.shape))})")
        phrases = _phrases(get["phrases"], layout, where)
    else:
        if "phrases" in vals:
            raise RequestError(f"{where}: phrases given with mode {mode}; send mode restore, "
                               f"infill or vary to use them")
        phrases = None
    n = _integer("n", get["n"], 1, MAX_N, where)
    seed = _integer("seed", get["seed"], 0, 2**63 - 1, where)
    temperature = _number("temperature", get["temperature"], where)
    if not 0.0 < temperature <= MAX_TEMPERATURE:
        raise RequestError(f"{where}: temperature={temperature:g} is out of range "
                           f"({FIELDS['temperature']})")
    binarize = get["binarize"]
    if binarize is not None:
        binarize = _choice("binarize", binarize, BINARIZE, where)
    threshold = None
    if get["threshold"] is not None:
        threshold = _number("threshold", get["threshold"], where)
        if not 0.0 < threshold < 1.0:
            raise RequestError(f"{where}: threshold={threshold:g} is out of range "
                               f"({FIELDS['threshold']})")
        if binarize not in (None, "threshold"):
            raise RequestError(f"{where}: threshold goes with binarize threshold, not "
                               f"{binarize!r}")
        binarize = "threshold"
    elif binarize == "threshold":
        raise RequestError(f"{where}: binarize threshold needs threshold, a number in (0, 1)")
    output = _choice("output", get["output"], OUTPUTS, where)
    latent = _latent_fields(mode, get, layout, attributes, where)
    return Request(mode, n, seed, temperature, binarize, threshold, output, phrases, **latent)


def _latent_fields(mode: str, get: Mapping[str, Any], layout: PhraseLayout,
                   attributes: Collection[str] | None, where: str) -> dict[str, Any]:
    """The checked fields of the modes of ``ms2dist.inference.modes``."""
    from ms2dist.inference.attributes import parse_attribute
    from ms2dist.inference.modes import parse_bars, parse_form

    out: dict[str, Any] = {}
    try:
        if mode == "song":
            bars = get["bars"] if get["bars"] is not None else 8 * layout.n_bars
            total = _integer("bars", bars, layout.n_bars, MAX_SONG_BARS, where)
            if total % layout.n_bars:
                raise RequestError(f"{where}: bars={total}: a song is a whole number of "
                                   f"{layout.n_bars}-bar phrases")
            form = get["form"]
            if form is not None and not isinstance(form, str):
                raise RequestError(f"{where}: form={form!r} is not a string ({FIELDS['form']})")
            parse_form(form, total // layout.n_bars)
            n = _integer("n", get["n"], 1, MAX_N, where)
            if n * (total // layout.n_bars) > MAX_N:
                raise RequestError(f"{where}: n={n} songs of {total} bars are "
                                   f"{n * total // layout.n_bars} phrases; one request may "
                                   f"ask for at most {MAX_N} ({MAX_N * layout.n_bars} bars)")
            out.update(song_bars=total, form=form or None)
        if mode == "infill":
            if get["bars"] is None:
                raise RequestError(f"{where}: mode infill needs bars, e.g. \"3-4\" "
                                   f"(1..{layout.n_bars})")
            out["infill_bars"] = tuple(parse_bars(str(get["bars"]), layout.n_bars))
            names = parse_tracks(str(get["tracks"]), "tracks") if get["tracks"] is not None \
                else list(TRACKS[: layout.n_tracks])
            out["tracks"] = tuple(TRACKS.index(t) for t in names)
        if mode in ("song", "infill") and get["link"] is not None:
            link = _number("link", get["link"], where)
            if not 0.0 <= link < 1.0:
                raise RequestError(f"{where}: link={link:g} is out of range ({FIELDS['link']})")
            out["link"] = link
        if mode == "vary":
            if get["amount"] is None:
                raise RequestError(f"{where}: mode vary needs amount ({FIELDS['amount']})")
            amount = _number("amount", get["amount"], where)
            if not 0.0 <= amount <= 1.0:
                raise RequestError(f"{where}: amount={amount:g} is out of range "
                                   f"({FIELDS['amount']})")
            out["amount"] = amount
        if mode in ATTRIBUTE_MODES and get["attributes"] is not None:
            specs = get["attributes"]
            if isinstance(specs, Mapping):
                specs = [f"{k}={v}" for k, v in specs.items()]
            elif isinstance(specs, str):
                specs = [p for p in specs.split(",") if p.strip()]
            else:
                raise RequestError(f"{where}: attributes={specs!r} is not a string "
                                   f"({FIELDS['attributes']})")
            avail = None if attributes is None else dict.fromkeys(attributes)
            out["attributes"] = dict(parse_attribute(p, avail) for p in specs) or None
    except ValueError as e:
        if isinstance(e, RequestError):
            raise
        # The CLI's messages name its flags (--bars); a request names its keys.
        msg = re.sub(r"--(bars|form|tracks|amount|link)\b", r"\1", str(e))
        msg = msg.replace("--attribute ", "attributes: ")
        raise RequestError(f"{where}: {msg}") from None
    return out


def _rows(model_input: Any) -> list[Mapping[str, Any]]:
    """The rows of whatever MLflow (or an in-process caller) passes to ``predict``."""
    if model_input is None:
        return [{}]
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):  # a DataFrame
        return model_input.to_dict(orient="records")
    if isinstance(model_input, np.ndarray) and model_input.dtype.kind in "biuf":
        return [{"mode": "restore", "phrases": model_input}]  # in process: phrases
    if isinstance(model_input, np.ndarray) and model_input.dtype.kind in "SU":
        raise RequestError("the input is a list of strings; send one object per request "
                           f"with the keys {', '.join(FIELDS)} (see docs/serving.md)")
    if isinstance(model_input, np.ndarray):
        model_input = model_input.tolist()
    if isinstance(model_input, Mapping):
        return _dict_rows(model_input)
    if isinstance(model_input, (list, tuple)):
        if not all(isinstance(r, Mapping) for r in model_input):
            raise RequestError("the input is a list whose items are not all objects; send "
                               "one object per request (see docs/serving.md)")
        return list(model_input) or [{}]
    raise RequestError(f"the input is a {type(model_input).__name__}; send an object with "
                       f"the keys {', '.join(FIELDS)} (see docs/serving.md)")


def _dict_rows(d: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A dict is one request, or columns of several (``instances`` with several objects,
    ``inputs`` in column form): every scalar key then holds a list of one length."""
    lengths = set()
    for k, v in d.items():
        if k == "phrases":
            continue
        a = np.asarray(v, dtype=object) if not isinstance(v, np.ndarray) else v
        lengths.add(None if a.ndim == 0 else (len(a) if a.ndim == 1 else -1))
    if lengths <= {None} or lengths == {1}:
        row = dict(d)
        if lengths == {1} and "phrases" in row and np.ndim(row["phrases"]) == 6:
            row["phrases"] = np.asarray(row["phrases"])[0]
        return [row]
    if len(lengths) != 1 or None in lengths or -1 in lengths:
        raise RequestError("the input mixes single values and lists; send one object per "
                           "request, or lists of one length for several requests")
    (count,) = lengths
    rows = [{k: (v[i] if k != "phrases" or np.ndim(v) == 6 else v) for k, v in d.items()}
            for i in range(count)]
    return rows


def parse_requests(model_input: Any, params: Mapping[str, Any] | None,
                   layout: PhraseLayout, attributes: Collection[str] | None = None
                   ) -> list[Request]:
    """Check every row of ``model_input`` (``params`` fills what a row leaves out).

    Parameters
    ----------
    model_input : DataFrame, dict, list of dict, np.ndarray or None
        What MLflow's scoring server (or an in-process ``predict``) passes: each row is
        one request; an array is phrases to restore.
    params : mapping, optional
        Values for the keys a row does not give (MLflow ``params``); None values are unset.
    layout : PhraseLayout
        The model's phrase layout (the shape ``phrases`` must have).
    attributes : collection of str, optional
        The names of the model's attribute vectors (None: it has none).

    Returns
    -------
    list of Request
        One per row, in order.

    Raises
    ------
    RequestError
        On an unknown key or a bad value, naming the row, the key and what is allowed.
    """
    params = dict(params or {})
    unknown = sorted(str(k) for k in params if k not in FIELDS or k == "phrases")
    if unknown:
        raise RequestError(f"params: unknown key(s) {', '.join(map(repr, unknown))}; "
                           f"known params: {', '.join(k for k in FIELDS if k != 'phrases')}")
    rows = _rows(model_input)
    if len(rows) > MAX_PHRASES:
        raise RequestError(f"{len(rows)} requests in one call; send at most {MAX_PHRASES}")
    requests = [_check_row(r, params, layout, attributes,
                           f"request {i}" if len(rows) > 1 else "request")
                for i, r in enumerate(rows)]
    total = sum(_phrases_out(r, layout) for r in requests)
    if total > MAX_CALL_PHRASES:
        raise RequestError(f"the {len(requests)} requests of this call ask for {total} "
                           f"phrases; one call may ask for at most {MAX_CALL_PHRASES}: "
                           f"split it")
    return requests


def _phrases_out(r: Request, layout: PhraseLayout) -> int:
    """How many phrases answering ``r`` produces."""
    if r.phrases is not None:
        return len(r.phrases)
    return r.n * (r.song_bars // layout.n_bars if r.song_bars else 1)


def notes_answer(binary: np.ndarray, layout: PhraseLayout, bpm: float = DEFAULT_BPM,
                 **extra: Any) -> dict[str, Any]:
    """One sample's notes, per track, as ``[start_step, midi_pitch, duration_steps]``.

    A note is a maximal run of on-steps of one pitch (as in the MIDI file); notes are
    sorted by start, then pitch. ``grid`` says how to play them: ``steps_per_beat``,
    ``beats_per_bar``, ``bars``, ``steps``, ``lowest_pitch``, ``pitches``, ``tempo_bpm``.
    ``extra`` keys are added as they are.
    """
    roll = np.asarray(binary).reshape(-1, *binary.shape[-2:])  # (steps, pitches, tracks)
    tracks: dict[str, list[list[int]]] = {}
    for k, name in enumerate(TRACKS[: roll.shape[-1]]):
        pitch, onset, offset = _runs(roll[:, :, k] > 0)
        order = np.lexsort((pitch, onset))
        tracks[name] = [[int(onset[i]), int(pitch[i]) + layout.lowest_pitch,
                         int(offset[i] - onset[i])] for i in order]
    bars = int(roll.shape[0]) // (layout.steps_per_beat * layout.beats_per_bar)
    grid = {"steps_per_beat": layout.steps_per_beat, "beats_per_bar": layout.beats_per_bar,
            "bars": bars, "steps": int(roll.shape[0]),
            "lowest_pitch": layout.lowest_pitch, "pitches": int(roll.shape[1]),
            "tempo_bpm": float(bpm)}
    return {**extra, "grid": grid, "tracks": tracks}


def notes_to_roll(answer: Mapping[str, Any]) -> np.ndarray:
    """The boolean roll ``(bars, steps_per_bar, pitches, tracks)`` of one ``notes`` answer
    (a client's decoder; the inverse of :func:`notes_answer`)."""
    grid = answer["grid"]
    n_pitches = grid["pitches"]
    roll = np.zeros((grid["steps"], n_pitches, len(answer["tracks"])), dtype=bool)
    for k, notes in enumerate(answer["tracks"].values()):
        for start, pitch, dur in notes:
            roll[start:start + dur, pitch - grid["lowest_pitch"], k] = True
    return roll.reshape(grid["bars"], -1, n_pitches, roll.shape[-1])


def midi_answer(binary: np.ndarray, layout: PhraseLayout, bpm: float = DEFAULT_BPM,
                **extra: Any) -> dict[str, Any]:
    """One sample as the base64 of the MIDI file ``ms2dist sample`` writes for it."""
    roll = np.asarray(binary).reshape(-1, *binary.shape[-2:]) > 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sample.mid"
        write_midi(roll, path, tempo_bpm=bpm, steps_per_beat=layout.steps_per_beat,
                   lowest_pitch=layout.lowest_pitch)
        data = path.read_bytes()
    return {**extra, "tracks": list(TRACKS[: roll.shape[-1]]), "tempo_bpm": float(bpm),
            "midi_base64": base64.b64encode(data).decode("ascii")}
