"""Guided progressive distillation (components/training/distill.py): the target math on toys, a tiny round that lowers
its loss, exact resume after SIGKILL, the student's config round trip, sampling a student, the disabled stage."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from components.config import Params
from components.diffusion import make_betas
from components.diffusion.distilled import DistilledInfo
from components.diffusion.forward import to_x0_eps
from components.diffusion.schedules import alphas_cumprod, sampling_timesteps
from components.generation import LatentDiffusionGenerator
from components.models.autoencoder import AutoencoderConfig, build_autoencoder
from components.models.checkpoint import CheckpointError, save_checkpoint
from components.models.unet import UNet, UNetConfig
from components.training.distill import (
    DistillRound,
    alpha_bar_at,
    ddim_to,
    distill_round,
    plan_rounds,
    round_fingerprint,
    student_loss,
    teacher_denoiser,
    teacher_substeps,
    teacher_target,
    x_target,
)
from components.training.distributed import DistContext
from components.training.loop import LoopConfig
from components.training.state import checkpoint_dirs
from tests.conftest import sigkill_at_line

pytestmark = pytest.mark.usefixtures("one_torch_thread")
WORKER = Path(__file__).parent / "workers" / "tiny_distiller.py"
T = 1000
BETAS = make_betas("scaled_linear", T, 0.00085, 0.012)
AC = alphas_cumprod(BETAS)


class ToyEps(torch.nn.Module):
    """A fixed, label-dependent eps-predictor: eps(z, t, y) = 0.4 z + 0.1 (y + 1) (t / T) + 0.05 (y == -1)."""

    def forward(self, z, t, y):
        tt = (t.double() / T).reshape(-1, 1, 1, 1).to(z.dtype)
        yy = y.reshape(-1, 1, 1, 1).to(z.dtype)
        return 0.4 * z + 0.1 * (yy + 1) * tt + 0.05 * (yy == -1).to(z.dtype)


def _batch(n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


# ------------------------------------------------------------------------------------------------ the target math
def test_grids_nest_and_a_non_nesting_plan_is_refused() -> None:
    paths = teacher_substeps(T, 4, 8)
    assert paths.tolist() == [[999, 874, 749], [749, 624, 499], [499, 374, 249], [249, 124, -1]]
    assert paths[:, 0].tolist() == sampling_timesteps(T, 4, "trailing")
    assert teacher_substeps(T, 8, 16).shape == (8, 3)  # 1000 / 16 is not whole, the trailing grids still nest
    assert [r.student_steps for r in plan_rounds([8, 4, 2, 1], 16, 3.0, T)] == [8, 4, 2, 1]
    rounds = plan_rounds([8, 4], 16, 3.0, T)
    assert rounds == [DistillRound(8, 16, 3.0), DistillRound(4, 8, 1.0)]  # guidance folded in round 1 only
    with pytest.raises(ValueError, match="do not nest"):
        plan_rounds([3], 16, 3.0, T)
    with pytest.raises(ValueError, match="below the teacher"):
        plan_rounds([16], 16, 3.0, T)


def test_x_target_makes_one_ddim_step_land_on_the_teachers_point() -> None:
    z_t, _ = _batch()
    z_next = torch.randn_like(z_t)
    a_t, a_next = AC[749].expand(6), AC[499].expand(6)
    x = x_target(z_t, z_next, a_t, a_next)
    x0, eps = to_x0_eps("sample", x, z_t, a_t.reshape(-1, 1, 1, 1))
    torch.testing.assert_close(ddim_to(x0, eps, a_next), z_next, rtol=0, atol=1e-10)
    # at the end of the run (alpha_bar = 1) the target is the teacher's end point itself
    torch.testing.assert_close(x_target(z_t, z_next, a_t, torch.ones(6, dtype=torch.float64)), z_next, rtol=0, atol=1e-12)


def test_a_student_equal_to_the_two_step_teacher_target_has_zero_loss() -> None:
    """The student that predicts (as v) exactly the x of the teacher's 2 DDIM steps has zero loss; one that is off
    by 1e-2 in x has a loss of the size the (1 + SNR) weighting gives it."""
    z_t, y = _batch()
    paths = teacher_substeps(T, 4, 8)
    path = paths[torch.tensor([0, 1, 2, 3, 1, 3])]
    teacher = teacher_denoiser(ToyEps(), 3.0)
    target = teacher_target(teacher, z_t, y, path, AC, "epsilon")
    a = alpha_bar_at(AC, path[:, 0]).reshape(-1, 1, 1, 1)

    class Oracle(torch.nn.Module):
        def __init__(self, shift: float = 0.0):
            super().__init__()
            self.shift = shift

        def forward(self, z, t, labels):
            assert torch.equal(t, path[:, 0]) and torch.equal(labels, y)
            x = target + self.shift
            return a.sqrt() * (z - a.sqrt() * x) / (1 - a).sqrt() - (1 - a).sqrt() * x  # v of (z, x)

    assert student_loss(Oracle(), z_t, path[:, 0], y, target, AC, "v_prediction").item() < 1e-10
    off = student_loss(Oracle(1e-2), z_t, path[:, 0], y, target, AC, "v_prediction").item()
    expected = float((1e-4 / (1 - a)).mean())
    assert off == pytest.approx(expected, rel=1e-3)
    # the two teacher steps are really taken: the 1-step teacher gives another target
    one_step = teacher_target(teacher, z_t, y, path[:, [0, 2]], AC, "epsilon")
    assert (one_step - target).abs().max() > 1e-3


def test_the_folded_guidance_target_is_the_teachers_cfg_output() -> None:
    """A one-step teacher path: the target is the x0 of the teacher's classifier-free-guided prediction u + w (c - u),
    from two forward passes (conditional and null label)."""
    z_t, y = _batch()
    model = ToyEps()
    t = torch.full((6,), 624)
    path = torch.stack([t, torch.full((6,), 499)], dim=1)
    target = teacher_target(teacher_denoiser(model, 3.0), z_t, y, path, AC, "epsilon")
    cond, uncond = model(z_t, t, y), model(z_t, t, torch.full_like(y, -1))
    guided = uncond + 3.0 * (cond - uncond)
    x0, _ = to_x0_eps("epsilon", guided, z_t, AC[624])
    torch.testing.assert_close(target, x0, rtol=0, atol=1e-10)
    unguided = teacher_target(teacher_denoiser(model, 1.0), z_t, y, path, AC, "epsilon")
    assert (unguided - target).abs().max() > 1e-3


def test_the_teacher_guides_only_inside_the_samplers_interval_per_example() -> None:
    """sample.guidance_interval reaches the round-1 teacher: in one batch of examples at different timesteps, those
    whose sigma_t lies in the interval get u + w (c - u), the rest the conditional prediction alone (what the sampler
    does at that step); later rounds have guidance folded in and take neither. The interval enters the fingerprint."""
    z_t, y = _batch()
    model = ToyEps()
    t = torch.tensor([999, 749, 499, 249, 124, 749])
    sigma = ((1 - AC[t]) / AC[t]).sqrt()
    interval = (0.5, 3.0)
    inside = (sigma > interval[0]) & (sigma <= interval[1])
    assert 0 < int(inside.sum()) < len(t), sigma  # a mixed batch, or the test proves nothing
    out = teacher_denoiser(model, 3.0, guidance_interval=interval, alphas_cumprod=AC)(z_t, t, y)
    cond, uncond = model(z_t, t, y), model(z_t, t, torch.full_like(y, -1))
    want = torch.where(inside.reshape(-1, 1, 1, 1), uncond + 3.0 * (cond - uncond), cond)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    rounds = plan_rounds([8, 4], 16, 3.0, T, guidance_rescale=0.5, guidance_interval=[0.5, 3.0])
    assert rounds == [DistillRound(8, 16, 3.0, 0.5, (0.5, 3.0)), DistillRound(4, 8, 1.0)]
    plain = plan_rounds([8], 16, 3.0, T)[0]
    assert round_fingerprint("b", rounds[0], "d", "v_prediction") != round_fingerprint("b", plain, "d", "v_prediction")
    # a round without rescale or interval keeps the fingerprint it had before they existed (its checkpoints resume)
    old_text = "b|8|16|3.0|v_prediction|d"
    assert round_fingerprint("b", plain, "d", "v_prediction") == hashlib.sha256(old_text.encode()).hexdigest()


# ------------------------------------------------------------------------------------------------ a tiny round
def tiny_unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(UNetConfig(in_channels=2, out_channels=2, sample_size=4, num_classes=3, channels=(8, 16), num_heads=2,
                           num_class_tokens=1))


def tiny_latents(n: int = 48):
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(n) % 3
    mean = torch.randn(n, 2, 4, 4, generator=g) * 0.3 + labels.reshape(-1, 1, 1, 1).float() - 1
    return mean, torch.full_like(mean, -4.0), labels


def _held_out_loss(student: UNet, teacher: UNet, betas: torch.Tensor, mean: torch.Tensor, labels: torch.Tensor) -> float:
    """The round's loss on a fixed batch: every example at every student grid point, fixed noise."""
    ac = alphas_cumprod(betas)
    paths = teacher_substeps(len(betas), 2, 4)
    g = torch.Generator().manual_seed(11)
    z0 = mean.repeat(2, 1, 1, 1)
    path = paths[torch.arange(len(z0)) % 2]
    a = alpha_bar_at(ac, path[:, 0]).reshape(-1, 1, 1, 1).float()
    z_t = a.sqrt() * z0 + (1 - a).sqrt() * torch.randn(z0.shape, generator=g)
    y = labels.repeat(2)
    target = teacher_target(teacher_denoiser(teacher, 2.0), z_t, y, path, ac, "epsilon")
    with torch.no_grad():
        return student_loss(student.eval(), z_t, path[:, 0], y, target, ac, "v_prediction").item()


