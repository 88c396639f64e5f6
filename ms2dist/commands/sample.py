"""``ms2dist sample``: generate, restore, interpolate or complete phrases; writes MIDI,
``.npz``, PNG (``--audio``: FLAC or WAV) per sample and ``<out>/index.html`` to listen.

Samples are computed, binarised and written ``--batch-size`` at a time (memory flat in
``--n``; an interrupted run keeps its finished batches, with indexes, summary and page for
them: ``music.files.SampleFiles``). The latent noise is drawn per block of :data:`NOISE_BLOCK`
samples, each block exactly as the model's own method (``generate``, ``restore``, ...)
draws it for that many phrases from the block's seed (the first block: ``--seed``), so the
files do not depend on ``--batch-size``, and for ``--n`` up to ``NOISE_BLOCK`` they are
those of one call of the model's method (the single-batch output of earlier versions).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ms2dist import TRACKS
from ms2dist.inference.calibration import CalibrationError, rule_for_model
from ms2dist.inference.modelio import layout_of, load_model
from ms2dist.layout import parse_tracks
from ms2dist.models.sandwich import binarize, slerp
from ms2dist.music.audio import AUDIO_FORMATS, AudioUnavailable, RenderError, require
from ms2dist.music.files import DEFAULT_BPM, SampleFiles, notes_line
from ms2dist.music.page import sample_settings
from ms2dist.songs.files import FORMATS, file_phrases

__all__ = ["EPILOG", "add_arguments", "main", "NOISE_BLOCK"]

EPILOG = """examples:
  ms2dist sample --model pretrained:lpd5 --n 4 --audio flac --out samples/
  ms2dist sample --model runs/s2 --mode restore --input song.npz --n 2 --out restored/
  ms2dist sample --model models:/midi-sandwich2@champion --mode complete --input song.mid \\
      --keep Piano,Bass --out completed/
"""

# Samples per block of latent noise (see the module docstring): small enough that a
# block's noise is a few MB, large enough that most runs are one block.
NOISE_BLOCK = 1024
COMPLETE_ITERS = 5  # MidiSandwich2.complete's default n_iter (with init="prior", sample=True)
EXIT_INTERRUPTED = 130


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="model dir, training output dir, or MLflow URI (models:/name@alias)")
    p.add_argument("--mode", choices=["generate", "restore", "interpolate", "complete",
                                      "no-fusion"], default="generate",
                   help="generate from the prior, restore or complete --input phrases, "
                   "interpolate between two, or no-fusion (BVAE priors, stage-1 models)")
    p.add_argument("--n", type=int, default=4, help="samples (generate), phrases (restore, "
                   "complete) or interpolation steps")
    p.add_argument("--batch-size", type=int, default=64,
                   help="samples computed and written at a time (memory, not results)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the latent noise and Bernoulli draws: same seed, same files")
    p.add_argument("--out", type=Path, required=True,
                   help="folder for the samples, their indexes and index.html")
    p.add_argument("--input", nargs="*", type=Path, default=[],
                   help="song files (.npz LPD or .mid) for restore/interpolate/complete")
    p.add_argument("--format", default="auto", choices=FORMATS,
                   help="how to read --input (auto: from the file name)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="scale of the prior noise (generate, no-fusion): lower is tamer")
    p.add_argument("--keep", default="Piano", help="complete: comma-separated tracks to keep")
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
    needs_input = args.mode in ("restore", "interpolate", "complete")
    if needs_input and not args.input:
        return f"--mode {args.mode} needs --input SONG [SONG ...] (.npz LPD or .mid)"
    if not needs_input and args.input:
        return f"--mode {args.mode} takes no --input"
    if args.mode == "complete":
        try:
            parse_tracks(args.keep, "--keep")
        except ValueError as e:
            return str(e)
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
    kept = [TRACKS.index(t) for t in parse_tracks(args.keep, "--keep")] \
        if args.mode == "complete" else None
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
        plan = _plan(model, args, songs, kept, refine)
    run = _Run(args, rule, refine, bpm, layout_of(model), kept, with_inputs=plan.x is not None)
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


# --------------------------------------------------------------------- the plan


@dataclass
class _Plan:
    """What a mode computes: ``n`` samples; ``inputs(a, k)`` -> the per-sample inputs of
    samples ``[a, a + k)`` (tensors or lists, sample-major), ``compute(cols)`` -> their note
    probabilities; ``x``: the input phrases (modes with input, written beside)."""

    n: int
    inputs: Callable[[int, int], list[Any]]
    compute: Callable[[list[Any]], torch.Tensor]
    title: Callable[[int], str]
    x: np.ndarray | None = None


def _block_seed(seed: int, block: int) -> int:
    """Block 0 is ``seed`` itself; later blocks get seeds no small ``--seed`` collides with
    (``seed + offset`` would make ``--seed 1024`` replay block 1 of ``--seed 0``)."""
    if block == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**64, block]).generate_state(1, np.uint64)[0])


class _Noise:
    """The latent noise of samples ``[a, a + k)``, drawn one block of :data:`NOISE_BLOCK`
    samples at a time by ``draw(block_size, generator_seed)`` (sample-major tensors)."""

    def __init__(self, draw: Callable[[int, int], list[torch.Tensor]], n: int, seed: int):
        self.draw, self.n, self.seed = draw, n, seed
        self.block, self.cols = -1, []

    def rows(self, a: int, k: int) -> list[torch.Tensor]:
        parts = []
        while k > 0:
            b, lo = divmod(a, NOISE_BLOCK)
            if b != self.block:  # batches come in order: one block at a time is enough
                self.block = b
                self.cols = self.draw(min(NOISE_BLOCK, self.n - b * NOISE_BLOCK),
                                      _block_seed(self.seed, b))
            take = min(k, len(self.cols[0]) - lo)
            parts.append([c[lo:lo + take] for c in self.cols])
            a, k = a + take, k - take
        return [torch.cat(cs) if len(cs) > 1 else cs[0] for cs in zip(*parts, strict=True)]


def _sampled_decode(model: Any, z: torch.Tensor, e: torch.Tensor, refine: bool) -> torch.Tensor:
    """``model.decode(z, sample_bvae=True)`` with the BVAE noise ``e`` given."""
    mu, logvar = model.mfg.decode(z)
    return model.decode_tracks(mu + (0.5 * logvar).exp() * e, refine)


class _Draws:
    """The model's noise, drawn on its device in the dtype, shapes and order of its own
    methods, all rows sample-major: ``(kb, S, ...)``."""

    def __init__(self, model: Any) -> None:
        self.model, self.dev = model, model.device
        self.dtype = next(model.parameters()).dtype
        self.S, self.T = model.n_segments, model.cfg.n_tracks
        self.L, self.Z = model.cfg.bvae.latent, model.cfg.mfg.latent

    def gen(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.dev).manual_seed(seed)

    def normal(self, kb: int, width: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
        """``randn((kb * S, *width))`` (as ``reparameterize`` draws it), viewed per sample."""
        e = torch.randn((kb * self.S, *width), generator=g, device=self.dev, dtype=self.dtype)
        return e.view(kb, self.S, *width)

    def mfg_prior(self, kb: int, temperature: float, g: torch.Generator) -> torch.Tensor:
        return self.model.mfg.sample_prior(kb * self.S, temperature, g).view(kb, self.S, -1)

    def bvae_priors(self, kb: int, temperature: float, g: torch.Generator) -> torch.Tensor:
        """As ``generate_no_fusion``: each track's prior in turn -> ``(kb, S, T, L)``."""
        return torch.stack([self.model.bvae(t).sample_prior(kb, temperature, g)
                            for t in range(self.T)], 2)


