"""MIDI-Sandwich2 (paper III): 5 BVAEs at the bottom, the MFG-VAE on top.

Phrase layout everywhere: float ``(B, bars=4, steps=48, pitches=84, tracks=5)`` in {0, 1}
(docs/architecture.md). Every output is a tensor of note *probabilities* of that shape; turn
it into notes with ``binarize``.

Data flow (III-C): x -> BVAE encoders -> per-track posteriors (mu, logvar) -> MFG encoder ->
MFG latent -> MFG decoder -> reconstructed per-track (mu, logvar) -> BVAE sampling -> BVAE
decoders -> refine nets. With bar-level BVAEs (``reference-code``) every bar is a separate
MFG sample, so MFG tensors have ``N = B * S`` rows, phrase-major, ``S = model.n_segments``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from .bvae import BVAE
from .config import ModelConfig
from .grouped import refine_tracks
from .mfg import MFGVAE
from .vrae import reparameterize

__all__ = ["MidiSandwich2", "binarize", "slerp"]


def binarize(
    probs: Tensor,
    mode: Literal["threshold", "bernoulli"] = "threshold",
    threshold: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Note probabilities -> {0, 1} floats of the same shape.

    ``threshold``: a note is on where ``probs > threshold`` (deterministic; what the paper's
    pictures and metrics use). ``bernoulli``: each note drawn independently with its
    probability (pass ``generator`` for reproducible draws).
    """
    if mode == "threshold":
        return (probs > threshold).to(probs.dtype)
    if mode == "bernoulli":
        return torch.bernoulli(probs, generator=generator)
    raise ValueError(f"binarize mode must be 'threshold' or 'bernoulli', got {mode!r}")


def slerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    """Spherical interpolation along the last axis (falls back to lerp for parallel vectors).

    Gaussian latents concentrate on a shell; slerp keeps the norm typical where lerp would
    pass through the low-norm, rarely-seen centre (White 2016).
    """
    an, bn = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((an * bn).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    out = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / so
    return torch.where(so.abs() < 1e-6, (1 - t) * a + t * b, out)


def _generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)


