"""What ``ms2dist sample`` computes for each mode: a :class:`Plan` of per-sample inputs
and a function from a batch of them to note probabilities (``ms2dist.commands.sample``
runs the batches and writes the files).

The latent noise of ``generate``, ``no-fusion``, ``restore`` and ``complete`` is drawn per
block of :data:`NOISE_BLOCK` samples, each block exactly as the model's own method draws
it for that many phrases from the block's seed (the first block: ``--seed``), so the files
do not depend on ``--batch-size``, and for ``--n`` up to ``NOISE_BLOCK`` they are those of
one call of the model's method. ``song``, ``infill`` and ``vary`` draw every sample's
noise from its own seed (:func:`ms2dist.inference.modes.sample_seeds`), which is
independent of the batch by construction.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ms2dist import TRACKS
from ms2dist.inference import modes
from ms2dist.inference.modes import decode_with_noise
from ms2dist.layout import parse_tracks
from ms2dist.models.sandwich import binarize, slerp

__all__ = ["Plan", "plan_for", "NOISE_BLOCK", "COMPLETE_ITERS", "song_phrases",
           "infill_cells"]

# Samples per block of latent noise (see the module docstring): small enough that a
# block's noise is a few MB, large enough that most runs are one block.
NOISE_BLOCK = 1024
COMPLETE_ITERS = 5  # MidiSandwich2.complete's default n_iter (with init="prior", sample=True)


def _shifted(z: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
    return z if shift is None else z + shift.to(z)


@dataclass
class Plan:
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


def plan_for(model: Any, args: argparse.Namespace, songs: list, kept: list[int] | None,
             refine: bool, shift: torch.Tensor | None = None) -> Plan:
    """The mode's plan. Its noise is drawn in the order and shapes of the model's method
    (``generate``, ``restore``, ...) or, for the modes of :mod:`ms2dist.inference.modes`,
    per sample from :func:`~ms2dist.inference.modes.sample_seeds`. ``shift``: the
    attribute vector added to the MFG latent (generate, restore, song, vary)."""
    if args.mode == "interpolate":
        return _interpolate_plan(model, args, songs, refine)
    if args.mode in ("generate", "no-fusion"):
        return _prior_plan(model, args, refine, shift)
    if args.mode == "song":
        return _song_plan(model, args, refine, shift)
    if args.mode in ("infill", "vary"):
        return _seeded_input_plan(model, args, songs, refine, shift)
    return _input_plan(model, args, songs, kept, refine, shift)


def _prior_plan(model: Any, args: argparse.Namespace, refine: bool,
                shift: torch.Tensor | None) -> Plan:
    """``generate`` (``model.generate``) and ``no-fusion`` (``model.generate_no_fusion``)."""
    d, temp = _Draws(model), args.temperature
    if args.mode == "generate":
        def draw(kb: int, seed: int) -> list[torch.Tensor]:
            g = d.gen(seed)  # the MFG prior first, then the BVAE sampling noise
            return [d.mfg_prior(kb, temp, g), d.normal(kb, (d.T, d.L), g)]

        def compute(c: list[Any]) -> torch.Tensor:
            return decode_with_noise(model, _shifted(c[0].flatten(0, 1), shift),
                                     c[1].flatten(0, 1), refine)
    else:
        def draw(kb: int, seed: int) -> list[torch.Tensor]:
            return [d.bvae_priors(kb, temp, d.gen(seed))]

        def compute(c: list[Any]) -> torch.Tensor:
            return model.decode_tracks(c[0].flatten(0, 1), refine)
    noise = _Noise(draw, args.n, args.seed)
    return Plan(args.n, noise.rows, compute, lambda i: f"{args.mode} {i}")


def _input_plan(model: Any, args: argparse.Namespace, songs: list, kept: list[int] | None,
                refine: bool, shift: torch.Tensor | None) -> Plan:
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
        return Plan(len(x), inputs, lambda c: _restore(model, *c, refine=refine, shift=shift),
                     lambda i: f"restored phrase {i}", x)
    return Plan(len(x), inputs, lambda c: _complete(model, c[0], kept, c[1], c[2:], refine),
                 lambda i: f"phrase {i} completed from {args.keep}", x)


def _restore(model: Any, x: torch.Tensor, e1: torch.Tensor, e2: torch.Tensor, *,
             refine: bool, shift: torch.Tensor | None = None) -> torch.Tensor:
    """``model.restore(x)`` with its two noises given (MFG posterior, then BVAE)."""
    mu_z, logvar_z = model.encode(x)
    z = _shifted(mu_z + (0.5 * logvar_z).exp() * e1.flatten(0, 1), shift)
    return decode_with_noise(model, z, e2.flatten(0, 1), refine)


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


def _interpolate_plan(model: Any, args: argparse.Namespace, songs: list, refine: bool) -> Plan:
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

    return Plan(steps, lambda i, k: [ts[i:i + k]], compute, lambda i: f"interpolation step {i}")


def song_phrases(bars: str | None, n_bars: int) -> int:
    """``--bars`` of a song -> its number of phrases (a positive multiple of the phrase)."""
    try:
        total = int(bars) if bars is not None else 8 * n_bars
    except ValueError:
        raise ValueError(f"--bars {bars!r}: a song's length is a number of bars, a multiple "
                         f"of {n_bars} (e.g. --bars 32)") from None
    if total < n_bars or total % n_bars:
        raise ValueError(f"--bars {total}: a song is a whole number of {n_bars}-bar phrases "
                         f"({n_bars}, {2 * n_bars}, {4 * n_bars}, ...)")
    return total // n_bars


def infill_cells(bars: str | None, tracks: str | None, n_bars: int
                 ) -> tuple[list[int], list[int]]:
    """``--bars`` and ``--tracks`` of an infill -> 0-based bars and track indexes."""
    if bars is None:
        raise ValueError(f"--mode infill needs --bars, the bars to regenerate (1..{n_bars}, "
                         f"e.g. --bars 3-4)")
    names = parse_tracks(tracks, "--tracks") if tracks is not None else list(TRACKS)
    return modes.parse_bars(bars, n_bars), [TRACKS.index(t) for t in names]


def _song_plan(model: Any, args: argparse.Namespace, refine: bool,
               shift: torch.Tensor | None) -> Plan:
    n_phrases = song_phrases(args.bars, model.cfg.n_bars)
    def compute(c: list[Any]) -> torch.Tensor:
        return modes.song(model, c[0], n_phrases, form=args.form, link=args.link,
                          temperature=args.temperature, shift=shift, refine=refine)

    form = f", form {args.form}" if args.form else ""
    return Plan(args.n, lambda a, k: [modes.sample_seeds(args.seed, a, k)], compute,
                lambda i: f"song {i}: {n_phrases * model.cfg.n_bars} bars{form}")


def _seeded_input_plan(model: Any, args: argparse.Namespace, songs: list, refine: bool,
                       shift: torch.Tensor | None) -> Plan:
    """``infill`` and ``vary``: the input phrases, then each sample's seed."""
    x = np.concatenate([s[0] for s in songs])[: args.n]
    dev = model.device

    def inputs(a: int, k: int) -> list[Any]:
        return [torch.as_tensor(x[a:a + k], dtype=torch.float32, device=dev),
                modes.sample_seeds(args.seed, a, k)]

    if args.mode == "vary":
        def compute(c: list[Any]) -> torch.Tensor:
            return modes.vary(model, c[0], args.amount, c[1], shift=shift, refine=refine)
        return Plan(len(x), inputs, compute,
                    lambda i: f"phrase {i} varied by {args.amount:g}", x)
    bars, tracks = infill_cells(args.bars, args.tracks, model.cfg.n_bars)
    def compute_infill(c: list[Any]) -> torch.Tensor:
        return modes.infill(model, c[0], bars, tracks, c[1], link=args.link, refine=refine)

    which = args.tracks or "all tracks"
    return Plan(len(x), inputs, compute_infill,
                lambda i: f"phrase {i}, bars {args.bars} of {which} infilled", x)