def _plan(model: Any, args: argparse.Namespace, songs: list, kept: list[int] | None,
          refine: bool) -> _Plan:
    """The mode's plan. Its noise is drawn in the order and shapes of the model's method."""
    if args.mode == "interpolate":
        return _interpolate_plan(model, args, songs, refine)
    if args.mode in ("generate", "no-fusion"):
        return _prior_plan(model, args, refine)
    return _input_plan(model, args, songs, kept, refine)


def _prior_plan(model: Any, args: argparse.Namespace, refine: bool) -> _Plan:
    """``generate`` (``model.generate``) and ``no-fusion`` (``model.generate_no_fusion``)."""
    d, temp = _Draws(model), args.temperature
    if args.mode == "generate":
        def draw(kb: int, seed: int) -> list[torch.Tensor]:
            g = d.gen(seed)  # the MFG prior first, then the BVAE sampling noise
            return [d.mfg_prior(kb, temp, g), d.normal(kb, (d.T, d.L), g)]

        def compute(c: list[Any]) -> torch.Tensor:
            return _sampled_decode(model, c[0].flatten(0, 1), c[1].flatten(0, 1), refine)
    else:
        def draw(kb: int, seed: int) -> list[torch.Tensor]:
            return [d.bvae_priors(kb, temp, d.gen(seed))]

        def compute(c: list[Any]) -> torch.Tensor:
            return model.decode_tracks(c[0].flatten(0, 1), refine)
    noise = _Noise(draw, args.n, args.seed)
    return _Plan(args.n, noise.rows, compute, lambda i: f"{args.mode} {i}")


def _input_plan(model: Any, args: argparse.Namespace, songs: list, kept: list[int] | None,
                refine: bool) -> _Plan:
    """``restore`` (``model.restore``) and ``complete`` (``model.complete``): the input
    phrases are the first column, then the noise."""
    d = _Draws(model)
    x = np.concatenate([s[0] for s in songs])[: args.n]
    iters = 1 if args.mode == "restore" else COMPLETE_ITERS

    def draw(kb: int, seed: int) -> list[torch.Tensor]:
        # complete: the BVAE priors (a generator of their own), then per round trip the
        # MFG-posterior and the BVAE noise from one generator, as model.complete draws them.
        cols = [d.bvae_priors(kb, 1.0, d.gen(seed))] if args.mode == "complete" else []
        g = d.gen(seed)
        for _ in range(iters):
            cols += [d.normal(kb, (d.Z,), g), d.normal(kb, (d.T, d.L), g)]
        return cols

    noise = _Noise(draw, len(x), args.seed)

    def inputs(a: int, k: int) -> list[Any]:
        return [torch.as_tensor(x[a:a + k], dtype=torch.float32, device=d.dev),
                *noise.rows(a, k)]

    if args.mode == "restore":
        return _Plan(len(x), inputs, lambda c: _restore(model, *c, refine=refine),
                     lambda i: f"restored phrase {i}", x)
    return _Plan(len(x), inputs, lambda c: _complete(model, c[0], kept, c[1], c[2:], refine),
                 lambda i: f"phrase {i} completed from {args.keep}", x)


