"""Mutation testing of the core: ``components/diffusion/`` and ``components/training/``.

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python -m benchmarks.mutation --label after

mutmut 3.8.1 was tried first: it mutates a whole ``source_paths`` tree (all 45 files of ``components/``, 7,911
mutants, two minutes just to generate them) and selects tests only from in-process coverage, so the training
loop's subprocess tests (SIGKILL resume, two gloo ranks) could not be targeted. Hence this small tool:

* the working tree (tracked and untracked, not ignored, files) is copied to a temporary folder; only that copy
  is ever mutated, one mutant at a time, and the tests import the copy (``PYTHONPATH``; checked);
* standard operators (on the AST, written back as text so everything else in the file stays as it is):
  arithmetic operator swap (``+ -``, ``* /``, ``** -> *``, ...), comparison swap (``< <=``, ``== !=``, ``is``,
  ``in``), ``and <-> or``, number constant ``+1``/``-1``/``0`` and ``True <-> False``, sign flip (drop unary
  ``-``/``not``), statement removal (calls, augmented and item/attribute assignments, ``break``/``continue``),
  swap of adjacent positional call arguments, ``min <-> max`` (builtins and keyword names). Strings, docstrings,
  annotations, ``raise`` statements, f-strings and ``log.*`` calls are not mutated (messages, not behaviour);
* a baseline run of the selected tests records which test executes which line, in process (``sys.settrace``)
  and in the tests' subprocesses (``sitecustomize`` on ``PYTHONPATH``, only during the baseline); each mutant then
  runs, in a forked child of a process that has imported torch once, only the tests that execute its lines,
  fastest first, stopping at the first failure (``pytest -x``), with a timeout of 3x their baseline time + 20 s.
  A mutant of module-level code (a constant read at import, which no test's trace sees) that no traced line ties to
  a test runs every selected test. A mutant on a line no test executes is ``no_coverage`` (a survivor);
* survivors judged equivalent or irrelevant are listed in :data:`EQUIVALENT` (keyed by file, source line and
  mutation, not line number) with the reason; the score is given raw (killed / all) and net of them.

Results go to ``reports/mutation.json`` under ``runs[<label>]`` (other labels are kept). ``--files`` restricts the
files, ``--list`` only prints the mutants.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# priority order (the diffusion math first, then the loop and its state)
FILES = [
    "components/diffusion/samplers.py",
    "components/diffusion/forward.py",
    "components/diffusion/schedules.py",
    "components/training/loop.py",
    "components/training/state.py",
    "components/training/diffusion.py",
    "components/training/common.py",
    "components/training/autoencoder.py",
    "components/training/distributed.py",
    "components/diffusion/options.py",
    "components/diffusion/__init__.py",
    "components/diffusion/editing.py",
]
# the fast unit tests of these modules (never the e2e/server/stage-resume/RGB-pipeline suites)
TESTS = [
    "tests/test_diffusion.py",
    "tests/test_diffusers_oracle.py",
    "tests/test_losses.py",
    "tests/test_guidance_conditioning.py",
    "tests/test_ema_and_latent_scale.py",
    "tests/test_training.py",
    "tests/test_training_loop.py",
    "tests/test_models.py",
    "tests/test_mutants_diffusion.py",
    "tests/test_mutants_training.py",
    "tests/test_editing.py",
    "tests/test_mutants_editing.py",
]

# Survivors that no test should kill, with the reason. Key: "file | stripped source line | mutation".
_S, _F, _SC = "components/diffusion/samplers.py", "components/diffusion/forward.py", "components/diffusion/schedules.py"
_L, _ST, _TD, _C = "components/training/loop.py", "components/training/state.py", "components/training/diffusion.py", "components/training/common.py"
_D = "components/training/distributed.py"
_A = "components/training/autoencoder.py"
_E = "components/diffusion/editing.py"
_A_SEED = _A + " | fit_autoencoder.loss_fn | g = torch.Generator(device=device).manual_seed(batch.seed + ctx.rank * 7919 + int(batch.rows[0]))"
_D_ENV = (_D + ' | launch_torchrun | env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", '
          'str(max(1, (os.cpu_count() or 1) // nproc)))}')
_CUDA = "CUDA only: the fused-AdamW probe never runs on the CPU (a test checks the CPU optimizer is not fused)"
_BARRIER = ("DDP synchronisation only: a no-op in one process, and a missing barrier is a race the 2-rank test cannot observe "
            "deterministically")
_FLOOR = ("a higher threshold for the 2**-24 floor (2**-23, 1, 2**24, or <=) changes nothing: clamp(min=2**-24) leaves values >= 2**-24 "
          "alone, so only whether entries below 2**-24 are raised matters (a lower threshold is killed)")
_DIM = "cumprod over dim -1 of a 1-D tensor is the cumprod over dim 0"
_SEED = ("which hash of SeedSequence's state becomes the step seed is arbitrary: any deterministic (seed, step) -> seed that differs "
         "between steps keeps runs reproducible, resumable and split-invariant, which is what the tests check")
EQUIVALENT: dict[str, str] = {
    f"{_S} | ddpm | eta: float = 1.0, | 1.0 -> 0.0": "ddpm's eta is unused (kept for the shared sampler signature; documented)",
    f"{_S} | ddpm | eta: float = 1.0, | 1.0 -> 2.0": "ddpm's eta is unused (kept for the shared sampler signature; documented)",
    f"{_S} | dpmpp_2m | eta: float = 0.0, | 0.0 -> -1.0": "dpmpp_2m's eta is unused (deterministic solver; documented)",
    f"{_S} | dpmpp_2m | eta: float = 0.0, | 0.0 -> 1.0": "dpmpp_2m's eta is unused (deterministic solver; documented)",
    f"{_S} | ddpm | var = ((1 - a_prev) / (1 - a_t) * beta_t).clamp(min=1e-20) | 1e-20 -> -1.0":
        "defensive: for t > 0 the posterior variance is > 0 for every schedule params allow (beta_start > 0), so the clamp never acts",
    f"{_S} | ddpm | var = ((1 - a_prev) / (1 - a_t) * beta_t).clamp(min=1e-20) | 1e-20 -> 0.0":
        "defensive: for t > 0 the posterior variance is > 0 for every schedule params allow (beta_start > 0), so the clamp never acts",
    f"{_F} | q_posterior | ac = torch.cumprod(1 - b, 0) | 0 -> -1": _DIM,
    f"{_F} | learned_range_log_variance | ac = torch.cumprod(1 - b, 0) | 0 -> -1": _DIM,
    f"{_F} | vlb_terms | ac = torch.cumprod(1 - betas.double().to(x0.device), 0) | 0 -> -1": _DIM,
    f"{_F} | diffusion_loss | T = ac.shape[0] | 0 -> -1": "ac is 1-D: shape[-1] is shape[0]",
    f"{_F} | simple_loss | T = alphas_cumprod.shape[0] | 0 -> -1": "alphas_cumprod is 1-D: shape[-1] is shape[0]",
    f"{_F} | simple_loss | return F.mse_loss(pred.float(), target_for(prediction_type, x0, noise, t, alphas_cumprod).float()) | "
    "swap arguments 1 and 2 @11": "the mean squared error is symmetric in its two arguments",
    f"{_SC} | rescale_zero_terminal_snr | sq = torch.cumprod(1 - betas.double(), dim=0).sqrt() | 0 -> -1": _DIM,
    f"{_SC} | _named_betas | min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), 0.999) | "
    "swap arguments 1 and 2": "min is symmetric",
    **{f"{_SC} | alphas_cumprod | return ac.clamp(min=2.0**-24) if ac[-1] < 2.0**-24 else ac | {d}": _FLOOR
       for d in ("< -> <= @37", "2.0 -> 1.0 @46", "drop - @51", "24 -> 0 @52", "24 -> 23 @52")},
    f"{_SC} | alphas_cumprod | ac = torch.cumprod(1.0 - betas.double(), dim=0) | 0 -> -1": _DIM,
    f"{_SC} | sampling_timesteps | ts = [int(round(T - i * ratio)) - 1 for i in range(N)][::-1] | drop -": "the list is sorted on return",
    f"{_SC} | sampling_timesteps | ts = torch.linspace(0, T - 1, N, dtype=torch.float64).round().long().tolist() | swap arguments 1 and 2":
        "the reversed grid holds the same (symmetric) points and the list is sorted on return",
    **{f"{_L} | step_seed | return (int(a) << 31) ^ int(b) | {d}": _SEED for d in ("^ -> |", "<< -> >>", "31 -> 0", "31 -> 30", "31 -> 32")},
    f"{_L} |  | @dataclass(frozen=True) | True -> False": "nothing assigns to a Batch; frozen only guards against a loss function doing so",
    f"{_L} | LoopConfig | warmup_images: int = 0 | 0 -> -1": "ceil(-1 / batch_size) = 0 warmup steps for any batch_size >= 2",
    f"{_L} | LoopConfig | fused_optimizer: bool = True | True -> False": "CUDA only: the fused AdamW is never used on the CPU (tested)",
    **{f"{_L} | LoopResult | {line} | {d}": "run() always sets it before returning the result"
       for line, ds in (("steps: int = 0", ("0 -> -1", "0 -> 1")), ("images_seen: int = 0", ("0 -> -1", "0 -> 1")),
                        ("train_seconds: float = 0.0", ("0.0 -> -1.0", "0.0 -> 1.0"))) for d in ds},
    f"{_L} | Trainer.__init__ | progress: bool = True, | True -> False": "display only: the progress bar",
    f"{_L} | Trainer._optimizer_kwargs | if not self.cfg.fused_optimizer: | drop not": _CUDA,
    **{f"{_L} | Trainer._optimizer_kwargs | torch.optim.AdamW([torch.zeros(1, device=self.device, requires_grad=True)], fused=True) | {d}": _CUDA
       for d in ("remove statement", "1 -> 0", "1 -> 2", "True -> False")},
    f"{_L} | Trainer._optimizer_kwargs | return {{\"fused\": True}} | True -> False": _CUDA,
    f"{_L} | Trainer.local_indices | range(self.dataset_size), num_replicas=self.ctx.world_size, rank=self.ctx.rank, shuffle=True, "
    "seed=self.seed, drop_last=True | True -> False @136": "drop_last (the second True): padding only appends to the end of a rank's slice, and the "
    "loop uses the first dataset_size // batch_size batches, which padding never reaches",
    f"{_L} | Trainer._save | self.ctx.barrier() | remove statement": _BARRIER,
    f"{_L} | Trainer._try_resume | self.ctx.barrier() | remove statement": _BARRIER,
    f"{_L} | Trainer._try_resume | shutil.rmtree(self.checkpoint_dir, ignore_errors=True) | True -> False":
        "the folder exists (a checkpoint was just read from it), so rmtree raises nothing either way",
    f"{_L} | Trainer.run | every = max(1, math.ceil(cfg.checkpoint_every_images / cfg.batch_size)) if cfg.checkpoint_every_images else 0 | "
    "swap arguments 1 and 2": "max is symmetric",
    f"{_L} | Trainer.run | every = max(1, math.ceil(cfg.checkpoint_every_images / cfg.batch_size)) if cfg.checkpoint_every_images else 0 | "
    "1 -> 0": "ceil(images / batch) >= 1 for any positive checkpoint_every_images (0 takes the else branch), so the max never acts",
    f"{_L} | Trainer.run | seed = step_seed(self.seed, step) | swap arguments 1 and 2": _SEED,
    f"{_L} | Trainer.run | self.optimizer.zero_grad(set_to_none=True) | True -> False":
        "zeroed instead of freed gradients: the same update for every parameter that is in the graph at each step (all of the "
        "project's models: tests/test_models.py checks the U-Net's backward reaches every parameter); memory only",
    # components/training/state.py
    f"{_ST} | rng_states | if torch.cuda.is_available() and torch.cuda.is_initialized(): | and -> or": "CUDA only: both are False on a CPU-only machine",
    f"{_ST} | rng_states | states[f\"torch_cuda_{{i}}\"] = s | remove statement": "CUDA only: the loop body never runs without CUDA",
    f"{_ST} | restore_rng_states | if cuda and torch.cuda.is_available(): | and -> or": "CUDA only: no torch_cuda_* state is written without CUDA",
    f"{_ST} | restore_rng_states | torch.cuda.set_rng_state_all([states[k] for k in cuda]) | remove statement": "CUDA only",
    **{f"{_ST} | save_training_state | (tmp / \"state.json\").write_text(json.dumps(skeleton, indent=1) + \"\\n\") | {d}":
       "formatting only: the indentation of state.json (read back by json.loads whatever it is)" for d in ("1 -> 0", "1 -> 2")},
    f"{_ST} | save_training_state | shutil.rmtree(old, ignore_errors=True) | True -> False":
        "the folders were just listed as complete checkpoints; rmtree raises only if another process removes them meanwhile",
    f"{_ST} | join_tensors | return {{k: join_tensors(v, tensors) for k, v in obj.items()}} | swap arguments 1 and 2":
        "unreachable for files save_training_state writes: split_tensors stores every dict as {'__dict__': pairs}, so a plain "
        "dict never reaches this branch (kept for hand-written skeletons)",
    f'{_L} | Trainer.run | "lr": float(self.optimizer.param_groups[0]["lr"]), **{{k: float(v) for k, v in logs.items()}}}}) | 0 -> -1':
        "the optimizer has one parameter group, so [-1] is [0]",
    f"{_L} | Trainer.run | rate = (step - step_point) * cfg.batch_size / max(now - t_point, 1e-9) | swap arguments 1 and 2":
        "max is symmetric",
    f"{_L} | Trainer.run | rate = (step - step_point) * cfg.batch_size / max(now - t_point, 1e-9) | 1e-09 -> -0.999999999":
        "the floor only guards two history points on one clock reading; max(dt, -1) and max(dt, 1e-9) agree for every dt > 0",
    f"{_L} | Trainer.run | rate = (step - step_point) * cfg.batch_size / max(now - t_point, 1e-9) | 1e-09 -> 0.0":
        "the floor only guards two history points on one clock reading; max(dt, 0) and max(dt, 1e-9) agree for every dt >= 1e-9",
    f"{_L} | augment_seed | a, b = np.random.SeedSequence([seed, step, 1]).generate_state(2) | 1 -> 0":
        "the tag only keeps the augmentation stream apart from step_seed's; the flips and crops draw from their own "
        "generator, so any tag leaves every other draw, determinism and exact resume as they are",
    f"{_L} | augment_seed | a, b = np.random.SeedSequence([seed, step, 1]).generate_state(2) | 1 -> 2":
        "the tag only keeps the augmentation stream apart from step_seed's; any tag gives an equally valid stream",
    f"{_L} | Trainer._image_batches.StepSampler.__len__ | return trainer.total_steps - start | - -> +":
        "the batch sampler's length is never read: the Trainer iterates the loader, it never takes len() of it",
    f'{_L} | Trainer._image_batches | loader = make_loader(self.images, StepSampler(), workers=self.cfg.data_workers, '
    f'pin_memory=self.device.type == "cuda", | == -> !=': "CUDA only: pinned memory is a CUDA host-to-device optimisation; "
        "on a machine without CUDA the DataLoader does not pin, so the batches are the same",
    f"{_L} | Trainer._augmented | g = torch.Generator().manual_seed(augment_seed(self.seed, step)) | swap arguments 1 and 2":
        "augment_seed(step, seed) is as valid a seed: the augmentation stays a pure function of (seed, step), "
        "so determinism and exact resume hold (tests/test_dataset_stream.py, the SIGKILL resume with augmentation)",
    # components/training/diffusion.py
    f"{_TD} | train_diffusion | progress: bool = True, | True -> False": "display only: the progress bar",
    f"{_TD} | train_diffusion.loss_fn | drop = batch.draw(torch.rand, (), g, device=device) < cfg.cond_dropout | < -> <=":
        "differs only when a U[0, 1) draw equals cond_dropout exactly (probability 0 for a float32 draw)",
    f"{_TD} | train_diffusion.loss_fn | z0 = mean + s * z_noise | + -> -":
        "z_noise is a standard normal draw used only here: mean - s n has the same distribution as mean + s n",
    f"{_TD} | train_diffusion.loss_fn | y = torch.where(drop, torch.full_like(y, -1), y) | 1 -> 2":
        "-2 is also a negative label, which the U-Net maps to the null class as it does -1 (tests/test_models.py)",
    f"{_TD} | train_diffusion.loss_fn | pick = torch.clamp((u.cpu() * caption_counts[idx]).long(), max=caption_ids.shape[1] - 1) | - -> +":
        "u is a U[0, 1) draw, so u * count < count <= K and pick <= K - 1 already; the clamp only guards a draw of exactly "
        "1.0, which torch.rand never returns (max K + 1 clamps nothing either)",
    f"{_TD} | train_diffusion.loss_fn | pick = torch.clamp((u.cpu() * caption_counts[idx]).long(), max=caption_ids.shape[1] - 1) | 1 -> 0 @98":
        "max K instead of K - 1: pick <= count - 1 <= K - 1 for every U[0, 1) draw, so the clamp never binds",
    f"{_TD} | train_diffusion.loss_fn | y = torch.where(drop[:, None], torch.full_like(y, -1), y) | 1 -> 2":
        "a row of -2 is also all negative, which the U-Net maps to the empty caption as it does -1 (test_text_conditioning)",
    f"{_TD} | tokenize_captions | ids = torch.tensor([[tok.encode(caps[j] if j < len(caps) else caps[0]) for j in range(k)] "
    "for caps in captions], dtype=torch.long) | 0 -> -1":
        "fills the unused caption slots (j >= the image's count), which the pick never reads (pick < caption_counts)",
    # components/training/common.py
    f"{_C} | warmup_lr | progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)) | swap arguments 1 and 2":
        "min and max are symmetric",
    f"{_C} | warmup_lr | progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)) | 1 -> 0":
        "total_steps > warmup_steps here (the branch above returns otherwise), so the max(1, .) never acts",
    f"{_C} | ema_model.avg_fn | decay = min(target_decay, (1.0 + float(n)) / (10.0 + float(n))) | swap arguments 1 and 2": "min is symmetric",
    # components/training/distributed.py
    f"{_D} | DistContext.broadcast_object | return box[0] | 0 -> -1": "the box holds one object: box[-1] is box[0]",
    f"{_D_ENV} | swap arguments 1 and 2": "max is symmetric (the get() swap is killed)",
    f"{_D_ENV} | 1 -> 0":
        "`cpu_count() or 0`: an unknown core count gives 0 // nproc = 0, floored to 1 by max(1, .) as 1 // nproc is (max(0, .) is killed)",
    # components/training/autoencoder.py
    f"{_A} | fit_autoencoder | progress: bool = True, | True -> False": "display only: the progress bar",
    **{f"{_A_SEED} | {d}": "any seed that still differs between steps (batch.seed), micro-batches (their first row) and ranks "
       "(their rows differ too, so the rank term is a second guard) gives an equally valid posterior draw; these keep them "
       "distinct" for d in ("+ -> -", "7919 -> 0", "7919 -> 7918", "7919 -> 7920", "0 -> -1", "0 -> 1")},
    f"{_A} | fit_autoencoder.loss_fn | mse = F.mse_loss(recon.float(), x) | swap arguments 1 and 2": "MSE is symmetric",
    f"{_A} | fit_autoencoder.loss_fn | p_loss = perceptual(x, recon).mean() | swap arguments 1 and 2":
        "the perceptual distance is symmetric (the same normalisation of both feature stacks, squared differences)",
    f"{_A} | fit_autoencoder.disc_step | opt_d.zero_grad(set_to_none=True) | True -> False":
        "zeroed instead of freed gradients: the next backward writes the same values (every parameter gets a gradient)",
    **{f"{_A} | encode_dataset | def encode_dataset(model: Autoencoder, data: torch.Tensor, device: torch.device, batch_size: int = 500) "
       f"-> tuple[torch.Tensor, torch.Tensor]: | {d}": "the default chunk size; every chunk size covers the same images "
       "(tests/test_mutants_autoencoder.py checks the boundaries)" for d in ("500 -> 499", "500 -> 501")},
    f"{_A} | latent_std | z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed)) | + -> -":
        "the noise is a standard normal draw used only here: mean - s n has the same distribution as mean + s n",
    f"{_S} | dpmpp_2m | final_alpha: float = 1.0, | 1.0 -> 2.0": "any final alpha >= 1 takes the 'land on x0' branch, as 1 does",
    f"{_S} | guided.denoise | return torch.cat([out, cond[:, c:]], dim=1) if cond.shape[1] > c else out | > -> >=":
        "with exactly C channels cond[:, C:] is empty and the concatenation returns out unchanged",
    **{f"{_S} | _steps | def _steps(timesteps: Sequence[int], alphas_cumprod: torch.Tensor, final_alpha: float, start: int = 0): | "
       f"0 -> {v}": "the default of a private helper that both of its callers (ddim, ddpm) always pass start to"
       for v in (-1, 1)},
    f"{_S} | single_step | ac = torch.zeros(t + 1, dtype=torch.float64) | 1 -> 2":
        "a longer table of zeros: the one-step run reads only its entry t",
    f"{_SC} | sampling_timesteps | ts = (np.round(np.arange(T, 0, -T / N)).astype(np.int64) - 1).tolist()[:N] | 0 -> -1":
        "np.arange's points are start + i * step whatever the stop; a stop of -1 adds the point 0 past the first N, which [:N] drops",
    **{f"{_SC} | karras_timesteps | log_s = np.log(np.maximum(sigmas, 1e-10)) | {d}":
       "the Karras levels are >= sigma_min = sqrt((1 - alpha_bar_0) / alpha_bar_0) > 0 (beta_0 > 0), so the floor never acts "
       "(and maximum is symmetric)" for d in ("swap arguments 1 and 2", "1e-10 -> -0.9999999999", "1e-10 -> 0.0")},
    **{f"{_SC} | karras_timesteps | w = np.clip((log_sigmas[low] - log_s) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1) | {d}":
       "the interpolation weight is in [0, 1] up to float rounding (every level lies inside the table's range), so the clip "
       "only removes ~1e-15 that the rounding to an integer timestep removes too; clip(0, w, 1) = clip(w, 0, 1)"
       for d in ("swap arguments 1 and 2", "0 -> -1", "1 -> 2")},
    f"{_S} | dpmpp_2m_karras | final_alpha: float = 1.0, | 1.0 -> 2.0": "any final alpha >= 1 takes the 'land on x0' branch, as 1 does",
    **{f"{_S} | dpmpp_2m_karras | eta: float = 0.0, | {d}": "dpmpp_2m_karras's eta is unused (deterministic solver; documented)"
       for d in ("0.0 -> -1.0", "0.0 -> 1.0")},
    f"{_SC} | karras_timesteps | if num_steps > 1 and timesteps[0] == timesteps[1]: | 1 -> 2":
        "2 levels are sigma_max and sigma_min exactly, at t = T - 1 and t = 0, distinct for the T >= 2 checked above: skipping the "
        "check at 2 steps changes nothing",
    f"{_E} | strength_start | return num_steps - min(int(num_steps * strength), num_steps) | swap arguments 1 and 2": "min is symmetric",
    f"{_E} | noised | return (math.sqrt(a) * z0.double() + math.sqrt(max(1.0 - a, 0.0)) * noise.double()).to(z0.dtype) | "
    "swap arguments 1 and 2": "max is symmetric",
}

_BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult, ast.Mod: ast.FloorDiv,
          ast.Pow: ast.Mult, ast.LShift: ast.RShift, ast.RShift: ast.LShift, ast.BitOr: ast.BitAnd, ast.BitAnd: ast.BitOr,
          ast.BitXor: ast.BitOr, ast.MatMult: ast.Mult}
_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
        ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
_SYM = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**", ast.LShift: "<<",
        ast.RShift: ">>", ast.BitOr: "|", ast.BitAnd: "&", ast.BitXor: "^", ast.MatMult: "@", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">",
        ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in"}


@dataclass
class Mutant:
    file: str
    line: int
    end_line: int
    col: int
    operator: str
    description: str
    source_line: str
    scope: str  # "body" (lines inside a function body) or "module" (definition time: defaults, module/class level)
    func_lines: list[int] = field(default_factory=list)
    status: str = "pending"  # killed | timeout | survived | no_coverage | error
    slow_tests_skipped: int = 0  # covering slow tests not run (the --slow-budget was spent): a survivor of the fast ones
    killed_by: str | None = None
    tests_run: int = 0
    seconds: float = 0.0
    equivalent: str | None = None

    @property
    def key(self) -> str:
        return f"{self.file} | {_function_at(self.file, self.line)} | {self.source_line} | {self.description}"


_FUNCS: dict[str, list[tuple[int, int, str]]] = {}


# every mutant of a line holding one of these (file, text) is irrelevant for the given reason
EQUIVALENT_LINES: list[tuple[str, str, str]] = [
    ("components/training/loop.py", "tqdm(", "display only: the progress bar"),
    ("components/training/loop.py", "disable=not (self.progress and ctx.is_main), mininterval=2.0)", "display only: the progress bar"),
    ("components/training/loop.py", "bar.", "display only: the progress bar"),
]


def _equivalent(m: Mutant) -> str | None:
    """EQUIVALENT's reason for ``m`` ("<key> @<col>" first, for two like mutations on one line)."""
    for file, text, reason in EQUIVALENT_LINES:
        if m.file == file and text in m.source_line:
            return reason
    return EQUIVALENT.get(f"{m.key} @{m.col}") or EQUIVALENT.get(m.key)


