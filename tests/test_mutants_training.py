"""Tests written to kill the mutants of components/training/ that the other suites let survive
(benchmarks/mutation.py; reports/mutation.md lists each survivor and its test or why it is equivalent).

Each pins a behaviour of the training loop a stage relies on: what the defaults of LoopConfig do, the
logged loss curve, gradient accumulation = one big batch, clipping, the per-epoch shuffle, what a checkpoint
holds and what resuming restores, the LR schedule, ...
"""

from __future__ import annotations

import contextlib
import copy
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import components.training.loop as loop_module
from components.training.common import autocast, resolve_device, setup_torch, warmup_lr
from components.training.distributed import DistContext
from components.training.loop import Batch, LoopConfig, Trainer
from components.training.state import (
    checkpoint_dirs,
    join_tensors,
    latest_training_state,
    load_training_state,
    restore_rng_states,
    rng_states,
    save_training_state,
    split_tensors,
)

DATA = torch.randn(64, 4, generator=torch.Generator().manual_seed(3))


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 1)


def _trainer(tmp: Path | None = None, model: torch.nn.Module | None = None, **cfg) -> Trainer:
    fp = cfg.pop("fingerprint", "fp")
    return Trainer(model or _model(), LoopConfig(**cfg), dataset_size=64, seed=1, ctx=DistContext(), checkpoint_dir=tmp,
                   fingerprint=fp, progress=False)


def _mse(net, batch: Batch):
    return ((net(DATA[batch.indices]) - 1.0) ** 2).mean(), {}


def _steps(tmp: Path) -> list[int]:
    return [int(p.name.split("_")[1]) for p in checkpoint_dirs(tmp)]


# ------------------------------------------------------------------------------------------------ LoopConfig defaults
def test_loop_config_defaults_give_a_plain_loop(tmp_path: Path):
    """Only batch_size, max_images and lr given: no warmup, cosine decay, one micro-batch per step, grad norm
    clipped at 1, one checkpoint at the end (resumable), a loss point at steps 1, 25 and the last, no EMA."""
    steps, lrs, grad_norms, micro = 30, {}, [], []
    trainer = _trainer(tmp_path, batch_size=8, max_images=8 * steps, lr=0.1)

    def loss_fn(net, batch):
        lrs[batch.step] = trainer.optimizer.param_groups[0]["lr"]
        micro.append((batch.step, len(batch.indices)))
        assert net is trainer.model and net.training
        return (net(DATA[batch.indices]) * 1000.0).pow(2).mean(), {}  # a huge gradient

    def after(step):
        grad_norms.append(torch.cat([p.grad.flatten() for p in trainer.model.parameters()]).norm().item())

    res = trainer.run(loss_fn, after_step=after)
    assert res.steps == steps and res.images_seen == 8 * steps and not res.stopped_by_max_time
    assert micro == [(s, 8) for s in range(steps)]
    assert lrs[0] == pytest.approx(0.1) and lrs[1] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / steps)))
    assert max(grad_norms) == pytest.approx(1.0, rel=1e-4)
    assert [h["step"] for h in res.history] == [1, 25, 30]
    assert _steps(tmp_path) == [steps]
    assert trainer.ema is None and trainer.final_model() is trainer.model and not trainer.model.training
    # plain AdamW without weight decay; on the CPU never torch's fused kernel (far slower there)
    assert trainer.optimizer.defaults["weight_decay"] == 0.0 and not trainer.optimizer.defaults.get("fused")
    assert _trainer(tmp_path, batch_size=8, max_images=8 * steps, lr=0.1).run(_mse).resumed_from_step == steps


def test_default_rotation_keeps_the_newest_two_checkpoints(tmp_path: Path):
    _trainer(tmp_path, batch_size=8, max_images=80, lr=1e-2, checkpoint_every_images=16).run(_mse)
    assert _steps(tmp_path) == [8, 10]


def test_channels_last_is_off_by_default_and_applies_when_on():
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3))
    trainer = Trainer(conv, LoopConfig(batch_size=8, max_images=8, lr=1e-2), dataset_size=64, seed=0, ctx=DistContext(), progress=False)
    assert trainer.model[0].weight.is_contiguous()
    on = Trainer(conv, LoopConfig(batch_size=8, max_images=8, lr=1e-2, channels_last=True), dataset_size=64, seed=0, ctx=DistContext(),
                 progress=False)
    assert on.model[0].weight.is_contiguous(memory_format=torch.channels_last) and not on.model[0].weight.is_contiguous()
    assert on.final_model()[0].weight.is_contiguous()  # handed back in the default format


