"""PatchGAN discriminator, hinge loss and the adaptive generator weight of VQGAN / LDM.

* Discriminator: Isola et al. 2017 ("Image-to-Image Translation with Conditional Adversarial Networks"),
  sec. 3.2.2 / appendix 6.1.2: strided 4x4 convolutions, LeakyReLU(0.2), one logit per patch; with the
  DCGAN initialisation N(0, 0.02) that taming-transformers uses.
* Hinge loss (Lim & Ye 2017; Miyato et al. 2018, eq. 16):
  ``L_D = 0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(G(z)))])``, ``L_G = -E[D(G(z))]``.
* Adaptive weight (Esser et al. 2021, "Taming Transformers", eq. 7):
  ``lambda = ||grad_{G_L} L_rec|| / (||grad_{G_L} L_G|| + 1e-4)`` at the decoder's last layer ``G_L``,
  clamped to [0, 1e4] and detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from components.models.blocks import group_norm


class PatchDiscriminator(nn.Module):
    """``num_layers`` stride-2 convolutions after the first, then a stride-1 conv to one logit per patch.

    Normalisation is GroupNorm (batch-independent, unlike the original BatchNorm, so the discriminator
    behaves the same in train and eval mode and on any batch size).
    """

    def __init__(self, in_channels: int, width: int = 64, num_layers: int = 2):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"discriminator num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = width
        for i in range(1, num_layers + 1):
            cout = width * min(2**i, 8)
            stride = 2 if i < num_layers else 1
            layers += [nn.Conv2d(ch, cout, 4, stride, 1, bias=False), group_norm(cout), nn.LeakyReLU(0.2)]
            ch = cout
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss ``0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(G(z)))))``."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss ``-mean(D(G(z)))``."""
    return -logits_fake.mean()


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4) -> torch.Tensor:
    """``||grad L_rec|| / (||grad L_G|| + 1e-4)`` w.r.t. ``last_layer``, clamped to [0, max_weight], detached
    (Esser et al. 2021, eq. 7). Both losses must still have their graphs (``retain_graph`` is used)."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()
