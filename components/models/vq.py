"""Vector quantisation of latents (van den Oord et al. 2017, "Neural Discrete Representation Learning").

``z_q = e_k`` with ``k = argmin_j ||z - e_j||`` per spatial position; the decoder sees
``z + sg[z_q - z]`` (straight-through estimator, sec. 3.2), so the reconstruction gradient reaches the
encoder unchanged. The codebook is learned either

* by gradient, with the loss of eq. 3: ``||sg[z] - e||^2 + beta * ||z - sg[e]||^2``, or
* by exponential moving averages of assigned vectors (appendix A.1; Razavi et al. 2019, eq. 4-6):
  ``N_k <- d N_k + (1-d) n_k``, ``m_k <- d m_k + (1-d) sum_{i: k_i = k} z_i``, ``e_k = m_k / N_k``
  (with Laplace smoothing of ``N``); the loss is then the commitment term ``beta * ||z - sg[e]||^2`` only.

Squared distances are averaged over elements (as in taming-transformers / LDM), not summed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantiser over the channel axis of ``[B, D, H, W]`` latents.

    ``ema=True`` keeps the codebook in buffers updated in training mode (no gradient); otherwise the
    codebook is a parameter trained by the codebook term of the loss. The codebook is initialised from
    the first training batch (random encoder outputs, drawn with the caller's generator), which avoids
    the dead codes a random init leaves when the encoder outputs sit far from it.
    """

    def __init__(self, codebook_size: int, dim: int, beta: float = 0.25, ema: bool = True, decay: float = 0.99, eps: float = 1e-5):
        super().__init__()
        if codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {codebook_size}")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"vq decay must be in (0, 1), got {decay}")
        self.codebook_size, self.dim, self.beta, self.ema, self.decay, self.eps = codebook_size, dim, beta, ema, decay, eps
        init = torch.empty(codebook_size, dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
        if ema:
            self.register_buffer("codebook", init)
            self.register_buffer("cluster_size", torch.zeros(codebook_size))
            self.register_buffer("embed_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        self.register_buffer("initialised", torch.tensor(False))

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for every position of ``z`` ``[B, D, H, W]`` -> ``[B, H, W]``."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.dim)
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.t() + self.codebook.pow(2).sum(1)[None]
        b, _, h, w = z.shape
        return d.argmin(1).reshape(b, h, w)

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """Codes of ``idx`` ``[B, H, W]`` as ``[B, D, H, W]``."""
        return F.embedding(idx, self.codebook).permute(0, 3, 1, 2)

    @torch.no_grad()
    def init_from(self, z: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Set the codebook to ``codebook_size`` encoder outputs drawn at random from ``z`` (with replacement
        when there are fewer vectors than codes)."""
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, self.dim).float()
        n = flat.shape[0]
        if n >= self.codebook_size:
            pick = torch.randperm(n, generator=generator)[: self.codebook_size]
        else:
            pick = torch.randint(0, n, (self.codebook_size,), generator=generator)
        codes = flat[pick.to(flat.device)]
        self.codebook.data.copy_(codes)
        if self.ema:
            self.embed_sum.copy_(codes)
            self.cluster_size.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def ema_update(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        """One EMA step of the codebook towards the mean of the vectors assigned to each code
        (Razavi et al. 2019, eq. 4-6, with Laplace smoothing of the counts)."""
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, self.dim).float()
        onehot = F.one_hot(idx.reshape(-1), self.codebook_size).to(flat.dtype)
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total
        self.codebook.copy_(self.embed_sum / smoothed[:, None])

    def forward(self, z: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Return ``(z + sg[z_q - z], vq_loss, info)``; in training mode the first call initialises the
        codebook from ``z`` and (EMA) every call updates it. ``info``: indices, perplexity, codebook term,
        commitment term."""
        if self.training and not bool(self.initialised):
            self.init_from(z, generator)
        idx = self.indices(z.detach().float())
        z_q = self.lookup(idx).to(z.dtype)
        commitment = F.mse_loss(z, z_q.detach())
        if self.ema:
            codebook_term = torch.zeros((), device=z.device)
            if self.training:
                self.ema_update(z, idx)
        else:
            codebook_term = F.mse_loss(z_q, z.detach())
        loss = codebook_term + self.beta * commitment
        probs = torch.bincount(idx.reshape(-1), minlength=self.codebook_size).float() / idx.numel()
        perplexity = torch.exp(-(probs * torch.log(probs.clamp(min=1e-10))).sum())
        info = {"indices": idx, "perplexity": perplexity.detach(), "codebook": codebook_term.detach(), "commitment": commitment.detach()}
        return z + (z_q - z).detach(), loss, info