def test_on_the_cpu_adamw_is_the_foreach_one_and_trains_the_defaults_numbers_to_the_bit():
    """The CPU runs AdamW's multi-tensor implementation (faster), never the fused kernel (which rounds differently,
    whatever runtime.fused_optimizer says): a loop of steps ends at the parameters torch's default AdamW reaches."""
    conv = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.GroupNorm(1, 3), torch.nn.Conv2d(3, 2, 3))
    x = torch.randn(8, 2, 9, 9, generator=torch.Generator().manual_seed(0))
    for fused in (True, False):
        torch.manual_seed(0)
        net = copy.deepcopy(conv)
        trainer = Trainer(net, LoopConfig(batch_size=8, max_images=8, lr=1e-2, fused_optimizer=fused), dataset_size=64, seed=0,
                          ctx=DistContext(), progress=False)
        group = trainer.optimizer.param_groups[0]
        assert group["foreach"] is True and not group["fused"]
        reference = copy.deepcopy(conv)
        plain = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.0)
        assert plain.param_groups[0]["foreach"] is None  # torch's own choice on the CPU: the per-parameter loop
        for model, opt in ((trainer.model, trainer.optimizer), (reference, plain)):
            for step in range(5):
                opt.zero_grad()
                (model(x + step) ** 2).mean().backward()
                opt.step()
        for a, b in zip(trainer.model.parameters(), reference.parameters(), strict=True):
            assert torch.equal(a, b)
        assert not torch.equal(trainer.model[0].weight, conv[0].weight)  # it did train


def test_loop_config_from_section_maps_every_field():
    rt = SimpleNamespace(grad_accum=2, checkpoint_every_images=96, keep_checkpoints=3, resume=False, max_time_minutes=4.0, compile=True,
                         channels_last=True, fused_optimizer=False, data_workers=2)
    section = SimpleNamespace(runtime=rt, batch_size=32, max_images=640, lr=3e-3, warmup_images=64, lr_schedule="constant",
                              grad_clip=0.5, ema_decay=0.99, log_every=7)
    cfg = LoopConfig.from_section(section, log_every=3)
    assert cfg == LoopConfig(batch_size=32, max_images=640, lr=3e-3, warmup_images=64, lr_schedule="constant", grad_clip=0.5,
                             ema_decay=0.99, grad_accum=2, checkpoint_every_images=96, keep_checkpoints=3, resume=False,
                             max_time_minutes=4.0, compile=True, channels_last=True, fused_optimizer=False, log_every=3, data_workers=2)
    del section.log_every, section.ema_decay
    cfg = LoopConfig.from_section(section)
    assert cfg.log_every == 25 and cfg.ema_decay is None


# ------------------------------------------------------------------------------------------------ the step
def test_history_is_the_running_mean_of_the_step_losses_and_carries_the_logs():
    """Each point averages the losses of the steps since the previous point; the loss function's and
    after_step's logs join it (as floats); after_step gets the 0-based index of the step just taken."""
    trainer = _trainer(None, batch_size=8, max_images=8 * 7, lr=1e-2, log_every=3)
    seen = []

    def loss_fn(net, batch):
        return net(DATA[batch.indices]).sum() * 0.0 + float(batch.step), {"s": torch.tensor(batch.step * 2)}

    def after(step):
        seen.append(step)
        return {"d_loss": 10.0 + step}

    res = trainer.run(loss_fn, after_step=after)
    assert seen == list(range(7))
    # points after steps 1 (step 0), 3 (steps 1, 2), 6 (steps 3..5), 7 (step 6)
    assert [(h["step"], h["images"], h["loss"]) for h in res.history] == [(1, 8, 0.0), (3, 24, 1.5), (6, 48, 4.0), (7, 56, 6.0)]
    assert [(h["s"], h["d_loss"]) for h in res.history] == [(0.0, 10.0), (4.0, 12.0), (10.0, 15.0), (12.0, 16.0)]
    assert all(isinstance(h["s"], float) for h in res.history)
    assert res.train_seconds >= 0.0


