"""MFG-VAE (paper III-B/C): a VAE over the 5 BVAE posteriors, sampled only after decoding.

Input: for every track the BVAE posterior *before sampling* (III-C point 2), as a
(track, feature) matrix ``(N, 5, 2 * latent)`` whose rows are ``[mu, logvar - offset]``
(``offset = 2 log epsilon_std`` of the BVAE, see vrae.py, subtracted so the features are O(1)).
The MFG-VAE encodes the matrix to its own Gaussian latent, samples, and decodes back a matrix
of per-track (mu, logvar); the BVAEs then sample from those reconstructed posteriors.

Fusion strategies (``MFGConfig.strategy``):

- ``concat`` (1): flatten the matrix, MLP down to the latent, MLP back up.
- ``project`` (2): project each track's row to ``project_dim`` with its own linear map, sum
  the projections (an additive fusion in a shared low-dim space, the code's "add" idea), MLP
  down; the decoder is the MLP of strategy 1 (asymmetric, as the code planned).
- ``vrae`` (3, paper default): a VRAE reading the 5 rows as a length-5 sequence, "similar
  architecture as the BVAE" (z also sets the decoder's initial state).
- ``lstm``: the published code's variant: the same LSTM-over-5-track-latents VAE, with z fed
  to the decoder only by repetition (Keras RepeatVector), hidden 128 / latent 64 in its preset.

Reconstruction loss (the ``-ln q(X|Z)`` of eq. 6), ``MFGConfig.recon``:

- ``"mse"`` (default): squared error on the feature matrix, i.e. on ``mu`` and on
  ``logvar - offset``, summed over tracks and dimensions. This is a Gaussian likelihood with
  unit variance on the MFG-VAE's input, in units where the BVAE prior is N(0, I) and a fresh
  BVAE head has log-variance 0, so both halves of a row are O(1) and equally weighted. The
  published code also uses MSE (on concat(mu, log-sigma)).
- ``"kl"``: the analytic KL from the reconstructed to the encoded BVAE posterior, per track
  and dimension,

      KL(N(mu_hat, v_hat) || N(mu, v)) = 0.5 [log v - log v_hat + (v_hat + (mu_hat - mu)^2) / v - 1]

  It is the principled choice: the MFG output is a distribution the BVAE will sample from,
  and this asks that samples from it land where the BVAE decoder was trained for the phrase
  (mean errors count in units of the encoder's own std; fixed weights, so inflating a learned
  variance cannot lower it). But it is ill-conditioned with the paper's epsilon 0.01: BVAE
  posterior stds stay ~0.02, so mean errors are weighted ~2,500x more than in ``mse``. In our
  probe (``tiny``, 8 real phrases, 600 Adam steps, strategy 3) the full-VAE restore note F1
  was 0.66 with ``kl`` and 0.90 with ``mse`` (concat: 0.91 vs 0.94). Hence ``mse`` by
  default; ``kl`` stays reachable for wider posteriors (larger epsilon_std or KL weight).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import MFGConfig
from .vrae import VRAE, GaussianHead, reparameterize

__all__ = ["MFGVAE", "mlp"]

_LOGVAR_CLAMP = 15.0  # bound on the decoded (offset-free) log-variance: exp(+-15) stays finite


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MFGVAE(nn.Module):
    """VAE over BVAE posteriors. ``mu``/``logvar`` arguments are ``(N, n_tracks, bvae_latent)``."""

    def __init__(
        self, cfg: MFGConfig, n_tracks: int, bvae_latent: int, bvae_logvar_offset: float
    ) -> None:
        super().__init__()
        self.cfg, self.n_tracks, self.bvae_latent = cfg, n_tracks, bvae_latent
        self.bvae_logvar_offset = bvae_logvar_offset
        feat = 2 * bvae_latent
        h, lat = cfg.hidden, cfg.latent
        self.vrae: VRAE | None = None
        if cfg.strategy in ("vrae", "lstm"):
            self.vrae = VRAE(
                feat, n_tracks, h, lat, cfg.epsilon_std, z_to_state=cfg.strategy == "vrae"
            )
        elif cfg.strategy in ("concat", "project"):
            if cfg.strategy == "concat":
                enc_in = n_tracks * feat
                self.proj = None
            else:
                enc_in = cfg.project_dim
                w = torch.randn(n_tracks, feat, cfg.project_dim) / feat**0.5
                self.proj = nn.Parameter(w)
            hidden = [h] * cfg.mlp_layers
            self.enc = nn.Sequential(mlp([enc_in, *hidden]), nn.ReLU())
            self.head = GaussianHead(h if hidden else enc_in, lat, cfg.epsilon_std)
            self.dec = mlp([lat, *hidden, n_tracks * feat])
        else:
            raise ValueError(f"unknown MFG strategy {cfg.strategy!r}")

    @property
    def latent(self) -> int:
        return self.cfg.latent

    def flatten_parameters(self) -> None:
        if self.vrae is not None:
            self.vrae.flatten_parameters()

    def features(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """BVAE posteriors -> the (track, feature) matrix ``(N, tracks, 2 * latent)``."""
        return torch.cat([mu, logvar - self.bvae_logvar_offset], dim=-1)

    def unfeatures(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        mu, raw = feats.split(self.bvae_latent, dim=-1)
        return mu, raw.clamp(-_LOGVAR_CLAMP, _LOGVAR_CLAMP) + self.bvae_logvar_offset

    def encode(self, mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
        """BVAE posteriors -> MFG posterior (mu_z, logvar_z), each (N, mfg_latent)."""
        f = self.features(mu, logvar)
        if self.vrae is not None:
            return self.vrae.encode(f)
        if self.proj is not None:
            h = torch.einsum("ntf,tfd->nd", f, self.proj)
        else:
            h = f.flatten(1)
        return self.head(self.enc(h))

    def decode(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """MFG latent (N, mfg_latent) -> reconstructed BVAE posteriors (mu, logvar)."""
        if self.vrae is not None:
            f = self.vrae.decode(z)
        else:
            f = self.dec(z).view(z.shape[0], self.n_tracks, 2 * self.bvae_latent)
        return self.unfeatures(f)

    def forward(
        self,
        mu: Tensor,
        logvar: Tensor,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Returns (mu_hat, logvar_hat, mu_z, logvar_z)."""
        mu_z, logvar_z = self.encode(mu, logvar)
        z = reparameterize(mu_z, logvar_z, generator) if sample else mu_z
        mu_hat, logvar_hat = self.decode(z)
        return mu_hat, logvar_hat, mu_z, logvar_z

    def recon_loss(self, mu_hat: Tensor, logvar_hat: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
        """Per-sample reconstruction loss (N,), summed over tracks and dimensions."""
        if self.cfg.recon == "mse":
            d = self.features(mu_hat, logvar_hat) - self.features(mu, logvar)
            return d.square().flatten(1).sum(1)
        kl = 0.5 * (
            logvar - logvar_hat + (logvar_hat.exp() + (mu_hat - mu).square()) / logvar.exp() - 1.0
        )
        return kl.flatten(1).sum(1)

    def sample_prior(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """z ~ N(0, temperature^2 I), the prior of the MFG KL term."""
        p = next(self.parameters())
        return temperature * torch.randn(
            (n, self.cfg.latent), generator=generator, device=p.device, dtype=p.dtype
        )