@pytest.mark.slow  # ~20 s on a busy core
def test_a_tiny_round_lowers_its_loss(tmp_path: Path) -> None:
    """The student starts as the (eps-predicting) teacher read as a v-predictor; 40 steps bring its held-out loss
    (the round's objective on a fixed batch) from 0.90 to 0.49 (measured); a broken target or loss would not fall."""
    mean, logvar, labels = tiny_latents()
    betas = make_betas("linear", 100, 1e-4, 0.02)
    teacher = tiny_unet()
    before = _held_out_loss(tiny_unet(), teacher, betas, mean, labels)
    loop = LoopConfig(batch_size=16, max_images=16 * 40, lr=3e-3, warmup_images=32, ema_decay=0.8, log_every=10)
    student, result = distill_round(teacher, "epsilon", DistillRound(2, 4, 2.0), mean, logvar, labels, betas, loop,
                                    student_prediction_type="v_prediction", seed=1, ctx=DistContext(device=torch.device("cpu")),
                                    checkpoint_dir=tmp_path / "ck", progress=False)
    after = _held_out_loss(student, teacher, betas, mean, labels)
    assert result.steps == 40 and [h["step"] for h in result.history] == [1, 10, 20, 30, 40]
    assert after < 0.65 * before, (before, after)
    assert isinstance(student, UNet) and not student.training
    assert all(torch.equal(p, q) for p, q in zip(teacher.state_dict().values(), tiny_unet().state_dict().values(), strict=True))


