"""Generation beyond one phrase, on the MFG-VAE latent: songs, bar infilling, variations.

No training is needed: each mode is a way of choosing MFG latents (one per segment: a bar
for bar-level BVAEs, a phrase otherwise; ``model.n_segments`` per phrase) and decoding them.

- :func:`song`: the latents of consecutive segments form a Gaussian AR(1) chain,
  ``z[t+1] = link * z[t] + sqrt(1 - link**2) * eps``; every ``z[t]`` is still a draw of the
  prior N(0, I), but neighbours are correlated (``link``), so key, density and
  instrumentation carry across phrase boundaries. A ``form`` such as ``AABA`` repeats the
  sections with the same letter note for note.
- :func:`infill`: the segments holding the chosen bars get latents drawn from the same
  chain *conditioned* on the posterior means of the segments kept (Gaussian conditioning);
  where a segment keeps some of its cells (some bars or tracks), the rest is then imputed
  by round trips through the full VAE with the kept cells re-imposed (as ``complete``).
  Kept cells are returned bit for bit.
- :func:`vary`: ``cos(a*pi/2) * z_restore + sin(a*pi/2) * z_prior`` for ``amount`` a in
  [0, 1]: 0 is the restore, 1 an unrelated prior sample, and every step in between a draw
  of the prior's own scale.

Every output sample draws its noise from its own generator (:func:`sample_seeds`), on the
CPU, so a sample does not depend on the batch it is computed in, nor on the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ms2dist.models.sandwich import binarize

__all__ = ["LINK", "INFILL_ITERS", "ATTRIBUTE_MODES", "sample_seeds", "decode_with_noise",
           "chain_cov", "song", "infill", "vary", "infill_mask", "parse_form", "parse_bars"]

#: The modes (of ``ms2dist sample`` and the pyfunc model) that take attribute shifts: those
#: that decode a latent of their own choosing (an infill's latents are fixed by its context).
ATTRIBUTE_MODES = ("generate", "restore", "song", "vary")
#: Default correlation of the latents of neighbouring bars in a song or an infill (a
#: segment of ``b`` bars links to the next by ``LINK ** b``). On ``pretrained:lpd5``, 0.98
#: gives consecutive phrases about the pitch-class and density similarity of real songs
#: (bench/README.md, "Generation modes").
LINK = 0.98
#: Round trips imputing the cells of a segment that keeps some of its bars or tracks, when
#: no segment of the phrase is kept whole (a phrase-level model: the context is inside the
#: one segment). With kept segments to condition on, the conditional draw alone scores
#: higher (pretrained:lpd5, bars 3-4 of Piano and Bass: note F1 0.144 with none, 0.124
#: with 5), so none are run by default.
INFILL_ITERS = 5


def sample_seeds(seed: int, start: int, k: int) -> list[int]:
    """The seeds of samples ``start .. start + k - 1`` of a run seeded ``seed``."""
    return [int(np.random.SeedSequence([seed % 2**64, i]).generate_state(1, np.uint64)[0]
                >> np.uint64(1)) for i in range(start, start + k)]


class _SampleNoise:
    """One CPU generator per sample; ``normal(shape)`` -> ``(k, *shape)`` on the model."""

    def __init__(self, seeds: Sequence[int], model: Any) -> None:
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype

    def normal(self, *shape: int) -> Tensor:
        e = torch.stack([torch.randn(shape, generator=g) for g in self.gens])
        return e.to(self.device, self.dtype)


def decode_with_noise(model: Any, z: Tensor, e: Tensor, refine: bool = True) -> Tensor:
    """``model.decode(z, sample_bvae=True)`` with the BVAE sampling noise ``e`` given
    (``(rows, tracks, L)``, or any shape of that many elements)."""
    mu, logvar = model.mfg.decode(z)
    return model.decode_tracks(mu + (0.5 * logvar).exp() * e.reshape(mu.shape), refine)


def chain_cov(n: int, link: float) -> Tensor:
    """Covariance ``link ** |i - j|`` of ``n`` consecutive AR(1) latents (float64)."""
    i = torch.arange(n, dtype=torch.float64)
    return torch.as_tensor(link, dtype=torch.float64) ** (i[:, None] - i[None, :]).abs()


def _chain_draw(cov: Tensor, known: Sequence[int], z_known: Tensor | None,
                unknown: Sequence[int], eps: Tensor) -> Tensor:
    """Latents at positions ``unknown`` given those at ``known`` (``(k, K, Z)``), under the
    Gaussian with covariance ``cov``; ``eps`` ``(k, U, Z)`` standard normal."""
    cov = cov.to(eps.device)  # float64 on the model's device (the draw's)
    u = torch.as_tensor(list(unknown), device=eps.device)
    if len(known) == 0:
        mean = torch.zeros_like(eps)
        c = cov[u][:, u]
    else:
        kk = torch.as_tensor(list(known), device=eps.device)
        a = torch.linalg.solve(cov[kk][:, kk], cov[kk][:, u]).T  # (U, K)
        c = cov[u][:, u] - a @ cov[kk][:, u]
        mean = torch.einsum("uk,bkz->buz", a.to(eps.dtype), z_known)
    chol = torch.linalg.cholesky(c + 1e-9 * torch.eye(len(u), dtype=c.dtype, device=c.device))
    return mean + torch.einsum("uv,bvz->buz", chol.to(eps.dtype), eps)


def parse_form(form: str | None, n_phrases: int) -> list[int]:
    """The section index of each phrase (sections numbered by first appearance): ``AABA``
    over 8 phrases -> ``[0, 0, 0, 0, 1, 1, 0, 0]``; ``None`` -> one section."""
    if not form:
        return [0] * n_phrases
    if not (form.isascii() and form.isalpha()):
        raise ValueError(f"--form {form!r}: use letters only, one per section (e.g. AABA)")
    if n_phrases % len(form):
        raise ValueError(f"--form {form!r} has {len(form)} sections but the song has "
                         f"{n_phrases} phrases: the phrases must divide into the sections")
    order = {c: i for i, c in enumerate(dict.fromkeys(form.upper()))}
    per = n_phrases // len(form)
    return [order[c] for c in form.upper() for _ in range(per)]


def parse_bars(spec: str, n_bars: int) -> list[int]:
    """``"3-4"``, ``"2"`` or ``"1,3"`` (1-based, within a phrase) -> 0-based bar indexes."""
    bars: set[int] = set()
    for part in str(spec).split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"--bars {spec!r}: expected bar numbers such as 3-4 or 1,3 "
                             f"(1..{n_bars})") from None
        if not 1 <= a <= b <= n_bars:
            raise ValueError(f"--bars {spec!r}: bars must lie in 1..{n_bars} (a phrase has "
                             f"{n_bars} bars), low to high")
        bars.update(range(a - 1, b))
    if len(bars) == 0:
        raise ValueError(f"--bars {spec!r}: no bar chosen")
    return sorted(bars)


def infill_mask(n_bars: int, n_tracks: int, bars: Sequence[int], tracks: Sequence[int]
                ) -> Tensor:
    """``(n_bars, n_tracks)`` bool: True on the cells an infill regenerates."""
    regen = torch.zeros(n_bars, n_tracks, dtype=torch.bool)
    regen[torch.as_tensor(list(bars))[:, None], torch.as_tensor(list(tracks))[None, :]] = True
    return regen


def song(model: Any, seeds: Sequence[int], n_phrases: int, *, form: str | None = None,
         link: float | None = None, temperature: float = 1.0, shift: Tensor | None = None,
         refine: bool = True) -> Tensor:
    """``len(seeds)`` songs of ``n_phrases`` phrases: probabilities
    ``(k, n_phrases * bars, T, P, tracks)``.

    The latents of the distinct sections' segments, in order of first appearance, are one
    AR(1) chain of correlation ``link`` (0: independent phrases); a repeated section
    reuses its latents and its BVAE noise, so the chain jumps where the form returns to a
    section (B -> A). ``link`` None is :data:`LINK`. ``shift`` (``(Z,)``) is added to every
    latent (attribute control).
    """
    link = LINK if link is None else link
    if not 0.0 <= link < 1.0:
        raise ValueError(f"link must be in [0, 1), got {link}")
    sections = parse_form(form, n_phrases)
    S, T = model.n_segments, model.cfg.n_tracks
    L, Z = model.cfg.bvae.latent, model.cfg.mfg.latent
    per = n_phrases // len(form) if form else n_phrases  # phrases per section
    n_pos = (max(sections) + 1) * per * S
    noise = _SampleNoise(seeds, model)
    eps, e_bvae = noise.normal(n_pos, Z), noise.normal(n_pos, T * L)
    cov = chain_cov(n_pos, link ** (model.cfg.n_bars // S))
    chain = temperature * _chain_draw(cov, [], None, range(n_pos), eps)
    # The BVAE sampling noise is a chain too: independent per segment, it alone would make
    # each bar's density jump (the decoders are sensitive to it).
    e_bvae = _chain_draw(cov, [], None, range(n_pos), e_bvae)
    # The song's segments, in order: section s's j-th phrase is chain phrase s * per + j.
    rows = []
    for p, sec in enumerate(sections):
        first = (sec * per + p % per) * S  # sections are runs of `per` phrases
        rows.extend(range(first, first + S))
    idx = torch.as_tensor(rows, device=chain.device)
    z = chain[:, idx]
    if shift is not None:
        z = z + shift.to(z)
    probs = decode_with_noise(model, z.flatten(0, 1), e_bvae[:, idx].flatten(0, 1), refine)
    k = len(seeds)
    return probs.reshape(k, n_phrases * probs.shape[1], *probs.shape[2:])


def infill(model: Any, x: Tensor, bars: Sequence[int], tracks: Sequence[int],
           seeds: Sequence[int], *, link: float | None = None, n_iter: int | None = None,
           threshold: float = 0.5, refine: bool = True, sample: bool = True) -> Tensor:
    """Regenerate ``bars`` (0-based) of ``tracks`` in each phrase of ``x``
    ``(k, bars, T, P, tracks)``; every other cell comes back as it was, bit for bit.

    Returns probabilities of ``x``'s shape (the kept cells: ``x`` itself, as floats).
    ``link`` None is :data:`LINK`; ``n_iter`` None: :data:`INFILL_ITERS` round trips when
    no segment is kept whole, else none (a partly kept segment is then drawn from its
    neighbours alone, without seeing its own kept tracks); ``threshold`` binarises between
    round trips, ``sample`` False runs them on posterior means.
    """
    link = LINK if link is None else link
    if not 0.0 <= link < 1.0:
        raise ValueError(f"link must be in [0, 1), got {link}")
    x = x.float()
    k, n_bars, n_tracks = x.shape[0], x.shape[1], x.shape[-1]
    S, Z = model.n_segments, model.cfg.mfg.latent
    bps = n_bars // S
    regen = infill_mask(n_bars, n_tracks, bars, tracks).to(x.device)
    seg = regen.view(S, bps, n_tracks)
    touched = [s for s in range(S) if seg[s].any()]
    known = [s for s in range(S) if s not in touched]
    partial = [s for s in touched if not seg[s].all()]
    cells = regen[:, None, None, :]  # broadcasts over (k, bars, T, P, tracks)
    noise = _SampleNoise(seeds, model)
    eps = noise.normal(len(touched), Z)
    e_bvae = noise.normal(S, n_tracks, model.cfg.bvae.latent)

    mu, _ = model.encode(x)
    mu = mu.view(k, S, Z)
    z = mu.clone()
    z[:, touched] = _chain_draw(chain_cov(S, link ** bps), known, mu[:, known], touched, eps)
    out = torch.where(cells, decode_with_noise(model, z.flatten(0, 1), e_bvae, refine), x)
    if n_iter is None:
        n_iter = 0 if known else INFILL_ITERS
    if partial and n_iter:
        upd = torch.zeros_like(regen)
        upd.view(S, bps, n_tracks)[partial] = seg[partial]
        upd = upd[:, None, None, :]
        for _ in range(n_iter):
            e1, e2 = noise.normal(S, Z), noise.normal(S, n_tracks, model.cfg.bvae.latent)
            cur = torch.where(cells, binarize(out, "threshold", threshold), x)
            mu_z, logvar_z = model.encode(cur)
            zi = mu_z + (0.5 * logvar_z).exp() * e1.flatten(0, 1) if sample else mu_z
            out = torch.where(upd, decode_with_noise(model, zi, e2, refine), out)
    return out


def vary(model: Any, x: Tensor, amount: float, seeds: Sequence[int], *,
         shift: Tensor | None = None, refine: bool = True) -> Tensor:
    """A variation of each phrase of ``x`` at ``amount`` in [0, 1] from it (probabilities
    of ``x``'s shape): 0 is the restore (posterior sample), 1 a prior sample unrelated to
    ``x``; in between the two latents are mixed on the circle, which keeps the prior's
    scale."""
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"--amount must be in 0..1, got {amount}")
    S, T = model.n_segments, model.cfg.n_tracks
    Z, L = model.cfg.mfg.latent, model.cfg.bvae.latent
    noise = _SampleNoise(seeds, model)
    e_post, e_prior, e_bvae = noise.normal(S, Z), noise.normal(S, Z), noise.normal(S, T, L)
    mu_z, logvar_z = model.encode(x.float())
    z_restore = mu_z + (0.5 * logvar_z).exp() * e_post.flatten(0, 1)
    angle = amount * math.pi / 2
    z = math.cos(angle) * z_restore + math.sin(angle) * e_prior.flatten(0, 1)
    if shift is not None:
        z = z + shift.to(z)
    return decode_with_noise(model, z, e_bvae, refine)
