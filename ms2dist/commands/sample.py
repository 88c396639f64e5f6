"""``ms2dist sample``: phrases, songs, infilled bars and variations from a model; writes
MIDI, ``.npz``, PNG (``--audio``: FLAC or WAV) per sample and ``<out>/index.html``.

Modes: ``generate`` (the prior), ``restore`` and ``complete`` (``--input`` phrases, the
latter keeping ``--keep`` tracks), ``interpolate``, ``no-fusion`` (BVAE priors), and, on
the MFG latent (:mod:`ms2dist.inference.modes`): ``song`` (``--bars`` long, phrases linked,
optional ``--form``), ``infill`` (regenerate ``--bars`` of ``--tracks`` in each input
phrase) and ``vary`` (``--amount`` from the input). ``--attribute TRACK.ATTR=SCALE`` moves
generate, restore, song and vary along the model's attribute vectors.

Samples are computed, binarised and written ``--batch-size`` at a time (memory flat in
``--n``; an interrupted run keeps its finished batches, with indexes, summary and page for
them: ``music.files.SampleFiles``). What each mode computes, and how its noise is drawn so
that the files do not depend on ``--batch-size``, is in ``ms2dist.commands.sample_plans``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ms2dist import TRACKS
from ms2dist.commands.sample_plans import Plan, infill_cells, plan_for, song_phrases
from ms2dist.inference.attributes import parse_attribute, shift_vector
from ms2dist.inference.calibration import CalibrationError, rule_for_model
from ms2dist.inference.modelio import layout_of, load_model
from ms2dist.inference.modes import ATTRIBUTE_MODES, infill_mask, parse_form
from ms2dist.layout import parse_tracks
from ms2dist.music.audio import AUDIO_FORMATS, AudioUnavailable, RenderError, require
from ms2dist.music.files import DEFAULT_BPM, SampleFiles, notes_line
from ms2dist.music.page import sample_settings
from ms2dist.songs.files import FORMATS, file_phrases

__all__ = ["EPILOG", "add_arguments", "main", "MODES", "INPUT_MODES"]

EPILOG = """examples:
  ms2dist sample --model pretrained:lpd5 --n 4 --audio flac --out samples/
  ms2dist sample --model runs/s2 --mode restore --input song.npz --n 2 --out restored/
  ms2dist sample --model models:/midi-sandwich2@champion --mode complete --input song.mid \\
      --keep Piano,Bass --out completed/
  ms2dist sample --model pretrained:lpd5 --mode song --bars 32 --form AABA --n 2 --out songs/
  ms2dist sample --model pretrained:lpd5 --mode infill --input song.npz --bars 3-4 \\
      --tracks Piano,Bass --n 4 --out infilled/
  ms2dist sample --model pretrained:lpd5 --mode generate --attribute Drums.density=+1.5 \\
      --attribute Piano.polyphony=-1 --n 4 --out busy-drums/
  ms2dist sample --model pretrained:lpd5 --mode vary --input song.mid --amount 0.3 --n 4 \\
      --out variations/
