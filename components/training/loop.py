"""The one training loop behind both training stages: single process or DDP under torchrun,
gradient accumulation and clipping, LR warmup + cosine, EMA, bf16 autocast on CUDA, ``channels_last``,
optional ``torch.compile``, a wall-clock budget, and exact resume from atomic checkpoints.

Exactness is by construction: the samples of step ``s`` are a pure function of ``(seed, s)``
(a :class:`~torch.utils.data.DistributedSampler` permutation per epoch), and so are its random
draws: a step's loss function draws its noise for the *global* batch from a generator seeded with
:func:`step_seed` and keeps the rows it owns. So a run with N processes sees the same images and
noise per step as a run with one process at the same global batch (up to float reduction order),
and a resumed run repeats exactly the steps an uninterrupted run would have taken.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from components.training.common import NonFiniteLossError, autocast, ema_model, warmup_lr
from components.training.distributed import DistContext
from components.training.state import latest_training_state, load_training_state, restore_rng_states, rng_states, save_training_state

log = logging.getLogger(__name__)


def step_seed(seed: int, step: int) -> int:
    """A well-mixed 63-bit seed for the random draws of ``step`` (NumPy's SeedSequence hash of ``(seed, step)``)."""
    a, b = np.random.SeedSequence([seed, step]).generate_state(2)
    return (int(a) << 31) ^ int(b)


def augment_seed(seed: int, step: int) -> int:
    """The seed of ``step``'s augmentation draws, apart from :func:`step_seed`'s (adding augmentation changes no other draw)."""
    a, b = np.random.SeedSequence([seed, step, 1]).generate_state(2)
    return (int(a) << 31) ^ int(b)


@dataclass(frozen=True)
class Batch:
    """One micro-batch of one rank.

    ``indices`` are dataset indices; ``rows`` their positions in the step's global batch of
    ``global_size`` samples, which every rank orders identically; ``seed`` seeds the step's draws.
    """

    indices: torch.Tensor
    rows: torch.Tensor
    global_size: int
    seed: int
    step: int
    images: torch.Tensor | None = None  # uint8 [B, H, W, C] of ``indices`` (augmented), when the Trainer reads images

    def generator(self, device: torch.device) -> torch.Generator:
        """A fresh generator for this step's draws (the same on every rank and every micro-batch)."""
        return torch.Generator(device=device).manual_seed(self.seed)

    def draw(self, fn: Callable[..., torch.Tensor], shape: tuple[int, ...], generator: torch.Generator, **kwargs) -> torch.Tensor:
        """Draw ``fn((global_size, *shape))`` and keep this micro-batch's rows: the draw of a sample does
        not depend on how the global batch is split over ranks and micro-batches."""
        return fn(size=(self.global_size, *shape), generator=generator, **kwargs)[self.rows.to(kwargs.get("device", "cpu"))]


@dataclass
class LoopConfig:
    """What the loop needs from a training section of params.yaml (and its ``runtime`` block)."""

    batch_size: int
    max_images: int
    lr: float
    warmup_images: int = 0
    lr_schedule: str = "cosine"
    grad_clip: float = 1.0
    ema_decay: float | None = None
    grad_accum: int = 1
    checkpoint_every_images: int = 0
    keep_checkpoints: int = 2
    resume: bool = True
    max_time_minutes: float | None = None
    compile: bool = False
    channels_last: bool = False
    fused_optimizer: bool = True
    log_every: int = 25
    data_workers: int = 0

    @classmethod
    def from_section(cls, section, **overrides) -> LoopConfig:
        rt = section.runtime
        kwargs = dict(
            batch_size=section.batch_size, max_images=section.max_images, lr=section.lr, warmup_images=section.warmup_images,
            lr_schedule=section.lr_schedule, grad_clip=section.grad_clip, ema_decay=getattr(section, "ema_decay", None),
            grad_accum=rt.grad_accum, checkpoint_every_images=rt.checkpoint_every_images, keep_checkpoints=rt.keep_checkpoints,
            resume=rt.resume, max_time_minutes=rt.max_time_minutes, compile=rt.compile, channels_last=rt.channels_last,
            fused_optimizer=rt.fused_optimizer, log_every=getattr(section, "log_every", 25), data_workers=rt.data_workers,
        )
        kwargs.update(overrides)
        return cls(**kwargs)


@dataclass
class LoopResult:
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    images_seen: int = 0
    resumed_from_step: int | None = None
    stopped_by_max_time: bool = False
    train_seconds: float = 0.0


LossFn = Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, dict[str, float]]]
AfterStepFn = Callable[[int], dict[str, float] | None]
CheckpointFn = Callable[[int, Path], None]
LogFn = Callable[[dict[str, float]], None]