def test_grad_accumulation_equals_one_big_batch():
    """Two micro-batches of 4 cover the global batch of 8 and give the weights of one batch of 8 (mean loss)."""
    parts = []

    def loss_fn(net, batch):
        parts.append((batch.step, batch.indices.tolist(), batch.rows.tolist()))
        return _mse(net, batch)

    grads: dict[int, list] = {1: [], 2: []}

    def keep(trainer, k):
        return lambda step: grads[k].append(torch.cat([p.grad.flatten() for p in trainer.model.parameters()]).clone())

    one = _trainer(None, batch_size=8, max_images=32, lr=1e-2, grad_clip=100.0)  # no clipping: compare raw gradients
    r1 = one.run(_mse, after_step=keep(one, 1))
    two = _trainer(None, batch_size=8, max_images=32, lr=1e-2, grad_accum=2, grad_clip=100.0)
    r2 = two.run(loss_fn, after_step=keep(two, 2))
    for g1, g2 in zip(grads[1], grads[2], strict=True):  # the gradient itself (Adam's update would hide a scale)
        torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-6)
    for a, b in zip(one.model.parameters(), two.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for h1, h2 in zip(r1.history, r2.history, strict=True):
        assert h1["loss"] == pytest.approx(h2["loss"], rel=1e-5)
    for step in range(4):
        idx = [p for p in parts if p[0] == step]
        assert [p[2] for p in idx] == [[0, 1, 2, 3], [4, 5, 6, 7]]
        assert [i for p in idx for i in p[1]] == one.local_indices(step)[0].tolist()


def test_gradients_are_cleared_every_step():
    """A constant gradient (0.01 per weight, under the clip) is the gradient of every step, not a running sum."""
    model = torch.nn.Linear(4, 1, bias=False)
    trainer = _trainer(None, model=model, batch_size=8, max_images=40, lr=1e-3)
    grads = []
    trainer.run(lambda net, batch: (net.weight.sum() * 0.01, {}), after_step=lambda s: grads.append(model.weight.grad.clone()))
    assert len(grads) == 5 and all(torch.allclose(g, torch.full_like(g, 0.01)) for g in grads)


def test_epochs_are_reshuffled_and_each_covers_the_data_once():
    trainer = _trainer(None, batch_size=8, max_images=8 * 16, lr=1e-2)
    epochs = [torch.cat([trainer.local_indices(e * 8 + k)[0] for k in range(8)]) for e in range(2)]
    assert all(sorted(e.tolist()) == list(range(64)) for e in epochs)
    assert not torch.equal(epochs[0], epochs[1]) and epochs[0].tolist() != list(range(64))
    assert torch.equal(trainer.local_indices(3)[0], epochs[0][24:32])  # back to epoch 0: recomputed, same order


def test_model_is_in_train_mode_for_the_steps_and_eval_after():
    model = torch.nn.Sequential(torch.nn.Linear(4, 1), torch.nn.Dropout(0.5))
    model.eval()
    modes = []
    trainer = _trainer(None, model=model, batch_size=8, max_images=16, lr=1e-2)
    trainer.run(lambda net, batch: (modes.append(net.training) or net(DATA[batch.indices]).mean(), {}))
    assert modes == [True, True] and not model.training


# ------------------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_records_the_counters(tmp_path: Path):
    _trainer(tmp_path, batch_size=8, max_images=8 * 10, lr=1e-2, checkpoint_every_images=24, ema_decay=0.9).run(_mse)
    assert _steps(tmp_path) == [9, 10]
    state = load_training_state(latest_training_state(tmp_path))
    assert state["step"] == 10 and state["images_seen"] == 80 and state["world_size"] == 1 and state["fingerprint"] == "fp"
    assert state["sampler"] == {"seed": 1, "epoch": 1, "batches_done_in_epoch": 2}  # 8 steps per epoch
    assert [h["step"] for h in state["history"]] == [1, 10] and set(state["ema"]) >= {"module.weight", "n_averaged"}


def test_a_checkpoint_folder_of_other_params_is_cleared_before_training(tmp_path: Path):
    _trainer(tmp_path, batch_size=8, max_images=80, lr=1e-2, checkpoint_every_images=16).run(_mse)
    assert _steps(tmp_path) == [8, 10]
    _trainer(tmp_path, batch_size=8, max_images=40, lr=1e-2, checkpoint_every_images=16, fingerprint="other").run(_mse)
    assert _steps(tmp_path) == [4, 5]
    assert all(load_training_state(p)["fingerprint"] == "other" for p in checkpoint_dirs(tmp_path))


def test_resume_restores_extra_state_and_the_global_rng(tmp_path: Path):
    """A run stopped after one step and resumed ends where an uninterrupted run ends, even when the loss uses
    torch's global RNG and an extra module (e.g. the discriminator) trains alongside."""

    def run(tmp, max_time):
        extra = torch.nn.Linear(1, 1)
        with torch.no_grad():
            extra.weight.fill_(0.3)
            extra.bias.fill_(0.1)
        torch.manual_seed(5)
        trainer = _trainer(tmp, batch_size=8, max_images=48, lr=1e-2, checkpoint_every_images=0, max_time_minutes=max_time)
        extra_opt = torch.optim.SGD(extra.parameters(), lr=0.1)
        trainer.extra_state.update(extra=extra)

        def loss_fn(net, batch):
            noise = torch.randn(len(batch.indices), 4)  # the global RNG
            return ((net(DATA[batch.indices] + noise) - 1.0) ** 2).mean(), {}

        def after(step):
            extra_opt.zero_grad()
            extra(torch.ones(1, 1)).sum().backward()
            extra_opt.step()

        res = trainer.run(loss_fn, after_step=after)
        return trainer, extra, res

    straight, straight_extra, _ = run(None, None)
    _, _, res = run(tmp_path, 1e-9)
    assert res.stopped_by_max_time and res.steps == 1
    torch.manual_seed(123)  # a different global state: resuming must restore the checkpoint's
    resumed, resumed_extra, res = run(tmp_path, None)
    assert res.resumed_from_step == 1 and res.steps == 6
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    # the extra module came back from the checkpoint (one SGD step there) and took five more: six in all
    assert torch.equal(straight_extra.weight, resumed_extra.weight) and torch.equal(straight_extra.bias, resumed_extra.bias)
    assert float(resumed_extra.weight.detach()) == pytest.approx(0.3 - 6 * 0.1)


# ------------------------------------------------------------------------------------------------ state.py
def test_checkpoint_dirs_lists_complete_step_folders_in_step_order(tmp_path: Path):
    assert checkpoint_dirs(tmp_path / "missing") == [] and latest_training_state(tmp_path / "missing") is None
    for step in (10, 2, 33):
        save_training_state(tmp_path, step, {"w": torch.ones(2), "step": step}, keep=5)
    (tmp_path / "step_00000040").mkdir()  # incomplete: no state.json
    (tmp_path / "step_00000050.tmp").mkdir()
    (tmp_path / "step_00000060").write_text("")  # a file
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_00000002", "step_00000010", "step_00000033"]
    assert latest_training_state(tmp_path).name == "step_00000033"
    save_training_state(tmp_path, 34, {"w": torch.zeros(2)}, keep=2)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_00000033", "step_00000034"]
    assert torch.equal(load_training_state(tmp_path / "step_00000034")["w"], torch.zeros(2))


def test_state_keys_of_every_json_kind_round_trip_and_others_are_refused():
    state = {"a": 1, 2: "two", 1.5: [torch.arange(3), (4, 5)], True: None, None: {"x": torch.ones(1)}}
    tensors: dict = {}
    back = join_tensors(split_tensors(state, "s", tensors), tensors)
    assert set(back) == {"a", 2, 1.5, True, None} and back[2] == "two" and back[1.5][1] == [4, 5]
    assert torch.equal(back[1.5][0], torch.arange(3)) and torch.equal(back[None]["x"], torch.ones(1))
    with pytest.raises(TypeError, match="cannot be stored"):
        split_tensors({(1, 2): 0}, "s", {})


def test_named_generator_states_round_trip():
    g = torch.Generator().manual_seed(11)
    states = rng_states({"noise": g})
    expected = torch.rand(3, generator=g)
    cpu_expected = torch.rand(3)
    torch.rand(5, generator=g)
    torch.rand(5)
    restore_rng_states(states, {"noise": g, "absent": torch.Generator()})
    assert torch.equal(torch.rand(3, generator=g), expected) and torch.equal(torch.rand(3), cpu_expected)


# ------------------------------------------------------------------------------------------------ common.py
def test_warmup_then_cosine_learning_rate():
    assert [warmup_lr(s, 1.0, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_lr(4, 2.0, 4, 14) == 2.0 and warmup_lr(14, 2.0, 4, 14) == pytest.approx(0.0, abs=1e-12)
    assert warmup_lr(9, 2.0, 4, 14) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert warmup_lr(9, 2.0, 4, 14, final_fraction=0.1) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))))
    assert warmup_lr(20, 2.0, 4, 14, final_fraction=0.1) == pytest.approx(0.2)  # past the end: stays at the floor
    assert warmup_lr(5, 2.0, 4, 4) == 2.0 and warmup_lr(5, 2.0, 4, 3) == 2.0  # no room to decay: constant
    # one decay step: the step after the warmup is already the last, so it lands on the floor (progress 1/1)
    assert warmup_lr(4, 2.0, 4, 5, final_fraction=0.1) == 2.0 and warmup_lr(5, 2.0, 4, 5, final_fraction=0.1) == pytest.approx(0.2)