"""

MODES = ("generate", "restore", "interpolate", "complete", "no-fusion", "song", "infill",
         "vary")
INPUT_MODES = ("restore", "interpolate", "complete", "infill", "vary")

EXIT_INTERRUPTED = 130


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="model dir, training output dir, or MLflow URI (models:/name@alias)")
    p.add_argument("--mode", choices=MODES, default="generate",
                   help="generate from the prior, restore or complete --input phrases, "
                   "interpolate between two, no-fusion (BVAE priors, stage-1 models), song "
                   "(--bars long), infill (--bars of --input phrases), vary (--amount)")
    p.add_argument("--n", type=int, default=4, help="samples (generate), songs (song), "
                   "phrases (restore, complete, infill, vary) or interpolation steps")
    p.add_argument("--batch-size", type=int, default=64,
                   help="samples computed and written at a time (memory, not results)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the latent noise and Bernoulli draws: same seed, same files")
    p.add_argument("--out", type=Path, required=True,
                   help="folder for the samples, their indexes and index.html")
    p.add_argument("--input", nargs="*", type=Path, default=[],
                   help="song files (.npz LPD or .mid) for restore, interpolate, complete, "
                   "infill and vary")
    p.add_argument("--format", default="auto", choices=FORMATS,
                   help="how to read --input (auto: from the file name)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="scale of the prior noise (generate, no-fusion, song): lower is tamer")
    p.add_argument("--keep", default="Piano", help="complete: comma-separated tracks to keep")
    p.add_argument("--bars", default=None,
                   help="song: its length in bars, a multiple of the phrase (default 8 "
                   "phrases); infill: the bars of each phrase to regenerate, e.g. 3-4 or 1,3")
    p.add_argument("--form", default=None,
                   help="song: its sections, one letter each (AABA: the A sections repeat); "
                   "the phrases must divide into them")
    p.add_argument("--link", type=float, default=None,
                   help="song, infill: correlation of neighbouring bars' latents in [0, 1) "
                   "(default 0.98; 0: independent phrases)")
    p.add_argument("--tracks", default=None,
                   help="infill: comma-separated tracks to regenerate (default: all)")
    p.add_argument("--amount", type=float, default=None,
                   help="vary: distance from the input in 0..1 (0: the restore, 1: unrelated)")
    p.add_argument("--attribute", action="append", default=[], metavar="TRACK.ATTR=SCALE",
                   help="generate, restore, song, vary: move along an attribute vector, e.g. "
                   "Drums.density=+1.5 (repeat for several; the model's are listed by "
                   "`ms2dist sample --model M --list-attributes`)")
    p.add_argument("--list-attributes", action="store_true",
                   help="print the model's attribute vectors and exit")
    p.add_argument("--binarize", choices=["calibrated", "threshold", "bernoulli"], default=None,
                   help="which notes are played: the model's per-track thresholds fitted on "
                   "held-out data (when it has them, else threshold 0.5), one --threshold, "
                   "or Bernoulli draws")
    p.add_argument("--threshold", type=float, default=None,
                   help="play every note with probability above this (all tracks)")
    p.add_argument("--no-refine", action="store_true", help="skip the refine net (MSG1)")
    p.add_argument("--tempo", type=float, default=None, help="BPM (none: input's, or 100)")
    p.add_argument("--no-png", action="store_true", help="skip the pianoroll pictures")
    p.add_argument("--audio", choices=AUDIO_FORMATS, default=None,
                   help="also render each sample to audio with FluidSynth (needs the Debian "
                   "packages fluidsynth fluid-soundfont-gm, or $MS2DIST_SOUNDFONT)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device to sample on")


def _fail(msg: str) -> int:
    print(f"ms2dist sample: error: {msg}", file=sys.stderr)
    return 2


def _argument_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, checked before the (slow) model and song loading."""
    if args.n < 1:
        return f"--n must be at least 1, got {args.n}"
    if args.batch_size < 1:
        return f"--batch-size must be at least 1, got {args.batch_size}"
    needs_input = args.mode in INPUT_MODES
    if needs_input and not args.input:
        return f"--mode {args.mode} needs --input SONG [SONG ...] (.npz LPD or .mid)"
    if not needs_input and args.input:
        return f"--mode {args.mode} takes no --input"
    if args.mode == "complete":
        try:
            parse_tracks(args.keep, "--keep")
        except ValueError as e:
            return str(e)
    for flag, value, used_by in (("--bars", args.bars, ("song", "infill")),
                                 ("--form", args.form, ("song",)),
                                 ("--link", args.link, ("song", "infill")),
                                 ("--tracks", args.tracks, ("infill",)),
                                 ("--amount", args.amount, ("vary",)),
                                 ("--attribute", args.attribute, ATTRIBUTE_MODES)):
        if value not in (None, []) and args.mode not in used_by:
            return f"{flag} applies to --mode {' or '.join(used_by)}, not {args.mode}"
    if args.link is not None and not 0.0 <= args.link < 1.0:
        return f"--link must be in [0, 1), got {args.link:g}"
    if args.mode == "vary" and args.amount is None:
        return "--mode vary needs --amount in 0..1 (0: the restore, 1: unrelated)"
    if args.amount is not None and not 0.0 <= args.amount <= 1.0:
        return f"--amount must be in 0..1 (0: the restore, 1: unrelated), got {args.amount:g}"
    if not 0 < args.temperature <= 10:  # NaN fails too
        return f"--temperature must be in (0, 10], got {args.temperature:g}"
    names = [a.partition("=")[0].strip() for a in args.attribute]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        return f"--attribute {twice[0]} is given twice; give each attribute once"
    if args.tempo is not None and not args.tempo > 0:
        return f"--tempo must be positive, got {args.tempo}"
    if args.audio:  # checked before any work: a missing package must not cost a model load
        try:
            require()
        except AudioUnavailable as e:
            return str(e)
    return None


