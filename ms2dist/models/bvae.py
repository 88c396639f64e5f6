"""BVAE (paper III-A): a VRAE over one track, followed by a convolutional refine network.

A track of a phrase is a ``(B, bars, steps, pitches)`` tensor in {0, 1}. The VRAE reads it
as a sequence of pitch vectors: the whole 4-bar phrase (192 steps, ``paper``) or each bar
separately (48 steps, ``bar_level=True``, the published code). In the bar-level case every
bar has its own latent, so latents are shaped ``(B, S, latent)`` with ``S`` = segments per
phrase (1 or ``bars``).

The VRAE decoder emits logits; ``sigmoid`` gives note probabilities. The refine network
(Fig. 2) reads those probabilities as a 3-D picture (bar, time, pitch), passes them through
residual units of 3-D convolutions with kernel (1, 3, 12) and ends in a sigmoid, trained with
binary cross-entropy against the {0, 1} targets (eq. 3-4; our data are already {0, 1}, so
eq. 3's [-1, 1] -> [0, 1] map is the identity). Everything is differentiable, so stage 1 can
train VRAE and refiner jointly, or the refiner alone on the frozen VRAE's output.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import BVAEConfig, RefineConfig
from .convs import band_stem, conv3d_same, same_conv
from .vrae import VRAE, reparameterize

__all__ = ["ResidualUnit3d", "RefineNet", "BVAE"]


class ResidualUnit3d(nn.Module):
    """x + conv(relu(conv(relu(x)))): pre-activation residual unit (He et al. 2016)."""

    def __init__(self, channels: int, kernel: tuple[int, int, int]) -> None:
        super().__init__()
        self.conv1 = conv3d_same(channels, channels, kernel)
        self.conv2 = conv3d_same(channels, channels, kernel)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(torch.relu(self.conv1(torch.relu(x))))


class RefineNet(nn.Module):
    """Probabilities (N, bars, T, P) -> refined logits of the same shape (sigmoid = probs).

    "The tensor size remains the same throughout the network" (Fig. 2): every convolution is
    stride 1 with 'same' padding. The kernel spans one bar, 3 steps and 12 semitones (an
    octave), so a unit sees local rhythm and harmony but never crosses a bar line.
    """

    def __init__(self, cfg: RefineConfig) -> None:
        super().__init__()
        c, k = cfg.channels, tuple(cfg.kernel)
        self.stem = conv3d_same(1, c, k)
        self.units = nn.Sequential(*[ResidualUnit3d(c, k) for _ in range(cfg.n_units)])
        self.head = conv3d_same(c, 1, k)
        self.skip = cfg.skip
        if cfg.skip:  # ~identity at init: logits = logit(probs) + small; not exactly 0, so
            with torch.no_grad():  # gradients reach the stem and units from the first step
                self.head[1].weight.mul_(0.01)
                self.head[1].bias.zero_()

    def forward(self, probs: Tensor) -> Tensor:
        # channels-last throughout: what oneDNN's convolution wants for a few channels.
        # relu_ where nothing else reads its input (a convolution's backward keeps only
        # its input): one activation-sized buffer less per layer.
        h = band_stem(probs, self.stem)
        for unit in self.units:
            h = h + same_conv(torch.relu_(same_conv(torch.relu(h), [unit.conv1])), [unit.conv2])
        out = same_conv(torch.relu_(h), [self.head]).squeeze(1)
        return out + torch.logit(probs, eps=1e-6) if self.skip else out


class BVAE(nn.Module):
    """One track's VAE + refiner. Inputs and outputs are ``(B, bars, steps, pitches)``."""

    def __init__(
        self, cfg: BVAEConfig, n_bars: int = 4, steps_per_bar: int = 48, n_pitches: int = 84
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_bars, self.steps_per_bar, self.n_pitches = n_bars, steps_per_bar, n_pitches
        self.n_segments = n_bars if cfg.bar_level else 1
        seq_len = steps_per_bar if cfg.bar_level else n_bars * steps_per_bar
        self.vrae = VRAE(
            n_pitches,
            seq_len,
            cfg.hidden,
            cfg.latent,
            cfg.epsilon_std,
            bidirectional=cfg.encoder_bidirectional,
            z_to_state=cfg.z_to_state,
            position_dim=cfg.decoder_position_dim,
        )
        nn.init.constant_(self.vrae.out.bias, cfg.output_bias_init)
        self.refine = RefineNet(cfg.refine)

    @property
    def latent(self) -> int:
        return self.cfg.latent

    @property
    def logvar_offset(self) -> float:
        return self.vrae.head.logvar_offset

    def flatten_parameters(self) -> None:
        self.vrae.flatten_parameters()

    # (B, bars, T, P) <-> (B * S, seq_len, P): a bar-level BVAE sees each bar as a sample.
    def _to_seq(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0] * self.n_segments, -1, self.n_pitches)

    def _from_seq(self, y: Tensor) -> Tensor:
        return y.reshape(-1, self.n_bars, self.steps_per_bar, self.n_pitches)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Track (B, bars, T, P) -> posterior (mu, logvar), each (B, S, latent)."""
        mu, logvar = self.vrae.encode(self._to_seq(x))
        shape = (x.shape[0], self.n_segments, -1)
        return mu.view(shape), logvar.view(shape)

    def decode_logits(self, z: Tensor) -> Tensor:
        """(B, S, latent) -> VRAE logits (B, bars, T, P), before refinement."""
        return self._from_seq(self.vrae.decode(z.reshape(-1, z.shape[-1])))

    def refine_logits(self, probs: Tensor) -> Tensor:
        """VRAE probabilities (B, bars, T, P) -> refined logits (B, bars, T, P)."""
        return self.refine(probs)

    def decode(self, z: Tensor, refine: bool = True) -> Tensor:
        """(B, S, latent) -> note probabilities (B, bars, T, P); ``refine=False`` = MSG1."""
        probs = torch.sigmoid(self.decode_logits(z))
        return torch.sigmoid(self.refine_logits(probs)) if refine else probs

    def sample(
        self, mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        return reparameterize(mu, logvar, generator)

    def sample_prior(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """(n, S, latent) from the BVAE's own prior N(0, temperature^2 I)."""
        z = self.vrae.sample_prior(n * self.n_segments, temperature, generator)
        return z.view(n, self.n_segments, -1)

    def forward(
        self, x: Tensor, sample: bool = True, refine: bool = True
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Round trip of a track: (probs, mu, logvar)."""
        mu, logvar = self.encode(x)
        z = self.sample(mu, logvar) if sample else mu
        return self.decode(z, refine), mu, logvar