def _function_at(rel: str, line: int) -> str:
    """Qualified name of the innermost def/class around ``line`` of ``rel`` (current source), "" at module level."""
    if rel not in _FUNCS:
        spans: list[tuple[int, int, str]] = []

        def visit(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    name = f"{prefix}{child.name}"
                    spans.append((child.lineno, child.end_lineno, name))
                    visit(child, name + ".")
                else:
                    visit(child, prefix)

        visit(ast.parse((ROOT / rel).read_text()), "")
        _FUNCS[rel] = spans
    inside = [(a, b, n) for a, b, n in _FUNCS[rel] if a <= line <= b]
    return max(inside, key=lambda s: s[0])[2] if inside else ""


# ------------------------------------------------------------------------------------------------ generation
class _Source:
    def __init__(self, text: str):
        self.text = text
        self.lines = text.splitlines(keepends=True)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))

    def offset(self, lineno: int, col_bytes: int) -> int:
        line = self.lines[lineno - 1]
        return self.starts[lineno - 1] + len(line.encode()[:col_bytes].decode())

    def span(self, node: ast.AST) -> tuple[int, int]:
        return self.offset(node.lineno, node.col_offset), self.offset(node.end_lineno, node.end_col_offset)

    def seg(self, node: ast.AST) -> str:
        a, b = self.span(node)
        return self.text[a:b]