def main(args: argparse.Namespace, extra: list[str]) -> int:
    error = _argument_error(args)
    if error:
        return _fail(error)
    songs = []
    for path in args.input:
        try:
            songs.append(file_phrases(path, args.format))
        except (ValueError, OSError) as e:
            msg = str(e) if str(path) in str(e) else f"{path}: {e}"
            return _fail(f"--input {msg}")
    try:
        model = load_model(args.model, device=args.device)
    except (FileNotFoundError, ValueError) as e:
        return _fail(f"--model: {e}")
    meta = getattr(model, "ms2dist_meta", {})
    if meta.get("stage") == "stage1" and args.mode != "no-fusion":
        # Its MFG-VAE never saw data: every other mode would write noise and exit 0.
        return _fail(f"{args.model} is a stage-1 model (its MFG-VAE is untrained), so --mode "
                     f"{args.mode} cannot work: use --mode no-fusion, or train stage 2 first "
                     f"(ms2dist train stage2 --stage1 {args.model} ...)")
    available = getattr(model, "ms2dist_attributes", None)
    if args.list_attributes:
        return _list_attributes(args.model, available, meta)
    try:
        scales = dict(parse_attribute(a, available) for a in args.attribute)
        keep, kept = _keep_mask(args, model.cfg.n_bars, model.cfg.n_tracks)
        if args.mode == "song":
            parse_form(args.form, song_phrases(args.bars, model.cfg.n_bars))
    except ValueError as e:
        return _fail(str(e))
    shift = shift_vector(available or {}, scales)
    response = meta.get("attributes", {}).get("response", {})
    for name in scales:  # measured by `ms2dist attributes`: say so when a vector is a dud
        r = response.get(name)
        if r is not None and not r.get("steers", True):
            print(f"ms2dist sample: warning: {name} was measured not to steer this model "
                  f"(over scales -2..+2: Spearman {r['spearman']}, moves {r['moved_std']} "
                  f"std against {r['others_moved_std']} for the other tracks): expect "
                  f"little change", file=sys.stderr)
    try:
        rule = rule_for_model(meta, args.binarize, args.threshold, label=str(args.model))
    except CalibrationError as e:
        return _fail(str(e))
    if rule.rule == "threshold" and args.threshold is None and args.binarize is None:
        print(f"ms2dist sample: warning: {args.model} has no calibrated thresholds; using "
              f"threshold 0.5 (fit them with `ms2dist calibrate`)", file=sys.stderr)
    refine = not args.no_refine
    bpm = args.tempo or (songs[0][1] if songs else DEFAULT_BPM)
    with torch.no_grad():
        plan = plan_for(model, args, songs, kept, refine, shift)
    run = _Run(args, rule, refine, bpm, layout_of(model), keep, with_inputs=plan.x is not None)
    try:
        with torch.no_grad():
            _sample_all(plan, run)
    except (RenderError, AudioUnavailable) as e:
        run.finish(interrupted=True)
        return _fail(str(e))
    except KeyboardInterrupt:
        run.finish(interrupted=True)
        print(f"ms2dist sample: interrupted: the {run.index.n} sample(s) of finished batches "
              f"are in {args.out} (of {plan.n})", file=sys.stderr)
        return EXIT_INTERRUPTED
    run.finish()
    print(f"wrote {run.index.n} {args.mode} sample(s) to {args.out} (.mid, .npz"
          f"{'' if args.no_png else ', .png'}{', .' + args.audio if args.audio else ''}; "
          f"listen: {args.out / 'index.html'}); notes played by {rule.describe(refine)}")
    return 0


def _keep_mask(args: argparse.Namespace, n_bars: int, n_tracks: int
               ) -> tuple[torch.Tensor | None, list[int] | None]:
    """The cells an input-keeping mode returns exactly as given, ``(bars, tracks)`` bool
    (None for the other modes), and ``complete``'s kept track indexes."""
    if args.mode == "complete":
        kept = [TRACKS.index(t) for t in parse_tracks(args.keep, "--keep")]
        keep = torch.zeros(n_bars, n_tracks, dtype=torch.bool)
        keep[:, kept] = True
        return keep, kept
    if args.mode == "infill":
        bars, tracks = infill_cells(args.bars, args.tracks, n_bars)
        return ~infill_mask(n_bars, n_tracks, bars, tracks), None
    return None, None


