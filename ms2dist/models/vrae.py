"""VRAE: LSTM encoder over a sequence -> Gaussian posterior -> z -> LSTM decoder (Fabius 2014).

Used at both levels of MIDI-Sandwich2: each BVAE is a VRAE over one track's time steps, and
fusion strategy 3 of the MFG-VAE is a VRAE over the 5 tracks' (mean, log-variance) rows.

How the paper's "standard epsilon 0.01" becomes a consistent reparameterisation/KL pair
-----------------------------------------------------------------------------------------
Paper eq. (5): ``z = mu + sigma^(1/2) * eps`` with ``eps ~ N(0, s^2)``, ``s = 0.01``.
The published code computes ``mu + h * (s * eps)`` but its KL term treats ``h`` as a
log-variance against N(0, I): the noise it injects is not the distribution it regularises.

Here ``s`` (``epsilon_std``) is folded into the posterior's log-variance as a constant offset:

    logvar = raw + 2 log s            (raw = output of the log-variance head)
    z      = mu + exp(logvar / 2) * e,   e ~ N(0, I)
           = mu + exp(raw)^(1/2) * eps,  eps = s * e ~ N(0, s^2)   <- exactly eq. (5), sigma = e^raw
    q(z|x) = N(mu, exp(logvar))       <- the distribution the sampler really draws from
    KL     = KL(q(z|x) || N(0, I))    <- analytic, on that same logvar
    prior  = N(0, I)                  <- what ``sample_prior`` draws from (times a temperature)

So eq. (5) holds literally, the KL describes the sampled distribution (a Monte-Carlo test in
tests/test_models.py checks it), and generation samples the prior the KL pulls toward. The only
effect of ``s`` is the parameterisation: a fresh head (raw ~ 0) starts with posterior std ``s``
(the paper's small "robustness" noise) rather than 1, and the optimiser moves ``raw`` from
there; ``s = 1`` is the textbook VAE. The KL does pull the variance up towards 1 over training,
with a force set by ``kl_weight``/``free_bits`` in ``losses.py``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["VRAE", "GaussianHead", "gaussian_kl", "reparameterize", "init_lstm", "n_params"]


def n_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def init_lstm(lstm: nn.LSTM) -> None:
    """Keras-like LSTM init: forget-gate bias 1 (PyTorch's default is 0), other biases 0.

    PyTorch adds ``bias_ih`` and ``bias_hh``; gates are ordered (i, f, g, o), so the forget
    slice is ``[H:2H]``. A forget bias of 1 lets gradients flow through long sequences (192
    steps here) at the start of training, as in Jozefowicz et al. 2015.
    """
    h = lstm.hidden_size
    for name, p in lstm.named_parameters():
        if name.startswith("bias_"):
            with torch.no_grad():
                p.zero_()
                if name.startswith("bias_ih"):
                    p[h : 2 * h].fill_(1.0)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per latent dimension (same shape as ``mu``)."""
    return 0.5 * (logvar.exp() + mu.square() - 1.0 - logvar)


def reparameterize(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """z = mu + exp(logvar/2) * e, e ~ N(0, I): a sample of exactly N(mu, exp(logvar))."""
    e = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + (0.5 * logvar).exp() * e


class GaussianHead(nn.Module):
    """Features -> (mu, logvar) with logvar = raw + 2 log(epsilon_std) (see module docstring)."""

    def __init__(self, in_dim: int, latent: int, epsilon_std: float = 1.0) -> None:
        super().__init__()
        if epsilon_std <= 0:
            raise ValueError(f"epsilon_std must be > 0, got {epsilon_std}")
        self.mu = nn.Linear(in_dim, latent)
        self.raw_logvar = nn.Linear(in_dim, latent)
        self.logvar_offset = 2.0 * math.log(epsilon_std)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return self.mu(h), self.raw_logvar(h) + self.logvar_offset


class VRAE(nn.Module):
    """Sequence VAE. Input/output ``(N, seq_len, input_dim)``; latent ``(N, latent)``.

    Decoder: z is repeated at every step (Keras RepeatVector, as the published code) and,
    with ``z_to_state``, also sets the LSTM's initial (h, c) through a tanh layer, which gives
    the decoder the latent before its first step. ``decode`` returns raw outputs (logits for
    binary data, values for real data); the caller picks the activation and the loss.
    """

    def __init__(
        self,
        input_dim: int,
        seq_len: int,
        hidden: int,
        latent: int,
        epsilon_std: float = 1.0,
        *,
        bidirectional: bool = False,
        z_to_state: bool = True,
        position_dim: int = 0,
    ) -> None:
        super().__init__()
        self.input_dim, self.seq_len, self.hidden, self.latent = input_dim, seq_len, hidden, latent
        self.bidirectional, self.z_to_state = bidirectional, z_to_state
        dirs = 2 if bidirectional else 1
        self.encoder = nn.LSTM(input_dim, hidden, batch_first=True, bidirectional=bidirectional)
        self.head = GaussianHead(dirs * hidden, latent, epsilon_std)
        self.state = nn.Linear(latent, 2 * hidden) if z_to_state else None
        # Optional learned step embedding beside z: a decoder fed a constant z must otherwise
        # build its own clock to know where in the bar it is; this hands it one.
        self.position = nn.Embedding(seq_len, position_dim) if position_dim else None
        self.decoder = nn.LSTM(latent + position_dim, hidden, batch_first=True)
        self.out = nn.Linear(hidden, input_dim)
        init_lstm(self.encoder)
        init_lstm(self.decoder)

    def flatten_parameters(self) -> None:
        """Compact cuDNN weights (no-op on CPU); call after ``.to(device)`` / before DDP."""
        self.encoder.flatten_parameters()
        self.decoder.flatten_parameters()

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, T, D) -> posterior (mu, logvar), each (N, latent)."""
        self.encoder.flatten_parameters()
        _, (h_n, _) = self.encoder(x)  # h_n: (dirs, N, H), last step of each direction
        h = h_n.transpose(0, 1).reshape(x.shape[0], -1)
        return self.head(h)

    def decode(self, z: Tensor) -> Tensor:
        """(N, latent) -> raw outputs (N, seq_len, input_dim)."""
        self.decoder.flatten_parameters()
        inp = z.unsqueeze(1).expand(-1, self.seq_len, -1)
        if self.position is not None:
            pos = self.position.weight.unsqueeze(0).expand(z.shape[0], -1, -1)
            inp = torch.cat([inp, pos], dim=-1)
        if self.state is not None:
            h0, c0 = torch.tanh(self.state(z)).chunk(2, dim=-1)
            y, _ = self.decoder(inp, (h0.unsqueeze(0).contiguous(), c0.unsqueeze(0).contiguous()))
        else:
            y, _ = self.decoder(inp)
        return self.out(y)

    def forward(
        self, x: Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Returns (raw outputs, mu, logvar, z); ``sample=False`` decodes the posterior mean."""
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, generator) if sample else mu
        return self.decode(z), mu, logvar, z

    def sample_prior(
        self,
        n: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """z ~ N(0, temperature^2 I): the prior the KL term pulls the posterior toward."""
        w = self.out.weight
        return temperature * torch.randn(
            (n, self.latent), generator=generator, device=w.device, dtype=w.dtype
        )