class Trainer:
    """Owns the model, its EMA and optimizer, and runs ``loss_fn`` over the image budget.

    ``extra_state`` holds other stateful objects to checkpoint (anything with ``state_dict`` /
    ``load_state_dict``, e.g. a discriminator and its optimizer).

    ``on_checkpoint(step, path)``, when given, runs on rank 0 right after the checkpoint of ``step`` is
    completely written (renamed into place, older ones rotated out) and before the next step starts: a
    hook for progress reporting, and for tests that interrupt a run at an exact checkpoint.

    ``on_log(entry)``, when given, runs on rank 0 each time a point joins the loss history (every ``log_every``
    steps): ``entry`` is a copy of that point (``step``, ``images``, ``loss``, ``lr`` and the loss function's logs)
    plus ``images_per_s`` since the previous point. It receives plain floats only, after the optimizer step,
    so what it does (e.g. log to MLflow) cannot change the weights or the random draws.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: LoopConfig,
        *,
        dataset_size: int,
        seed: int,
        ctx: DistContext,
        checkpoint_dir: str | Path | None = None,
        fingerprint: str = "",
        desc: str = "train",
        progress: bool = True,
        on_checkpoint: CheckpointFn | None = None,
        on_log: LogFn | None = None,
        images=None,
        augment: dict | None = None,
    ):
        world = ctx.world_size
        if cfg.batch_size % (world * cfg.grad_accum):
            raise ValueError(
                f"batch_size {cfg.batch_size} must be divisible by num_processes x grad_accum = {world} x {cfg.grad_accum}"
            )
        if dataset_size < cfg.batch_size:
            raise ValueError(f"batch_size {cfg.batch_size} is larger than the training set ({dataset_size} images)")
        self.cfg, self.ctx, self.seed, self.desc, self.progress = cfg, ctx, seed, desc, progress
        self.dataset_size, self.fingerprint, self.on_checkpoint, self.on_log = dataset_size, fingerprint, on_checkpoint, on_log
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.device = ctx.device
        self.model = model.to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = ema_model(self.model, cfg.ema_decay) if cfg.ema_decay else None
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=0.0, **self._optimizer_kwargs())
        self.extra_state: dict[str, Any] = {}
        self.steps_per_epoch = dataset_size // cfg.batch_size
        self.total_steps = math.ceil(cfg.max_images / cfg.batch_size)
        self.warmup_steps = math.ceil(cfg.warmup_images / cfg.batch_size)
        self._epoch_cache: dict = {}
        # images: uint8 [N, H, W, C] (an array or ShardedImages) read per step through a DataLoader into Batch.images
        if images is not None and len(images) != dataset_size:
            raise ValueError(f"{len(images)} images for a dataset of {dataset_size}")
        self.images, self.augment = images, dict(augment or {})

    def _optimizer_kwargs(self) -> dict:
        """AdamW's implementation. On the CPU the multi-tensor (foreach) one: the numbers of torch's default there (a
        Python loop over the parameters) to the bit, at 1.5-1.7x its speed (``benchmarks/eval_speed.py``,
        ``training_optimizer``). torch's fused CPU kernel is faster still but rounds differently, so a run would no longer
        repeat the runs before it; it stays CUDA's (``runtime.fused_optimizer``)."""
        if self.device.type != "cuda":
            return {"foreach": True}
        if not self.cfg.fused_optimizer:
            return {}
        try:  # probe once on a dummy
            torch.optim.AdamW([torch.zeros(1, device=self.device, requires_grad=True)], fused=True)
            return {"fused": True}
        except (RuntimeError, TypeError):
            return {}

    # --------------------------------------------------------------------------------- data
    def local_indices(self, step: int, cache: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Dataset indices of this rank for global step ``step``, and their rows in the global batch.

        Rank r's k-th batch of the epoch's DistributedSampler slice ``perm[r::N]`` holds exactly the
        samples of the global batch ``perm[kB:(k+1)B]`` at positions r, r+N, ... ``cache`` keeps the
        current epoch's permutation (the DataLoader's sampler, running ahead, keeps its own)."""
        cache = self._epoch_cache if cache is None else cache
        epoch, k = divmod(step, self.steps_per_epoch)
        if cache.get("epoch") != epoch:
            sampler = DistributedSampler(
                range(self.dataset_size), num_replicas=self.ctx.world_size, rank=self.ctx.rank, shuffle=True, seed=self.seed, drop_last=True
            )
            sampler.set_epoch(epoch)
            cache.update(epoch=epoch, perm=torch.tensor(list(sampler), dtype=torch.long))
        local = self.cfg.batch_size // self.ctx.world_size
        idx = cache["perm"][k * local : (k + 1) * local]
        rows = self.ctx.rank + self.ctx.world_size * torch.arange(local)
        return idx, rows

    def _image_batches(self, start: int):
        """uint8 images of steps ``start, start + 1, ...`` (this rank's share), read ahead by a DataLoader whose batch
        order is :meth:`local_indices`: a resumed run starts reading at its step and replays nothing."""
        from components.data.loader import make_loader

        trainer = self

        class StepSampler:
            def __init__(self) -> None:
                self.cache: dict = {}

            def __len__(self) -> int:
                return trainer.total_steps - start

            def __iter__(self):
                for step in range(start, trainer.total_steps):
                    yield trainer.local_indices(step, self.cache)[0].tolist()

        loader = make_loader(self.images, StepSampler(), workers=self.cfg.data_workers, pin_memory=self.device.type == "cuda",
                             seed=self.seed)
        return iter(loader)

    def _augmented(self, images: torch.Tensor, rows: torch.Tensor, step: int) -> torch.Tensor:
        if not any(self.augment.values()):
            return images
        from components.data.loader import augment

        g = torch.Generator().manual_seed(augment_seed(self.seed, step))
        return augment(images, rows, self.cfg.batch_size, g, **self.augment)

    # --------------------------------------------------------------------------- checkpoints
    def state_dict(self, step: int, history: list[dict]) -> dict:
        epoch, k = divmod(step, self.steps_per_epoch)
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "extra": {name: obj.state_dict() for name, obj in self.extra_state.items()},
            "rng": rng_states({}),
            "step": step,
            "images_seen": step * self.cfg.batch_size,
            "sampler": {"seed": self.seed, "epoch": epoch, "batches_done_in_epoch": k},
            "fingerprint": self.fingerprint,
            "world_size": self.ctx.world_size,
            "history": history,
        }

    def _save(self, step: int, history: list[dict]) -> None:
        if self.checkpoint_dir is not None and self.ctx.is_main:
            path = save_training_state(self.checkpoint_dir, step, self.state_dict(step, history), self.cfg.keep_checkpoints)
            if self.on_checkpoint is not None:
                self.on_checkpoint(step, path)
        self.ctx.barrier()

    def _try_resume(self) -> tuple[int, list[dict]] | None:
        if self.checkpoint_dir is None or not self.cfg.resume:
            return None
        latest = latest_training_state(self.checkpoint_dir)
        if latest is None:
            return None
        state = load_training_state(latest)
        if state.get("fingerprint") != self.fingerprint:
            if self.ctx.is_main:
                log.warning("%s: ignoring checkpoints in %s: they belong to other params, data or code", self.desc, self.checkpoint_dir)
                shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
            self.ctx.barrier()
            return None
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        for name, obj in self.extra_state.items():
            obj.load_state_dict(state["extra"][name])
        restore_rng_states(state["rng"], {})
        log.info("%s: resumed from %s (step %d, %d images seen)", self.desc, latest, state["step"], state["images_seen"])
        return int(state["step"]), list(state["history"])

    # ---------------------------------------------------------------------------------- loop
    def run(self, loss_fn: LossFn, after_step: AfterStepFn | None = None) -> LoopResult:
        """Train until ``max_images`` images are seen (or ``max_time_minutes`` runs out).

        ``after_step(step)`` runs after each optimizer step (e.g. a discriminator update on what the loss
        function kept); what it returns joins the step's logs."""
        cfg, ctx = self.cfg, self.ctx
        resumed = self._try_resume()
        start, history = resumed if resumed else (0, [])
        result = LoopResult(history=history, resumed_from_step=start if resumed else None)
        net: torch.nn.Module = DistributedDataParallel(self.model) if ctx.distributed else self.model
        if cfg.compile:
            net = torch.compile(net)
        micro = cfg.batch_size // ctx.world_size // cfg.grad_accum
        every = max(1, math.ceil(cfg.checkpoint_every_images / cfg.batch_size)) if cfg.checkpoint_every_images else 0
        bar = tqdm(total=self.total_steps * cfg.batch_size, initial=start * cfg.batch_size, unit="img", desc=self.desc,
                   disable=not (self.progress and ctx.is_main), mininterval=2.0)
        t0, running, running_n, logs = time.perf_counter(), 0.0, 0, {}
        t_point, step_point = t0, start  # throughput since the last history point
        self.model.train()
        step = start
        batches = self._image_batches(start) if self.images is not None else None
        while step < self.total_steps:
            for group in self.optimizer.param_groups:
                group["lr"] = warmup_lr(step, cfg.lr, self.warmup_steps, self.total_steps if cfg.lr_schedule == "cosine" else None)
            idx, rows = self.local_indices(step)
            seed = step_seed(self.seed, step)
            images = self._augmented(next(batches), rows, step) if batches is not None else None
            self.optimizer.zero_grad(set_to_none=True)
            step_loss = torch.zeros((), device=self.device)
            for m in range(cfg.grad_accum):
                part = slice(m * micro, (m + 1) * micro)
                batch = Batch(idx[part], rows[part], cfg.batch_size, seed, step, images[part] if images is not None else None)
                sync = m == cfg.grad_accum - 1 or not ctx.distributed
                with (contextlib.nullcontext() if sync else net.no_sync()), autocast(self.device):
                    loss, logs = loss_fn(net, batch)
                (loss / cfg.grad_accum).backward()
                step_loss += loss.detach().float() / cfg.grad_accum
            mean_loss = ctx.all_reduce_mean(step_loss)
            if not torch.isfinite(mean_loss):
                raise NonFiniteLossError(
                    f"{self.desc}: loss became {mean_loss.item()} at step {step}; lower the learning rate or check the data. "
                    f"The last good checkpoint (if any) in {self.checkpoint_dir} is left intact."
                )
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            if after_step is not None:
                logs = {**logs, **(after_step(step) or {})}
            step += 1
            running += mean_loss.item()
            running_n += 1
            bar.update(cfg.batch_size)
            if step % cfg.log_every == 0 or step in (1, self.total_steps):
                history.append({"step": step, "images": step * cfg.batch_size, "loss": running / running_n,
                                "lr": float(self.optimizer.param_groups[0]["lr"]), **{k: float(v) for k, v in logs.items()}})
                bar.set_postfix(loss=f"{running / running_n:.4f}")
                running, running_n = 0.0, 0
                if self.on_log is not None and ctx.is_main:
                    now = time.perf_counter()
                    rate = (step - step_point) * cfg.batch_size / max(now - t_point, 1e-9)
                    t_point, step_point = now, step
                    self.on_log({**history[-1], "images_per_s": rate})
            out_of_time = cfg.max_time_minutes is not None and (time.perf_counter() - t0) > 60 * cfg.max_time_minutes
            out_of_time = bool(ctx.broadcast_object(out_of_time)) if cfg.max_time_minutes is not None else False
            if (every and step % every == 0) or out_of_time or step == self.total_steps:
                self._save(step, history)
            if out_of_time:
                if ctx.is_main:
                    log.warning("%s: --max-time budget of %.1f min reached at step %d of %d; the checkpoint is saved, "
                                "rerun the stage to continue", self.desc, cfg.max_time_minutes, step, self.total_steps)
                result.stopped_by_max_time = True
                break
        bar.close()
        del batches  # stops the DataLoader's workers
        result.steps, result.images_seen = step, step * cfg.batch_size
        result.train_seconds = round(time.perf_counter() - t0, 1)
        self.model.eval()
        return result

    def final_model(self) -> torch.nn.Module:
        """The EMA model when EMA is on, else the trained model (unwrapped, eval mode, contiguous format)."""
        model = self.ema.module if self.ema is not None else self.model
        return model.to(memory_format=torch.contiguous_format).eval()