def _list_attributes(label: Any, available: dict | None, meta: dict) -> int:
    if not available:
        print(f"{label} has no attribute vectors (fit them with `ms2dist attributes --model "
              f"DIR --data TRAIN_SPLIT`)")
        return 0
    block = meta.get("attributes", {})
    stats, response = block.get("stats", {}), block.get("response", {})
    print(f"attribute vectors of {label} (use --attribute NAME=SCALE, scale -10..10):")
    for name in available:
        st, r = stats.get(name, {}), response.get(name)
        said = "" if r is None else (f"; measured response Spearman {r['spearman']}"
                                     + ("" if r["steers"] else ", does NOT steer"))
        print(f"  {name:<18} data mean {st.get('mean', float('nan')):.2f}, quartiles "
              f"{st.get('q25', float('nan')):.2f}..{st.get('q75', float('nan')):.2f}{said}")
    return 0


# ------------------------------------------------------------------ the batches


def _sample_all(plan: Plan, run: _Run) -> None:
    """Compute, binarise and write every batch, with a progress bar (on a terminal)."""
    bar = tqdm(total=plan.n, unit="sample", desc=f"sample {run.args.mode}", file=sys.stderr,
               disable=None)
    try:
        for a in range(0, plan.n, run.args.batch_size):
            k = min(run.args.batch_size, plan.n - a)
            cols = plan.inputs(a, k)
            # Kernels may round a batch of one phrase differently from a larger one (the
            # CPU conv3d does): never run one phrase alone unless it is the only one.
            pad = k == 1 and plan.n > 1
            if pad:
                cols = [torch.cat([c, c]) if torch.is_tensor(c) else c + c for c in cols]
            probs = plan.compute(cols)[:k]
            x = cols[0][:k] if plan.x is not None else None
            run.write(a, probs, x, [plan.title(i) for i in range(a, a + k)], bar)
            bar.update(k)
    finally:
        bar.close()


class _Run:
    """Binarising the batches of one run; :class:`SampleFiles` writes them, the indexes,
    the summary and the listening page."""

    def __init__(self, args: argparse.Namespace, rule: Any, refine: bool, bpm: float,
                 layout: Any, keep: torch.Tensor | None, with_inputs: bool) -> None:
        self.args, self.rule, self.refine, self.bpm = args, rule, refine, bpm
        self.keep = keep  # (bars, tracks): cells that come back as given
        self.g: torch.Generator | None = None  # bernoulli draws: one stream for the run
        self.files = SampleFiles(args.out, args.mode, with_inputs, bpm=bpm, layout=layout,
                                 pictures=not args.no_png, audio=args.audio)
        self.index = self.files.index

    def write(self, a: int, probs: torch.Tensor, x: torch.Tensor | None, titles: list[str],
              bar: Any) -> None:
        if self.g is None:
            self.g = torch.Generator(device=probs.device).manual_seed(self.args.seed)
        binary = self.rule.apply(probs, refine=self.refine, generator=self.g)
        if self.keep is not None:
            # The kept cells come back exactly as given, whatever the binariser does.
            keep = self.keep.to(binary.device)[:, None, None, :]
            binary = torch.where(keep, x > 0.5, binary)
        entries = self.files.write(
            a, probs.float().cpu().numpy(), binary.cpu().numpy(),
            None if x is None else x.cpu().numpy() > 0.5,
            [f"{t}, {self.rule.short()}" for t in titles])
        for entry in entries:
            bar.write(notes_line(entry), file=sys.stdout)

    def finish(self, interrupted: bool = False) -> None:
        """The indexes, ``summary.json`` and ``index.html`` of the samples written (all of
        them, unless ``interrupted``)."""
        keep = parse_tracks(self.args.keep, "--keep") if self.args.mode == "complete" \
            else None
        summary = sample_settings(self.args, self.index.n, self.bpm,
                                  self.rule.to_json(self.refine), self.refine, keep)
        self.files.finish(summary, f"ms2dist sample: {self.args.mode}, {self.args.model}",
                          interrupted)