# ------------------------------------------------------------------------------------------------ resume
def _worker(out: Path, *args: str) -> list[str]:
    return [sys.executable, str(WORKER), "--out", str(out), *args]


@pytest.mark.slow  # worker subprocesses
@pytest.mark.parametrize(("hang", "at", "resume_from"), [
    ("--hang-after-checkpoint", 4, 4),
    ("--hang-at-step", 7, 6),
], ids=["after-checkpoint-4", "mid-step-7"])
def test_distillation_resumes_exactly_after_sigkill(tmp_path: Path, hang: str, at: int, resume_from: int) -> None:
    subprocess.run(_worker(tmp_path / "straight.safetensors"), check=True, capture_output=True, timeout=300)
    ckpts = tmp_path / "ckpts"
    event = f"checkpoint {at}" if hang == "--hang-after-checkpoint" else f"step {at}"
    sigkill_at_line(_worker(tmp_path / "never.safetensors", "--checkpoints", str(ckpts), hang, str(at)), event, timeout=300)
    assert not (tmp_path / "never.safetensors").exists()
    assert int(checkpoint_dirs(ckpts)[-1].name.split("_")[1]) == resume_from
    resumed = subprocess.run(_worker(tmp_path / "resumed.safetensors", "--checkpoints", str(ckpts)), capture_output=True, text=True,
                             timeout=300, check=True)
    steps = [int(line.split()[1]) for line in resumed.stdout.splitlines() if line.startswith("step ")]
    assert steps == list(range(resume_from, 10)), steps
    a, b = load_file(str(tmp_path / "straight.safetensors")), load_file(str(tmp_path / "resumed.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------ the student's config, sampling
SCHEDULE = {"schedule": "linear", "num_timesteps": 100, "beta_start": 1e-4, "beta_end": 0.02, "prediction_type": "v_prediction"}


def student_folder(root: Path, steps: int = 2, guidance: float = 3.0) -> Path:
    ae = build_autoencoder(AutoencoderConfig(in_channels=1, image_size=8, channels=(8, 16), latent_channels=2), scale_factor=0.8)
    save_checkpoint(root / "autoencoder", ae, ae.config.to_dict(), {"scale_factor": 0.8})
    unet = tiny_unet()
    info = DistilledInfo(steps=steps, guidance=guidance, teacher={"weights_sha256": "ab" * 32}, rounds=[{"student_steps": steps}])
    save_checkpoint(root / "diffusion", unet, unet.config.to_dict(), {"schedule": SCHEDULE, "distilled": info.to_dict()})
    return root


def test_student_config_round_trips_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    info = DistilledInfo(steps=4, guidance=3.0, teacher={"version": "7"}, rounds=[{"student_steps": 8}, {"student_steps": 4}])
    assert DistilledInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    gen = LatentDiffusionGenerator.from_dir(student_folder(tmp_path / "m", steps=4))
    assert gen.distilled.steps == 4 and gen.distilled.guidance == 3.0 and gen.distilled.timestep_spacing == "trailing"
    assert gen.default_steps == 4 and gen.prediction_type == "v_prediction"
    cfg = json.loads((tmp_path / "m" / "diffusion" / "config.json").read_text())
    cfg["distilled"]["steps"] = 0
    (tmp_path / "m" / "diffusion" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="distilled.steps must be a positive integer"):
        LatentDiffusionGenerator.from_dir(tmp_path / "m")


def test_a_student_samples_with_one_pass_per_step_on_its_grid(tmp_path: Path, caplog) -> None:
    gen = LatentDiffusionGenerator.from_dir(student_folder(tmp_path / "m", steps=2))
    calls = []
    forward = gen.unet.forward

    def spy(x, t, y=None):
        calls.append((x.shape[0], int(t[0]), y.tolist()))
        return forward(x, t, y)

    gen.unet.forward = spy
    with caplog.at_level(logging.WARNING, logger="latentflow"):
        images = gen.generate([0, 2], seed=1, steps=2, guidance=3.0)
    assert images.shape == (2, 8, 8, 1)
    assert calls == [(2, 99, [0, 2]), (2, 49, [0, 2])]  # no null-label pass; trailing grid of 100 timesteps
    assert not caplog.records
    calls.clear()
    with caplog.at_level(logging.WARNING, logger="latentflow"):
        gen.generate([1], seed=1, steps=4, guidance=5.0)
    assert len(calls) == 4 and all(n == 1 for n, _, _ in calls)
    text = caplog.text
    assert "distilled for 2 ddim steps" in text and "guidance 5 is ignored" in text
    with pytest.raises(ValueError, match="use --sampler ddim"):
        gen.generate([1], seed=1, sampler="dpmpp_2m", steps=2)


def test_latentflow_sample_uses_the_students_step_count(tmp_path: Path, caplog) -> None:
    from pipelines.stages import sample as stage

    model = student_folder(tmp_path / "m", steps=2)
    with caplog.at_level(logging.WARNING, logger="latentflow"):
        info = stage.run(model=model, out_dir=tmp_path / "out", num_per_class=2, seed=0, sampler="ddim", steps=None, guidance=3.0,
                         device="cpu", default_steps=50)
    assert info["steps"] == 2 and info["images"] == 6 and not caplog.records
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0", "1", "2"]


def test_the_disabled_stage_writes_only_a_status(tmp_path: Path) -> None:
    from pipelines.stages import distill as stage

    out = tmp_path / "models" / "distilled"
    status = stage.run(Params(), data_dir=tmp_path / "nowhere", models_dir=tmp_path / "models", metrics_dir=tmp_path / "metrics",
                       out_dir=out)
    assert status["enabled"] is False
    assert [p.name for p in out.iterdir()] == ["status.json"]
    assert json.loads((out / "status.json").read_text())["enabled"] is False
    assert json.loads((tmp_path / "metrics" / "distill.json").read_text()) == {"enabled": False}


def test_register_adds_the_student_with_alias_fast_and_checks_its_teacher(tmp_path: Path, monkeypatch) -> None:
    from types import SimpleNamespace

    import components.registry.mlflow_registry as registry
    from components.registry.lineage import LineageError, file_sha256
    from pipelines.stages import register as stage

    models = tmp_path / "models"
    student_folder(models / "distilled")
    teacher_unet = tiny_unet(seed=1)
    save_checkpoint(models / "diffusion", teacher_unet, teacher_unet.config.to_dict(), {"schedule": SCHEDULE})
    teacher = SimpleNamespace(model_name="latentflow", version="3", run_id="r3", model_uri="models:/latentflow/3")
    origin = {"git_commit": "abc", "dataset_digest": "d" * 64, "params_sha256": "p" * 64}
    kwargs = dict(teacher=teacher, origin=origin, manifest={}, tracking_uri="sqlite:///unused.db")
    assert stage.register_student(Params(), tmp_path / "nothing", models, **kwargs) is None  # no student: nothing registered
    status = {"enabled": True, "steps": 2, "rounds": [{"student_steps": 2, "final_loss": 0.25, "train_seconds": 9.0, "images_seen": 640}],
              "teacher_weights_sha256": "0" * 64}
    (models / "distilled" / "status.json").write_text(json.dumps(status))
    with pytest.raises(LineageError, match="re-run the distill stage"):
        stage.register_student(Params(), models / "distilled", models, **kwargs)
    status["teacher_weights_sha256"] = file_sha256(models / "diffusion" / "model.safetensors")
    (models / "distilled" / "status.json").write_text(json.dumps(status))
    seen = {}

    def fake_register_model(**kw):
        seen.update(kw, bundle=sorted(p.name for p in Path(kw["model_dir"]).iterdir()),
                    lineage=json.loads((Path(kw["model_dir"]) / "lineage.json").read_text()))
        return SimpleNamespace(version="4", alias=kw["alias"], model_uri="models:/latentflow/4", run_id="r4")

    monkeypatch.setattr(registry, "register_model", fake_register_model)
    fast = stage.register_student(Params(), models / "distilled", models, **kwargs)
    assert fast == {"version": "4", "alias": "fast", "model_uri": "models:/latentflow/4", "run_id": "r4", "teacher_version": "3",
                    "steps": 2, "guidance": 3.0}
    assert seen["alias"] == "fast" and seen["tags"]["teacher_version"] == "3" and seen["tags"]["teacher_run_id"] == "r3"
    assert seen["bundle"] == ["autoencoder", "diffusion", "lineage.json"]
    assert seen["lineage"]["teacher"]["weights_sha256"] == status["teacher_weights_sha256"]
    assert seen["metrics"]["round_2_steps_final_loss"] == 0.25 and seen["metrics"]["distilled_steps"] == 2.0


@pytest.mark.slow  # ~17 s on a busy core
def test_the_stage_writes_loadable_students_and_reuses_finished_rounds(tmp_path: Path, monkeypatch) -> None:
    """The enabled stage on a tiny teacher: every round's student is a model folder the generator samples with its own
    step count; a rerun with one more round takes no step of the finished one (its last checkpoint is the final step)."""
    from types import SimpleNamespace

    import components.data.artifact as artifact
    from pipelines.stages import distill as stage

    models = tmp_path / "models"
    ae = build_autoencoder(AutoencoderConfig(in_channels=1, image_size=8, channels=(8, 16), latent_channels=2), scale_factor=0.8)
    save_checkpoint(models / "autoencoder", ae, ae.config.to_dict(), {"scale_factor": 0.8})
    teacher = tiny_unet()
    save_checkpoint(models / "diffusion", teacher, teacher.config.to_dict(),
                    {"schedule": {**SCHEDULE, "prediction_type": "epsilon"}, "class_names": ["a", "b", "c"], "dataset_digest": "d" * 64,
                     "latent_scale": 1.3})  # the teacher learnt latents at its own scale (train_diffusion.latent_scale: unit)
    rng = np.random.default_rng(0)
    ds = SimpleNamespace(images={"train": rng.integers(0, 255, (24, 8, 8, 1), dtype=np.uint8)}, labels={"train": np.arange(24) % 3},
                         manifest={"dataset_digest": "d" * 64})
    monkeypatch.setattr(artifact, "read_dataset", lambda *a, **k: ds)

    def params(steps):
        return Params.model_validate({"base": {"device": "cpu"}, "distill": {
            "enabled": True, "steps": steps, "teacher_steps": 4, "batch_size": 8, "max_images": 32, "warmup_images": 8}})

    kwargs = dict(data_dir=tmp_path / "data", models_dir=models, metrics_dir=tmp_path / "metrics", out_dir=models / "distilled",
                  progress=False)
    first = stage.run(params([2]), **kwargs)
    assert first["steps"] == 2 and first["rounds"][0]["resumed_from_step"] is None and first["rounds"][0]["images_seen"] == 32
    status = stage.run(params([2, 1]), **kwargs)
    assert [r["student_steps"] for r in status["rounds"]] == [2, 1]
    assert status["rounds"][0]["resumed_from_step"] == 4 and status["rounds"][1]["resumed_from_step"] is None  # round 1 reused
    out = models / "distilled"
    assert sorted(p.name for p in out.iterdir()) == ["autoencoder", "diffusion", "rounds", "status.json"]
    assert sorted(p.name for p in (out / "rounds").iterdir()) == ["steps_1", "steps_2"]
    for steps, folder in ((1, out), (2, out / "rounds" / "steps_2"), (1, out / "rounds" / "steps_1")):
        gen = LatentDiffusionGenerator.from_dir(folder)
        assert gen.default_steps == steps and gen.distilled.guidance == 3.0 and gen.prediction_type == "v_prediction"
        assert gen.latent_scale == 1.3  # decoded at the teacher's scale, not the autoencoder's 0.8
        assert gen.generate([0, 1], seed=0, steps=steps).shape == (2, 8, 8, 1)
    from components.registry.lineage import file_sha256

    assert status["teacher_weights_sha256"] == file_sha256(models / "diffusion" / "model.safetensors")
    metrics = json.loads((tmp_path / "metrics" / "distill.json").read_text())
    assert metrics["enabled"] is True and set(metrics["rounds"]) == {"2", "1"}
    student = load_file(str(out / "diffusion" / "model.safetensors"))
    assert not all(torch.equal(student[k], teacher.state_dict()[k]) for k in student)  # it trained


@pytest.mark.parametrize(("training", "scale", "expected"), [
    ({"latents": "posterior_mean"}, 1.7, ("posterior_mean", 1.7)),
    ({"latents": "posterior_sample"}, 0.8, ("posterior_sample", 0.8)),
    (None, None, ("posterior_sample", "autoencoder")),  # a checkpoint from before the options
])
def test_students_learn_from_the_latents_their_teacher_learnt(tmp_path: Path, monkeypatch, training, scale, expected) -> None:
    """The student's training latents follow the teacher checkpoint's train_diffusion.latents and latent_scale, not
    params.yaml."""
    from types import SimpleNamespace

    import components.data.artifact as artifact
    import components.training.autoencoder as ae_training
    from pipelines.stages import distill as stage

    models = tmp_path / "models"
    ae = build_autoencoder(AutoencoderConfig(in_channels=1, image_size=8, channels=(8, 16), latent_channels=2), scale_factor=0.8)
    save_checkpoint(models / "autoencoder", ae, ae.config.to_dict(), {"scale_factor": 0.8})
    teacher = tiny_unet()
    meta = {"schedule": {**SCHEDULE, "prediction_type": "epsilon"}, "class_names": ["a", "b", "c"], "dataset_digest": "d" * 64}
    save_checkpoint(models / "diffusion", teacher, teacher.config.to_dict(), {**meta, **({"training": training} if training else {}),
                                                                         **({"latent_scale": scale} if scale else {})})
    ds = SimpleNamespace(images={"train": np.zeros((6, 8, 8, 1), dtype=np.uint8)}, labels={"train": np.arange(6) % 3},
                         manifest={"dataset_digest": "d" * 64})
    monkeypatch.setattr(artifact, "read_dataset", lambda *a, **k: ds)
    seen = []

    class Stop(Exception):
        """Raised by the recorder: the stage stops once it has asked for the training latents."""

    def recorder(model, data, device, latents="posterior_sample", scale="autoencoder", workers=0):
        seen.append((latents, scale))
        raise Stop

    monkeypatch.setattr(ae_training, "diffusion_latents", recorder)
    other = "posterior_sample" if expected[0] == "posterior_mean" else "posterior_mean"  # params.yaml says the other one
    params = Params.model_validate({"base": {"device": "cpu"}, "train_diffusion": {"latents": other, "latent_scale": "unit"},
                                    "distill": {"enabled": True, "steps": [2], "teacher_steps": 4}})
    with pytest.raises(Stop):
        stage.run(params, data_dir=tmp_path / "data", models_dir=models, metrics_dir=tmp_path / "metrics",
                  out_dir=models / "distilled", progress=False)
    assert seen == [expected]