def _skipped_nodes(tree: ast.AST) -> set[int]:
    """ids of nodes not to mutate: docstrings, annotations, raise statements, f-strings, log calls, ``__all__``."""
    skip: list[ast.AST] = []
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            skip.append(body[0])
        if isinstance(node, ast.arg) and node.annotation is not None:
            skip.append(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
            skip.append(node.returns)
        if isinstance(node, ast.AnnAssign):
            skip.append(node.annotation)
        if isinstance(node, ast.Raise | ast.JoinedStr):
            skip.append(node)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Attribute) \
                and isinstance(node.value.func.value, ast.Name) and node.value.func.value.id in ("log", "logging", "warnings"):
            skip.append(node)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            skip.append(node)
    return {id(n) for s in skip for n in ast.walk(s)}


def _scopes(tree: ast.AST) -> dict[int, tuple[str, list[int]]]:
    """For each node id: ("body", lines of the enclosing function body) or ("module", lines of the function whose
    signature/decorators hold it, or [] at module/class level)."""
    out: dict[int, tuple[str, list[int]]] = {}

    def visit(node: ast.AST, scope: tuple[str, list[int]]) -> None:
        out[id(node)] = scope
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            body = node.body if isinstance(node.body, list) else [node.body]
            lines = sorted({n.lineno for b in body for n in ast.walk(b) if hasattr(n, "lineno")})
            for child in ast.iter_child_nodes(node):
                inner = child in body
                visit(child, ("body", lines) if inner else ("module", lines))
            return
        for child in ast.iter_child_nodes(node):
            visit(child, scope)

    visit(tree, ("module", []))
    return out