def _restore(model: Any, x: torch.Tensor, e1: torch.Tensor, e2: torch.Tensor, *,
             refine: bool) -> torch.Tensor:
    """``model.restore(x)`` with its two noises given (MFG posterior, then BVAE)."""
    mu_z, logvar_z = model.encode(x)
    z = mu_z + (0.5 * logvar_z).exp() * e1.flatten(0, 1)
    return _sampled_decode(model, z, e2.flatten(0, 1), refine)


def _complete(model: Any, x: torch.Tensor, kept: list[int] | None, prior_z: torch.Tensor,
              eps: list[torch.Tensor], refine: bool) -> torch.Tensor:
    """``model.complete(x, kept)`` (init from the BVAE priors, sampled round trips, 0.5
    between iterations) with its noise given: the prior latents, then per iteration the
    MFG-posterior and BVAE noise."""
    keep = torch.zeros(model.cfg.n_tracks, dtype=torch.bool, device=x.device)
    keep[list(kept or [])] = True
    start = binarize(model.decode_tracks(prior_z.flatten(0, 1), refine), "threshold", 0.5)
    out = torch.where(keep, x, start)
    for e1, e2 in zip(eps[0::2], eps[1::2], strict=True):
        cur = torch.where(keep, x, binarize(out, "threshold", 0.5))
        out = torch.where(keep, x, _restore(model, cur, e1, e2, refine=refine))
    return out


def _interpolate_plan(model: Any, args: argparse.Namespace, songs: list, refine: bool) -> _Plan:
    """``model.interpolate``: slerp between the two phrases' MFG means, decoded without
    noise; one step per sample."""
    dev = model.device
    a = songs[0][0][0]
    b = songs[1][0][0] if len(songs) > 1 else songs[0][0][min(1, len(songs[0][0]) - 1)]
    za, _ = model.encode(torch.as_tensor(a, dtype=torch.float32, device=dev)[None])  # (S, Z)
    zb, _ = model.encode(torch.as_tensor(b, dtype=torch.float32, device=dev)[None])
    steps = max(2, args.n)
    ts = torch.linspace(0.0, 1.0, steps).tolist()

    def compute(c: list[Any]) -> torch.Tensor:
        z = torch.cat([slerp(za, zb, t) for t in c[0]])  # (k * S, Z), phrase-major
        return model.decode(z, refine=refine, sample_bvae=False)

    return _Plan(steps, lambda i, k: [ts[i:i + k]], compute, lambda i: f"interpolation step {i}")


# ------------------------------------------------------------------ the batches


def _sample_all(plan: _Plan, run: _Run) -> None:
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
                 layout: Any, kept: list[int] | None, with_inputs: bool) -> None:
        self.args, self.rule, self.refine, self.bpm, self.kept = args, rule, refine, bpm, kept
        self.g: torch.Generator | None = None  # bernoulli draws: one stream for the run
        self.files = SampleFiles(args.out, args.mode, with_inputs, bpm=bpm, layout=layout,
                                 pictures=not args.no_png, audio=args.audio)
        self.index = self.files.index

    def write(self, a: int, probs: torch.Tensor, x: torch.Tensor | None, titles: list[str],
              bar: Any) -> None:
        if self.g is None:
            self.g = torch.Generator(device=probs.device).manual_seed(self.args.seed)
        binary = self.rule.apply(probs, refine=self.refine, generator=self.g)
        if self.kept is not None:
            # The kept tracks come back exactly as given, whatever the binariser does.
            binary[..., self.kept] = x[..., self.kept] > 0.5
        entries = self.files.write(
            a, probs.float().cpu().numpy(), binary.cpu().numpy(),
            None if x is None else x.cpu().numpy() > 0.5,
            [f"{t}, {self.rule.short()}" for t in titles])
        for entry in entries:
            bar.write(notes_line(entry), file=sys.stdout)

    def finish(self, interrupted: bool = False) -> None:
        """The indexes, ``summary.json`` and ``index.html`` of the samples written (all of
        them, unless ``interrupted``)."""
        keep = [TRACKS[k] for k in self.kept] if self.kept is not None else None
        summary = sample_settings(self.args, self.index.n, self.bpm,
                                  self.rule.to_json(self.refine), self.refine, keep)
        self.files.finish(summary, f"ms2dist sample: {self.args.mode}, {self.args.model}",
                          interrupted)