def test_devices_seeding_and_autocast_on_the_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")
    n = torch.get_num_threads()
    setup_torch(4, 2)
    a = torch.rand(2)
    assert torch.get_num_threads() == 2
    setup_torch(4)
    assert torch.get_num_threads() == 2 and torch.equal(torch.rand(2), a)
    torch.set_num_threads(n)
    with autocast(torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_ema_averages_buffers_too():
    """BatchNorm running statistics of the EMA model follow the online ones (use_buffers=True)."""
    from components.training.common import ema_model

    model = torch.nn.BatchNorm1d(2)
    ema = ema_model(model, 0.9)
    model(torch.full((4, 2), 3.0) + torch.arange(4.0)[:, None])  # train-mode forward updates running_mean
    ema.update_parameters(model)
    torch.testing.assert_close(ema.module.running_mean, model.running_mean)
    assert float(ema.module.running_mean[0]) > 0.4
    # a second update averages the buffers with the warm-up decay min(0.9, 2/11), not merely copies them (which is what
    # AveragedModel does with use_buffers=False)
    first = model.running_mean.clone()
    model(torch.full((4, 2), -5.0) + torch.arange(4.0)[:, None])
    ema.update_parameters(model)
    decay = min(0.9, 2.0 / 11.0)
    torch.testing.assert_close(ema.module.running_mean, decay * first + (1 - decay) * model.running_mean)
    assert not torch.allclose(ema.module.running_mean, model.running_mean, atol=1e-3)


# ------------------------------------------------------------------------------------------------ training/diffusion.py
def _record_train_diffusion(monkeypatch, mean, logvar, seed=0, device=torch.device("cpu"), **over):
    import components.training.diffusion as diffusion_training
    from components.config import DiffusionParams

    seen = []

    def recorder(net, z0, y, betas, prediction_type, **kwargs):
        seen.append({"z0": z0.clone(), "y": y.clone(), "betas": betas, "net": net, **kwargs})
        return sum(p.sum() for p in net.parameters()) * 0.0

    monkeypatch.setattr(diffusion_training, "diffusion_loss", recorder)
    n = len(mean)
    cfg = DiffusionParams.model_validate({
        "unet": {"preset": "res-clsAtn-chnAtn", "channels": [8, 16], "num_heads": 2}, "batch_size": n, "max_images": n,
        "warmup_images": 0, "cond_dropout": 0.0, "num_timesteps": 50, **over,
    })
    labels = torch.zeros(n, dtype=torch.long)
    model, _ = diffusion_training.train_diffusion(mean, logvar, labels, 3, cfg, seed=seed, device=device, progress=False)
    return model, seen[0]


def test_train_diffusion_draws_latents_from_the_posterior_and_t_over_every_step(monkeypatch):
    """z0 = mean + exp(logvar / 2) n with n ~ N(0, I); t ~ U{0..T-1}; the betas of the configured schedule."""
    from components.diffusion import make_betas

    n = 2048
    mean = torch.full((n, 1, 2, 2), 3.0)
    logvar = torch.full_like(mean, math.log(4.0))  # std 2
    _, rec = _record_train_diffusion(monkeypatch, mean, logvar)
    z0 = rec["z0"]
    assert abs(z0.mean().item() - 3.0) < 0.05 and abs(z0.std().item() - 2.0) < 0.05
    assert rec["t"].min() == 0 and rec["t"].max() == 49 and rec["noise"].shape == (n, 1, 2, 2)
    assert abs(rec["noise"].std().item() - 1.0) < 0.05 and not torch.equal(rec["noise"], (z0 - 3.0) / 2)
    assert torch.equal(rec["betas"], make_betas("scaled_linear", 50, 0.00085, 0.012))  # the params defaults
    assert rec["learned_variance"] is False and rec["min_snr_gamma"] is None


@pytest.mark.parametrize("variance_type", ["fixed_small", "learned_range"])
def test_train_diffusion_output_channels_follow_the_variance_type(monkeypatch, variance_type):
    """A learned-range model predicts the target and the variance interpolation: 2C output channels (Nichol &
    Dhariwal 2021, sec. 3.1); a fixed-variance model C. The loss is told which."""
    mean, logvar = torch.zeros(4, 3, 2, 2), torch.full((4, 3, 2, 2), -4.0)
    model, rec = _record_train_diffusion(monkeypatch, mean, logvar, variance_type=variance_type)
    learned = variance_type == "learned_range"
    assert model.config.out_channels == (6 if learned else 3) and model.config.in_channels == 3
    assert rec["learned_variance"] is learned
    with torch.no_grad():
        out = model.eval()(torch.zeros(2, 3, 2, 2), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    assert out.shape == (2, 6 if learned else 3, 2, 2)


def test_train_diffusion_trains_on_the_device_it_is_given(monkeypatch):
    """Without a distributed context the given device is the training device (not a default CPU)."""
    import components.training.diffusion as diffusion_training

    made = []
    real = diffusion_training.DistContext

    def spy(**kwargs):
        made.append(kwargs["device"])
        return real(**kwargs)

    monkeypatch.setattr(diffusion_training, "DistContext", spy)
    mean, logvar = torch.zeros(4, 1, 2, 2), torch.full((4, 1, 2, 2), -4.0)
    _record_train_diffusion(monkeypatch, mean, logvar, device=torch.device("cpu", 0))
    assert made == [torch.device("cpu", 0)] and made[0] != torch.device("cpu")


def test_train_diffusion_initialises_the_model_from_the_seed(monkeypatch):
    mean, logvar = torch.zeros(8, 1, 2, 2), torch.full((8, 1, 2, 2), -4.0)
    a, _ = _record_train_diffusion(monkeypatch, mean, logvar, seed=3)
    torch.manual_seed(123)
    b, _ = _record_train_diffusion(monkeypatch, mean, logvar, seed=3)
    c, _ = _record_train_diffusion(monkeypatch, mean, logvar, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values(), strict=True))


def test_on_checkpoint_hook_sees_every_complete_checkpoint(tmp_path: Path):
    """checkpoint_every_images = one batch: a checkpoint after every step, each complete when the hook runs."""
    seen = []

    def hook(step: int, path: Path) -> None:
        assert (path / "state.json").is_file() and load_training_state(path)["step"] == step
        seen.append(step)

    Trainer(_model(), LoopConfig(batch_size=8, max_images=40, lr=1e-2, checkpoint_every_images=8), dataset_size=64, seed=1,
            ctx=DistContext(), checkpoint_dir=tmp_path, progress=False, on_checkpoint=hook).run(_mse)
    assert seen == [1, 2, 3, 4, 5] and _steps(tmp_path) == [4, 5]


# ------------------------------------------------------------------------------------------------ 2 ranks, the time budget
class _Rank0Of2(DistContext):
    """Rank 0 of a 2-process job without a process group: the collectives return this rank's own values."""

    def barrier(self) -> None:
        pass

    def broadcast_object(self, obj):
        return obj

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        return value


class _RecordingDDP(torch.nn.Module):
    """Stands in for DistributedDataParallel: ``syncing`` is False inside ``no_sync()`` (no gradient all-reduce)."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module, self.syncing = module, True

    def forward(self, *args):
        return self.module(*args)

    @contextlib.contextmanager
    def no_sync(self):
        self.syncing = False
        try:
            yield
        finally:
            self.syncing = True


def test_each_rank_splits_its_share_into_micro_batches_and_all_reduces_only_on_the_last(monkeypatch):
    """Global batch 12 on 2 ranks with grad_accum 3: rank 0 holds rows 0, 2, ..., 10 of the global batch, in
    three micro-batches of 2; DDP's gradient all-reduce is skipped (no_sync) for the first two and done on the
    last, which carries the accumulated gradient."""
    monkeypatch.setattr(loop_module, "DistributedDataParallel", _RecordingDDP)
    seen = []

    def loss_fn(net, batch):
        assert isinstance(net, _RecordingDDP)
        seen.append((batch.step, batch.rows.tolist(), net.syncing))
        return _mse(net, batch)

    trainer = Trainer(_model(), LoopConfig(batch_size=12, max_images=24, lr=1e-2, grad_accum=3), dataset_size=64, seed=1,
                      ctx=_Rank0Of2(world_size=2), progress=False)
    trainer.run(loss_fn)
    per_step = [([0, 2], False), ([4, 6], False), ([8, 10], True)]
    assert seen == [(s, rows, sync) for s in range(2) for rows, sync in per_step]


def test_the_time_budget_stops_after_the_step_that_exceeds_it(monkeypatch, tmp_path: Path):
    """max_time_minutes = 1 on a scripted clock: 30 s after step 1, exactly 60 s after step 2 (not over: the budget
    is exceeded, not reached), 60.5 s after step 3 (over): the run stops after step 3 of 10 with a checkpoint, and
    train_seconds is the clock's total, to 0.1 s."""
    ticks = [1000.0, 1030.0, 1060.0, 1060.5, 1061.26]  # t0, after steps 1, 2, 3, the end

    def clock() -> float:
        assert ticks, "the loop read the clock more often than one step at a time"
        return ticks.pop(0)

    monkeypatch.setattr(loop_module, "time", SimpleNamespace(perf_counter=clock))
    res = _trainer(tmp_path, batch_size=8, max_images=80, lr=1e-2, max_time_minutes=1.0).run(_mse)
    assert res.stopped_by_max_time and res.steps == 3 and res.images_seen == 24
    assert _steps(tmp_path) == [3] and not ticks
    assert res.train_seconds == 61.3


def test_on_log_reports_the_images_per_second_since_the_previous_point(monkeypatch):
    """The ``images_per_s`` of each point ``on_log`` receives is the images since the previous point (the run's start
    for the first) over the clock's seconds between them, on a scripted clock; points come every ``log_every`` steps
    and at step 1."""
    ticks = iter([100.0, 100.5, 104.5, 109.5, 110.0])  # t0, the points of steps 1, 3 and 5 (log_every 3), the end
    monkeypatch.setattr(loop_module, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    seen: list[dict] = []
    trainer = Trainer(_model(), LoopConfig(batch_size=8, max_images=40, lr=1e-2, log_every=3), dataset_size=64, seed=1,
                      ctx=DistContext(), progress=False, on_log=seen.append)
    res = trainer.run(_mse)
    assert [p["step"] for p in seen] == [1, 3, 5] == [h["step"] for h in res.history]
    # 8 images in 0.5 s, then 16 (steps 2-3) in 4 s, then 16 (steps 4-5) in 5 s
    assert [p["images_per_s"] for p in seen] == [16.0, 4.0, 3.2]
    assert all(p["lr"] == h["lr"] and p["loss"] == h["loss"] for p, h in zip(seen, res.history, strict=True))
    assert res.train_seconds == 10.0


def test_a_trainer_reads_images_in_its_own_process_by_default(monkeypatch):
    """LoopConfig's default data_workers is 0: a Trainer given images (a library call, no params file) reads them
    through a DataLoader in its own process, starting no worker processes, and each step gets its own batch's images."""
    import components.data.loader as loader_module

    seen_workers, fetched = [], []
    real = loader_module.make_loader

    def recording(images, batch_sampler, *, workers=0, **kwargs):
        seen_workers.append(workers)
        return real(images, batch_sampler, workers=workers, **kwargs)

    monkeypatch.setattr(loader_module, "make_loader", recording)
    images = (torch.arange(64, dtype=torch.uint8)[:, None, None, None].expand(64, 2, 2, 1)).numpy().copy()
    trainer = Trainer(_model(), LoopConfig(batch_size=8, max_images=24, lr=1e-2), dataset_size=64, seed=1, ctx=DistContext(),
                      progress=False, images=images)

    def loss_fn(net, batch):
        fetched.append((batch.indices.tolist(), batch.images[:, 0, 0, 0].tolist()))
        return _mse(net, batch)

    trainer.run(loss_fn)
    assert seen_workers == [0]
    assert len(fetched) == 3 and all(idx == vals for idx, vals in fetched)