def generate(rel: str, text: str) -> list[tuple[Mutant, str]]:
    src = _Source(text)
    tree = ast.parse(text)
    skipped, scopes = _skipped_nodes(tree), _scopes(tree)
    found: list[tuple[Mutant, str]] = []
    seen = {text}

    def add(node: ast.AST, operator: str, description: str, edits: list[tuple[int, int, str]]) -> None:
        new = text
        for a, b, rep in sorted(edits, reverse=True):
            new = new[:a] + rep + new[b:]
        if new in seen:
            return
        try:
            compile(new, rel, "exec")
        except SyntaxError:
            return
        seen.add(new)
        scope, lines = scopes.get(id(node), ("module", []))
        found.append((Mutant(rel, node.lineno, node.end_lineno, node.col_offset, operator, description,
                             src.lines[node.lineno - 1].strip(), scope, lines), new))

    def whole(node: ast.AST, rep: str) -> list[tuple[int, int, str]]:
        a, b = src.span(node)
        return [(a, b, rep)]

    for node in ast.walk(tree):
        if id(node) in skipped or not hasattr(node, "lineno"):
            continue
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOP:
            new_op = _BINOP[type(node.op)]
            rep = f"(({src.seg(node.left)}) {_SYM[new_op]} ({src.seg(node.right)}))"
            add(node, "binop", f"{_SYM[type(node.op)]} -> {_SYM[new_op]}", whole(node, rep))
        elif isinstance(node, ast.AugAssign):
            if type(node.op) in _BINOP:
                new_op = _BINOP[type(node.op)]
                rep = f"{src.seg(node.target)} {_SYM[new_op]}= {src.seg(node.value)}"
                add(node, "binop", f"{_SYM[type(node.op)]}= -> {_SYM[new_op]}=", whole(node, rep))
            add(node, "delete", "remove statement", whole(node, "pass"))
        elif isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) not in _CMP:
                    continue
                parts = [src.seg(node.left)]
                for j, (o, c) in enumerate(zip(node.ops, node.comparators, strict=True)):
                    parts.append(_SYM[_CMP[type(o)]] if j == i else _SYM[type(o)])
                    parts.append(src.seg(c))
                add(node, "compare", f"{_SYM[type(op)]} -> {_SYM[_CMP[type(op)]]}", whole(node, "(" + " ".join(parts) + ")"))
        elif isinstance(node, ast.BoolOp):
            other = " or " if isinstance(node.op, ast.And) else " and "
            rep = "(" + other.join(f"({src.seg(v)})" for v in node.values) + ")"
            add(node, "boolop", "and -> or" if isinstance(node.op, ast.And) else "or -> and", whole(node, rep))
        elif isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, bool):
                add(node, "constant", f"{v} -> {not v}", whole(node, repr(not v)))
            elif isinstance(v, int | float):
                for new in dict.fromkeys([v + 1, v - 1, type(v)(0)]):
                    if new != v:
                        add(node, "constant", f"{v!r} -> {new!r}", whole(node, f"({new!r})"))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.Not):
            sym = "-" if isinstance(node.op, ast.USub) else "not "
            add(node, "unary", f"drop {sym.strip()}", whole(node, f"({src.seg(node.operand)})"))
        if isinstance(node, ast.Expr) and not (isinstance(node.value, ast.Constant)):
            add(node, "delete", "remove statement", whole(node, "pass"))
        elif isinstance(node, ast.Assign) and all(isinstance(t, ast.Subscript | ast.Attribute) for t in node.targets):
            add(node, "delete", "remove statement", whole(node, "pass"))
        elif isinstance(node, ast.Break | ast.Continue):
            add(node, "delete", "remove statement", whole(node, "pass"))
        if isinstance(node, ast.Call):
            args = node.args
            if not any(isinstance(a, ast.Starred) for a in args):
                for i in range(len(args) - 1):
                    sa, sb = src.seg(args[i]), src.seg(args[i + 1])
                    if sa != sb:
                        (a1, b1), (a2, b2) = src.span(args[i]), src.span(args[i + 1])
                        add(node, "swap_args", f"swap arguments {i + 1} and {i + 2}", [(a1, b1, sb), (a2, b2, sa)])
            if isinstance(node.func, ast.Name) and node.func.id in ("min", "max"):
                other = "max" if node.func.id == "min" else "min"
                add(node, "minmax", f"{node.func.id} -> {other}", whole(node.func, other))
            for kw in node.keywords:
                if kw.arg in ("min", "max"):
                    other = "max" if kw.arg == "min" else "min"
                    add(node, "minmax", f"{kw.arg}= -> {other}=", whole(kw, f"{other}={src.seg(kw.value)}"))
    found.sort(key=lambda m: (m[0].line, m[0].col, m[0].description))
    return found