class MidiSandwich2(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n = 1 if cfg.shared_bvae else cfg.n_tracks  # Fig. 9 ablation: one BVAE for all tracks
        self.bvaes = nn.ModuleList(
            BVAE(cfg.bvae, cfg.n_bars, cfg.steps_per_bar, cfg.n_pitches) for _ in range(n)
        )
        b0 = self.bvaes[0]
        self.mfg = MFGVAE(cfg.mfg, cfg.n_tracks, cfg.bvae.latent, b0.logvar_offset)
        self.n_segments = b0.n_segments

    # ----------------------------------------------------------------- plumbing
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def bvae(self, track: int) -> BVAE:
        """The BVAE of ``track`` (the same module for every track when ``shared_bvae``)."""
        return self.bvaes[0 if self.cfg.shared_bvae else track]

    def flatten_parameters(self) -> None:
        """Call after ``.to(device)`` and before wrapping in DDP (compacts cuDNN LSTM weights)."""
        for b in self.bvaes:
            b.flatten_parameters()
        self.mfg.flatten_parameters()

    # ------------------------------------------------------------ BVAE level
    def encode_tracks(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Phrase (B, bars, T, P, tracks) -> BVAE posteriors (mu, logvar), each (B*S, tracks, L)."""
        posts = [self.bvae(t).encode(x[..., t]) for t in range(self.cfg.n_tracks)]
        mu = torch.stack([p[0] for p in posts], 2)  # (B, S, tracks, L)
        logvar = torch.stack([p[1] for p in posts], 2)
        return mu.flatten(0, 1), logvar.flatten(0, 1)

    def decode_tracks(self, z: Tensor, refine: bool = True) -> Tensor:
        """BVAE latents (B*S, tracks, L) -> probabilities (B, bars, T, P, tracks)."""
        zs = z.view(-1, self.n_segments, *z.shape[1:])
        bvaes = [self.bvae(t) for t in range(self.cfg.n_tracks)]
        probs = [torch.sigmoid(b.decode_logits(zs[:, :, t])) for t, b in enumerate(bvaes)]
        if refine:
            probs = [torch.sigmoid(lg) for lg in refine_tracks([b.refine for b in bvaes], probs)]
        return torch.stack(probs, -1)

    # ------------------------------------------------------------- MFG level
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Phrase -> MFG posterior (mu_z, logvar_z), each (B*S, mfg_latent)."""
        return self.mfg.encode(*self.encode_tracks(x))

    def decode(
        self,
        z: Tensor,
        *,
        refine: bool = True,
        sample_bvae: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """MFG latent (B*S, mfg_latent) -> probabilities (B, bars, T, P, tracks).

        The BVAE sampling happens here, after the MFG decoder (III-C); ``sample_bvae=False``
        decodes the reconstructed BVAE means instead (smooth interpolations).
        """
        mu, logvar = self.mfg.decode(z)
        zb = reparameterize(mu, logvar, generator) if sample_bvae else mu
        return self.decode_tracks(zb, refine)

    def forward(self, x: Tensor, refine: bool = True) -> Tensor:
        """Full stochastic round trip (the training-mode restore); see ``restore``."""
        mu_z, logvar_z = self.encode(x)
        return self.decode(reparameterize(mu_z, logvar_z), refine=refine)

    # ----------------------------------------------------------- inference
    @torch.no_grad()
    def restore(
        self, x: Tensor, *, sample: bool = True, refine: bool = True, seed: int | None = None
    ) -> Tensor:
        """Reproduce a real phrase through the full VAE (the paper's "reducer", Table I MSR).

        ``sample=True`` samples at both levels as in the paper; ``False`` uses means throughout.
        """
        g = _generator(seed, x.device)
        mu_z, logvar_z = self.encode(x)
        z = reparameterize(mu_z, logvar_z, g) if sample else mu_z
        return self.decode(z, refine=refine, sample_bvae=sample, generator=g)

    @torch.no_grad()
    def generate(
        self, n: int, temperature: float = 1.0, seed: int | None = None, *, refine: bool = True
    ) -> Tensor:
        """n phrases from Gaussian noise: MFG prior -> MFG decoder -> BVAE sampling -> decoders."""
        g = _generator(seed, self.device)
        z = self.mfg.sample_prior(n * self.n_segments, temperature, g)
        return self.decode(z, refine=refine, generator=g)

    @torch.no_grad()
    def generate_no_fusion(
        self, n: int, temperature: float = 1.0, seed: int | None = None, *, refine: bool = True
    ) -> Tensor:
        """n phrases with every BVAE sampled from its own prior (Table II "no fusion")."""
        g = _generator(seed, self.device)
        zs = [self.bvae(t).sample_prior(n, temperature, g) for t in range(self.cfg.n_tracks)]
        return self.decode_tracks(torch.stack(zs, 2).flatten(0, 1), refine)

    @torch.no_grad()
    def interpolate(self, a: Tensor, b: Tensor, steps: int = 8, *, refine: bool = True) -> Tensor:
        """``steps`` phrases from ``a`` to ``b`` (both (bars, T, P, tracks) or (1, ...)).

        Slerp between the MFG posterior means, decoded with BVAE means (no sampling noise), so
        neighbouring frames differ only because the latent moved.
        """
        za, _ = self.encode(a.reshape(1, *a.shape[-4:]))  # (S, Z)
        zb, _ = self.encode(b.reshape(1, *b.shape[-4:]))
        ts = torch.linspace(0.0, 1.0, steps).tolist()
        z = torch.cat([slerp(za, zb, t) for t in ts])  # (steps * S, Z), phrase-major
        return self.decode(z, refine=refine, sample_bvae=False)

    @torch.no_grad()
    def complete(
        self,
        x: Tensor,
        keep_tracks: Sequence[int],
        *,
        n_iter: int = 5,
        init: Literal["prior", "zeros"] = "prior",
        sample: bool = True,
        threshold: float = 0.5,
        seed: int | None = None,
        refine: bool = True,
    ) -> Tensor:
        """Keep ``keep_tracks`` of ``x`` and fill the other tracks through the MFG-VAE.

        Iterative imputation (Rezende et al. 2014, app. F): start the missing tracks from each
        BVAE's prior (``init="prior"``) or silence, then ``n_iter`` times run the full VAE
        round trip (``sample=True``: a Markov chain toward p(missing | kept)) and re-impose
        the kept tracks. Between iterations the phrase is binarised at ``threshold`` because
        the BVAEs were trained on {0, 1} input. The result holds ``x``'s kept tracks
        bit-for-bit (as floats) and probabilities elsewhere.
        """
        x = x.float()
        keep = torch.zeros(self.cfg.n_tracks, dtype=torch.bool, device=x.device)
        keep[list(keep_tracks)] = True
        g = _generator(seed, x.device)
        if init == "prior":
            prior = self.generate_no_fusion(x.shape[0], seed=seed, refine=refine)
            start = binarize(prior, "threshold", threshold)
        elif init == "zeros":
            start = torch.zeros_like(x)
        else:
            raise ValueError(f"init must be 'prior' or 'zeros', got {init!r}")
        out = torch.where(keep, x, start)
        for _ in range(n_iter):
            cur = torch.where(keep, x, binarize(out, "threshold", threshold))
            mu_z, logvar_z = self.encode(cur)
            z = reparameterize(mu_z, logvar_z, g) if sample else mu_z
            probs = self.decode(z, refine=refine, sample_bvae=sample, generator=g)
            out = torch.where(keep, x, probs)
        return out
