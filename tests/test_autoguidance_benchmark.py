"""The guidance algebra of ``benchmarks/autoguidance.py`` against hand-computed expectations.

Its ``GuideSwap`` is handed to :func:`components.diffusion.samplers.guided` as the model, so a wrong half, label or
sign would silently measure something other than autoguidance (Karras et al. 2024, eq. 2: b + w (c - b)).
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.autoguidance import GuideSwap
from components.diffusion import alphas_cumprod, make_betas
from components.diffusion.samplers import guided


class Toy(torch.nn.Module):
    """cond(x, y) = k x + y; uncond (negative label) = off - x: each model and pass is told apart by its output."""

    def __init__(self, k: float, off: float):
        super().__init__()
        self.k, self.off, self.calls = k, off, []

    def forward(self, x, t, class_labels=None):
        self.calls.append(None if class_labels is None else class_labels.tolist())
        y = class_labels.float().view(-1, 1, 1, 1)
        return torch.where(y >= 0, self.k * x + y, self.off - x)


X = torch.tensor([0.5, -1.0, 2.0]).view(3, 1, 1, 1)
LABELS = torch.tensor([1, 2, 0])
T = torch.full((3,), 500)


def _parts():
    good, bad = Toy(2.0, 0.5), Toy(1.5, -0.25)
    y = LABELS.float().view(-1, 1, 1, 1)
    return good, bad, 2.0 * X + y, 0.5 - X, 1.5 * X + y, -0.25 - X  # good, bad, c, u, b (bad cond), bad uncond


@pytest.mark.parametrize("w", [1.5, 3.0])
def test_cond_mode_is_autoguidance_b_plus_w_times_c_minus_b(w: float):
    good, bad, c, _, b, _ = _parts()
    out = guided(GuideSwap(good, bad, "cond"), LABELS, w)(X, T)
    torch.testing.assert_close(out, b + w * (c - b))
    assert bad.calls == [LABELS.tolist()]  # the bad model saw the true labels, once, on the second half only


def test_uncond_mode_is_cfg_with_the_bad_models_unconditional_prediction():
    good, bad, c, _, _, bu = _parts()
    out = guided(GuideSwap(good, bad, "uncond"), LABELS, 3.0)(X, T)
    torch.testing.assert_close(out, bu + 3.0 * (c - bu))
    assert bad.calls == [[-1, -1, -1]]


@pytest.mark.parametrize("w,a", [(3.0, 1.5), (3.0, 2.0), (2.0, 1.0)])
def test_combined_mode_adds_autoguidance_to_cfg(w: float, a: float):
    good, bad, c, u, b, _ = _parts()
    out = guided(GuideSwap(good, bad, "combined", cfg_scale=w, weight=a), LABELS, w)(X, T)
    torch.testing.assert_close(out, c + (w - 1) * (c - u) + (a - 1) * (c - b))


def test_a_conditional_only_pass_is_the_good_model_alone():
    good, bad, c, _, _, _ = _parts()
    torch.testing.assert_close(guided(GuideSwap(good, bad, "cond"), LABELS, 1.0)(X, T), c)  # guidance 1: one pass
    # outside the guidance interval: the conditional pass alone, the bad model never called
    ac = alphas_cumprod(make_betas("scaled_linear", 1000, 0.00085, 0.012))
    out = guided(GuideSwap(good, bad, "cond"), LABELS, 3.0, guidance_interval=(0.3, 5.0), alphas_cumprod=ac)(X, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(out, c)
    assert bad.calls == []


def test_combined_mode_needs_its_scales():
    good, bad, *_ = _parts()
    with pytest.raises(ValueError, match="cfg_scale"):
        GuideSwap(good, bad, "combined", weight=1.5)
    with pytest.raises(ValueError, match="mode"):
        GuideSwap(good, bad, "both")


def test_every_guide_is_a_valid_recipe_that_is_worse_than_the_default_by_construction():
    """Each guide validates as params.yaml would and has fewer images (and no more channels) than the run's U-Net."""
    from pathlib import Path

    from benchmarks.autoguidance import GUIDES
    from components.config import Params, load_params, params_dict
    from pipelines.presets import deep_merge

    raw = params_dict(load_params(Path(__file__).resolve().parents[1] / "params.yaml"))
    for name, overrides in GUIDES.items():
        td = Params.model_validate({**raw, "train_diffusion": deep_merge(raw["train_diffusion"], overrides)}).train_diffusion
        assert td.max_images < raw["train_diffusion"]["max_images"], name
        assert list(td.unet.channels) <= list(raw["train_diffusion"]["unet"]["channels"]), name