# ------------------------------------------------------------------------------------------------------ running
_SITECUSTOMIZE = '''
import atexit, json, os, sys, threading
_targets = set(os.environ["LF_MUT_TARGETS"].split(os.pathsep))
_hits = set()
def _local(frame, event, arg):
    if event == "line":
        _hits.add((frame.f_code.co_filename, frame.f_lineno))
    return _local
def _global(frame, event, arg):
    if frame.f_code.co_filename in _targets:
        _hits.add((frame.f_code.co_filename, frame.f_lineno))
        return _local
    return None
sys.settrace(_global)
threading.settrace(_global)
def _dump():
    path = os.path.join(os.environ["LF_MUT_TRACE_DIR"], f"{os.getpid()}.json")
    with open(path, "w") as f:
        json.dump(sorted(_hits), f)
atexit.register(_dump)
'''


def copy_tree(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in files.decode().split("\0"):
        if rel and (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)


def _fork_pytest(args: list[str], timeout: float, result_file: Path, plugin_factory=None) -> tuple[int | None, float]:
    """pytest.main(args) in a forked child (own process group); exit code (None on timeout) and seconds."""
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child
        code = 3
        try:
            os.setpgid(0, 0)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            import pytest

            plugins = [plugin_factory()] if plugin_factory else []
            plugins.append(_FirstFailure(result_file))
            code = int(pytest.main(args, plugins=plugins))
        finally:
            os._exit(code)
    deadline = t0 + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # stray grandchildren (workers) of the test
            return code, time.perf_counter() - t0
        if time.perf_counter() > deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None, time.perf_counter() - t0
        time.sleep(0.05)


class _FirstFailure:
    def __init__(self, path: Path):
        self.path = path

    def pytest_runtest_logreport(self, report):
        if report.failed and not self.path.exists():
            self.path.write_text(report.nodeid)

    def pytest_collectreport(self, report):
        if report.failed and not self.path.exists():
            self.path.write_text(f"collection of {report.nodeid}")


class _Recorder:
    """Baseline plugin: per test, its outcome, duration and the (file, line) pairs it executes."""

    def __init__(self, work: Path, targets: dict[str, str], trace_dir: Path, out: Path):
        self.work, self.targets, self.trace_dir, self.out = work, targets, trace_dir, out
        self.cov: dict[str, set] = {}
        self.durations: dict[str, float] = {}
        self.failed: list[str] = []
        self.current: set | None = None

    def _tracer(self):
        targets, rec = self.targets, self

        def local(frame, event, arg):
            if event == "line" and rec.current is not None:
                rec.current.add((targets[frame.f_code.co_filename], frame.f_lineno))
            return local

        def glob(frame, event, arg):
            if frame.f_code.co_filename in targets:
                if rec.current is not None:
                    rec.current.add((targets[frame.f_code.co_filename], frame.f_lineno))
                return local
            return None

        return glob

    def pytest_configure(self, config):
        import threading

        sys.settrace(self._tracer())
        threading.settrace(self._tracer())

    def pytest_runtest_logstart(self, nodeid, location):
        self.current = self.cov.setdefault(nodeid, set())

    def pytest_runtest_logreport(self, report):
        self.durations[report.nodeid] = self.durations.get(report.nodeid, 0.0) + report.duration
        if report.failed:
            self.failed.append(report.nodeid)

    def pytest_runtest_logfinish(self, nodeid, location):
        for f in self.trace_dir.glob("*.json"):  # the test's subprocesses
            with contextlib.suppress(ValueError, OSError):
                for fn, line in json.loads(f.read_text()):
                    if fn in self.targets:
                        self.cov[nodeid].add((self.targets[fn], line))
            f.unlink(missing_ok=True)
        self.current = None

    def pytest_sessionfinish(self, session, exitstatus):
        sys.settrace(None)
        import components

        self.out.write_text(json.dumps({
            "components": components.__file__,
            "durations": self.durations,
            "failed": self.failed,
            "cov": {k: sorted(v) for k, v in self.cov.items()},
        }))


# project modules the tests import that may be loaded once in the parent (from the copy), when they do not import a mutated file
PREIMPORT = ["components.config", "components.models.unet", "components.models.autoencoder", "components.models.checkpoint",
             "components.generation", "components.diffusion.schedules", "components.diffusion.forward", "components.diffusion.samplers"]


def _preimport(work: Path, files: list[str]) -> None:
    mutated = {str(work / f) for f in files}
    for name in PREIMPORT:
        probe = subprocess.run([sys.executable, "-c", f"import sys, {name}; print(chr(10).join(getattr(m, '__file__', None) or '' for m in "
                                "list(sys.modules.values())))"], capture_output=True, text=True, cwd=work, env=os.environ)
        loaded = set(probe.stdout.split())
        if probe.returncode == 0 and not loaded & mutated and all(f.startswith(str(work)) for f in loaded if "/components/" in f):
            __import__(name)
    leaked = mutated & {getattr(m, "__file__", None) for m in list(sys.modules.values())}
    assert not leaked, f"a mutated module was imported by the runner itself: {leaked}"


def baseline(work: Path, files: list[str], tests: list[str]) -> dict:
    trace_dir = Path(tempfile.mkdtemp(prefix="trace-", dir=work.parent))
    site = work.parent / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    targets = {str(work / f): f for f in files}
    out = work.parent / "baseline.json"
    env_before = dict(os.environ)
    os.environ.update(LF_MUT_TARGETS=os.pathsep.join(targets), LF_MUT_TRACE_DIR=str(trace_dir),
                      PYTHONPATH=f"{work}{os.pathsep}{site}")
    try:
        code, secs = _fork_pytest(["-q", "-p", "no:cacheprovider", *tests], 3600, work.parent / "baseline-failure.txt",
                                  lambda: _Recorder(work, targets, trace_dir, out))
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    data = json.loads(out.read_text())
    if code != 0 or data["failed"]:
        raise SystemExit(f"the baseline test run fails (exit {code}): {data['failed']}")
    if not data["components"].startswith(str(work)):
        raise SystemExit(f"tests imported {data['components']}, not the copy in {work}")
    data["seconds"] = round(secs, 1)
    data["cov"] = {k: {(f, line) for f, line in v} for k, v in data["cov"].items()}
    return data


def select_tests(m: Mutant, base: dict) -> list[str]:
    cov, durations = base["cov"], base["durations"]
    if m.scope == "body":
        lines = {(m.file, n) for n in range(m.line, m.end_line + 1)}
    elif m.func_lines:  # a default or decorator: the tests that run the function
        lines = {(m.file, n) for n in m.func_lines}
    else:  # module or class level: every test that runs code of the file (a function body of it)
        lines = _function_body_lines(m.file)
    chosen = [t for t, hit in cov.items() if hit & lines]
    if m.scope != "body" and not m.func_lines and not chosen:
        # a file of constants: they run at import, which no test's trace attributes to it, so any test may read them
        chosen = list(durations)
    return sorted(chosen, key=lambda t: durations.get(t, 0.0))


@functools.cache
def _function_body_lines(rel: str) -> frozenset[tuple[str, int]]:
    """(file, line) of every line inside a function body of ``rel`` (in the working copy: the cwd)."""
    tree = ast.parse(Path(rel).read_text())
    return frozenset((rel, n) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                     for stmt in node.body for n in range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1))


def run_mutant(work: Path, m: Mutant, mutated: str, original: str, base: dict, slow: dict) -> None:
    """Run the covering tests under ``m``: the fast ones first; the slow ones (baseline over ``slow["seconds"]``)
    only if the mutant survives those and the run's slow-test budget (``slow["budget"]`` seconds) is not spent."""
    tests = select_tests(m, base)
    m.tests_run = len(tests)
    if not tests:
        m.status = "no_coverage"
        return
    fast = [t for t in tests if base["durations"].get(t, 0.0) <= slow["seconds"]]
    heavy = [t for t in tests if t not in fast]
    path = work / m.file
    failure = work.parent / "failure.txt"
    failure.unlink(missing_ok=True)
    path.write_text(mutated)
    try:
        code, secs = 0, 0.0
        for group in (fast, heavy):
            if not group or code != 0:
                continue
            if group is heavy:
                if slow["budget"] <= 0:
                    m.slow_tests_skipped = len(heavy)
                    break
            limit = 3 * sum(base["durations"].get(t, 0.0) for t in group) + 20
            code, s = _fork_pytest(["-x", "-q", "-p", "no:cacheprovider", *group], limit, failure)
            secs += s
            if group is heavy:
                slow["budget"] -= s
            if code is None:
                m.status, m.killed_by = "timeout", f"over {limit:.0f} s"
                break
    finally:
        path.write_text(original)
    m.seconds = round(secs, 2)
    if code is None:
        return
    if code == 0:
        m.status = "survived"
    elif code in (1, 2, 3, 4) or code < 0:  # 4: the test modules could not be collected (the mutant breaks an import)
        m.status = "killed"
        m.killed_by = failure.read_text() if failure.exists() else f"pytest exit {code}" + (" (collection failed)" if code == 4 else "")
    else:
        m.status, m.killed_by = "error", f"pytest exit {code}"


def summarise(mutants: list[Mutant]) -> dict:
    per: dict[str, dict] = {}
    for m in mutants:
        for name in (m.file, "total"):
            s = per.setdefault(name, dict.fromkeys(("mutants", "killed", "timeout", "survived", "no_coverage", "error", "equivalent"), 0))
            s["mutants"] += 1
            s[m.status] += 1
            s["equivalent"] += bool(m.equivalent and m.status in ("survived", "no_coverage"))
    for s in per.values():
        dead = s["killed"] + s["timeout"] + s["error"]  # error: pytest could not run the tests under the mutant
        s["score"] = round(dead / s["mutants"], 4) if s["mutants"] else None
        net = s["mutants"] - s["equivalent"]
        s["score_net_of_equivalent"] = round(dead / net, 4) if net else None
    return per


def render_markdown(results: dict, before_label: str, after_label: str) -> str:
    before, after = results["runs"][before_label], results["runs"].get(after_label)
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    lines = ["| file | mutants | killed before | score before | killed after | score after | equivalent | score after, net of equivalent |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, b in before["summary"].items():
        a = (after or {}).get("summary", {}).get(name, {})
        lines.append(f"| {name} | {b['mutants']} | {b['killed'] + b['timeout']} | {pct(b['score'])} | "
                     f"{a.get('killed', 0) + a.get('timeout', 0) if a else '-'} | {pct(a.get('score'))} | {a.get('equivalent', '-')} | "
                     f"{pct(a.get('score_net_of_equivalent'))} |")
    after_by = {(m["file"], m["line"], m["col"], m["source_line"], m["description"]): m for m in (after or {}).get("mutants", [])}
    out = ["\n".join(lines), "", "### Survivors of the before run and their disposition", "",
           "| mutant | before | disposition |", "|---|---|---|"]
    for m in before["mutants"]:
        if m["status"] in ("killed", "timeout"):
            continue
        a = after_by.get((m["file"], m["line"], m["col"], m["source_line"], m["description"]))
        if a is None:
            disp = "not re-run"
        elif a["status"] in ("killed", "timeout"):
            disp = f"killed by `{a['killed_by']}`"
        elif a.get("equivalent"):
            disp = f"equivalent/irrelevant: {a['equivalent']}"
        else:
            disp = f"**still {a['status']}**" + (f" ({a['slow_tests_skipped']} slow tests not run)" if a.get("slow_tests_skipped") else "")
        src = m["source_line"].replace("|", "\\|")
        note = f"{m['status']}" + (" (slow tests skipped)" if m.get("slow_tests_skipped") else "")
        out.append(f"| `{m['file'].split('/')[-1]}:{m['line']}` {m['description'].replace('|', '/')} in `{src}` | {note} | {disp} |")
    return "\n".join(out) + "\n"


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--label", default="latest", help="name of this run in the results file (e.g. before, after)")
    ap.add_argument("--files", nargs="*", default=FILES)
    ap.add_argument("--tests", nargs="*", default=None, help="test files (default: TESTS that exist)")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "mutation.json")
    ap.add_argument("--previous", type=Path, default=None, help="results file holding the --rerun-survivors-of run (default: --out)")
    ap.add_argument("--slow-test-seconds", type=float, default=5.0, help="tests slower than this (baseline) run only on survivors")
    ap.add_argument("--slow-budget", type=float, default=float("inf"), help="total seconds for slow tests in this run")
    ap.add_argument("--merge", action="store_true", help="keep the mutants of other files already in run --label")
    ap.add_argument("--reclassify", nargs="+", metavar="LABEL", help="only re-apply EQUIVALENT to the stored runs LABEL")
    ap.add_argument("--markdown", type=Path, default=None, help="only render the --before and --after runs as markdown to this path")
    ap.add_argument("--before", default="before")
    ap.add_argument("--after", default="after")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy")
    ap.add_argument("--rerun-survivors-of", default=None, metavar="LABEL",
                    help="carry over the mutants killed in run LABEL (matched by source line, not line number: tests were "
                    "only added since) and run the others: its survivors and the mutants of lines new since LABEL")
    ap.add_argument("--only-new", action="store_true",
                    help="with --rerun-survivors-of: run only the mutants that run LABEL does not have (lines new since); its "
                    "survivors keep their status unrun")
    args = ap.parse_args()
    if args.only_new and not args.rerun_survivors_of:
        ap.error("--only-new needs --rerun-survivors-of LABEL")

    if args.reclassify:  # re-apply EQUIVALENT (edited after the run) to stored results
        results = json.loads(args.out.read_text())
        for label in args.reclassify:
            run = results["runs"][label]
            mutants = [Mutant(**{k: v for k, v in d.items() if k != "key"}) for d in run["mutants"]]
            for m in mutants:
                m.equivalent = _equivalent(m) if m.status in ("survived", "no_coverage") else None
            run["summary"] = summarise(mutants)
            run["mutants"] = [{**{k: v for k, v in asdict(m).items() if k != "func_lines"}, "key": m.key} for m in mutants]
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        return

    if args.markdown:
        args.markdown.write_text(render_markdown(json.loads(args.out.read_text()), args.before, args.after))
        return

    if args.list:
        for rel in args.files:
            for m, _ in generate(rel, (ROOT / rel).read_text()):
                print(f"{m.file}:{m.line}: {m.operator}: {m.description}    {m.source_line}")
        return

    t_start = time.perf_counter()
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    import numpy  # noqa: F401  (imported once here, shared by every forked test run)
    import pytest  # noqa: F401
    import torch

    torch.set_num_threads(1)
    with contextlib.suppress(ImportError):
        import safetensors.torch  # noqa: F401
        from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler  # noqa: F401  (~2 s per test run otherwise)

    tmp = Path(tempfile.mkdtemp(prefix="latentflow-mutation-"))
    work = tmp / "repo"
    try:
        copy_tree(work)
        tests = args.tests or [t for t in TESTS if (work / t).is_file()]
        os.chdir(work)
        os.environ["PYTHONPATH"] = str(work)
        sys.path.insert(0, str(work))
        sys.dont_write_bytecode = True
        for cache in work.rglob("__pycache__"):
            shutil.rmtree(cache, ignore_errors=True)
        _preimport(work, args.files)
        print(f"[mutation] baseline: {len(tests)} test files, tracing {len(args.files)} files ...", flush=True)
        base = baseline(work, args.files, tests)
        print(f"[mutation] baseline passed in {base['seconds']} s ({len(base['durations'])} tests)", flush=True)

        mutants: list[Mutant] = []
        previous = _previous(args.previous or args.out, args.rerun_survivors_of)
        slow = {"seconds": args.slow_test_seconds, "budget": args.slow_budget}
        if args.merge and args.out.is_file() and args.label in json.loads(args.out.read_text())["runs"]:
            old = json.loads(args.out.read_text())["runs"][args.label]
            done = sorted({m["file"] for m in old["mutants"]} - set(args.files))
            legacy = [{"files": done, "seconds": old["run_seconds"], "command": old["command"], "date_utc": old["date_utc"],
                       "baseline_seconds": old["baseline_seconds"]}]
            args.invocations = [i for i in old.get("invocations", legacy) if set(i["files"]) - set(args.files)]
            kept = [m for m in old["mutants"] if m["file"] not in args.files]
            for d in kept:
                d.pop("key", None)
                mutants.append(Mutant(**d))
        for rel in args.files:
            original = (work / rel).read_text()
            generated = generate(rel, original)
            print(f"[mutation] {rel}: {len(generated)} mutants", flush=True)
            for i, (m, mutated) in enumerate(generated):
                carried = previous.get((m.file, m.col, m.source_line, m.description)) if previous is not None else None
                if carried is not None and carried["status"] in ("killed", "timeout"):
                    m.status, m.killed_by, m.seconds = carried["status"], f"{carried['killed_by']} ({args.rerun_survivors_of} run)", 0.0
                elif carried is not None and args.only_new:  # a survivor of that run stays one, unrun
                    m.status, m.killed_by, m.seconds = carried["status"], None, 0.0
                    m.tests_run = 0
                else:
                    run_mutant(work, m, mutated, original, base, slow)
                m.equivalent = _equivalent(m) if m.status in ("survived", "no_coverage") else None
                mutants.append(m)
                if m.status not in ("killed", "timeout"):
                    print(f"  [{i + 1}/{len(generated)}] {m.status}: {rel}:{m.line} {m.description}    {m.source_line}", flush=True)
            assert (work / rel).read_text() == original
            _write(args, tests, base, mutants, t_start, complete=rel == args.files[-1], slow=slow)
    finally:
        os.chdir(ROOT)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _finite(x: float) -> float | None:
    return None if x == float("inf") else round(x, 1)


def _previous(out: Path, label: str | None) -> dict | None:
    """The mutants of run ``label`` by file, column, source line and mutation: not by line number, so code added above
    a line since that run does not make its mutants new. Where the same source line occurs more than once in a file,
    a mutant counts as killed only if it was killed on every occurrence."""
    if not label:
        return None
    run = json.loads(out.read_text())["runs"][label]
    out_: dict = {}
    for m in run["mutants"]:
        key = (m["file"], m["col"], m["source_line"], m["description"])
        if key in out_ and out_[key]["status"] in ("killed", "timeout"):
            if m["status"] not in ("killed", "timeout"):
                out_[key] = m
        else:
            out_.setdefault(key, m)
    return out_


def _write(args, tests: list[str], base: dict, mutants: list[Mutant], t_start: float, complete: bool, slow: dict) -> None:
    import pytest
    import torch

    for m in mutants:
        m.equivalent = _equivalent(m) if m.status in ("survived", "no_coverage") else None
    summary = summarise(mutants)
    run = {
        "complete": complete,
        "commit": git("rev-parse", "HEAD"),
        "uncommitted_changes": [line[3:] for line in git("status", "--porcelain").splitlines() if line[3:] in (*args.files, *tests)],
        "tool": "benchmarks/mutation.py (own AST mutator; pytest per mutant in a forked child)",
        "tool_versions": {"python": platform.python_version(), "torch": torch.__version__, "pytest": pytest.__version__},
        "command": "OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python -m benchmarks.mutation " + " ".join(sys.argv[1:]),
        "rerun_survivors_of": args.rerun_survivors_of,
        "invocations": [*getattr(args, "invocations", []), {
            "files": args.files, "seconds": round(time.perf_counter() - t_start, 1), "command": "OMP_NUM_THREADS=1 taskset -c 1 "
            ".venv/bin/python -m benchmarks.mutation " + " ".join(sys.argv[1:]), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "baseline_seconds": base["seconds"]}],
        "slow_tests": {"over_seconds": args.slow_test_seconds, "budget_seconds": _finite(args.slow_budget), "budget_left": _finite(slow["budget"]),
                       "tests": sorted(t for t, d in base["durations"].items() if d > args.slow_test_seconds)},
        "threads": 1,
        "machine": {"uname_m": platform.machine(), "nproc": os.cpu_count(),
                    "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None},
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "baseline_seconds": base["seconds"],
        "run_seconds": round(time.perf_counter() - t_start, 1),
        "tests": tests,
        "files": args.files,
        "summary": summary,
        "mutants": [{**{k: v for k, v in asdict(m).items() if k != "func_lines"}, "key": m.key} for m in mutants],
    }
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": {}}
    results["runs"][args.label] = run
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    if not complete:
        return
    print(f"\n[mutation] {args.label}: {run['run_seconds']} s; results in {args.out}")
    print(f"{'file':44s} {'mutants':>7s} {'killed':>7s} {'survived':>8s} {'no_cov':>6s} {'equiv':>5s} {'score':>6s} {'net':>6s}")
    for name, s in summary.items():
        print(f"{name:44s} {s['mutants']:7d} {s['killed'] + s['timeout']:7d} {s['survived']:8d} {s['no_coverage']:6d} "
              f"{s['equivalent']:5d} {s['score']:6.1%} {s['score_net_of_equivalent'] or 0:6.1%}")


if __name__ == "__main__":
    main()
