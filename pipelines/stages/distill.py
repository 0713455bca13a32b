"""Stage ``distill`` (optional, ``distill.enabled``): few-step students of the EMA U-Net with guidance folded in.

Output ``models/distilled/``: disabled, only ``status.json`` saying so (the stage then costs nothing). Enabled, the last
(fewest-step) student as a model folder (``autoencoder/`` + ``diffusion/``, loadable by ``latentflow sample --model
models/distilled``) and every round's student as ``rounds/steps_<N>/`` (same layout), plus ``status.json``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from components.config import Params, params_dict
from components.io import atomic_dir, atomic_write_json
from pipelines.stages.paths import CHECKPOINTS_DIR, DATA_DIR, DISTILLED_DIR, METRICS_DIR, MODELS_DIR
from pipelines.stages.runtime import setup, training_fingerprint

log = logging.getLogger("latentflow")


def run(params: Params, data_dir: Path = DATA_DIR, models_dir: Path = MODELS_DIR, metrics_dir: Path = METRICS_DIR,
        out_dir: Path = DISTILLED_DIR, progress: bool = True, on_checkpoint=None) -> dict:
    """Distil ``models_dir/diffusion`` (the teacher) into students of ``distill.steps`` steps with ``sample.guidance``
    (and its ``guidance_rescale`` and ``guidance_interval``) folded in (components/training/distill.py); write them
    under ``out_dir`` and ``metrics_dir/distill.json``."""
    cfg = params.distill
    out_dir, metrics_path = Path(out_dir), Path(metrics_dir) / "distill.json"
    if not cfg.enabled:
        status = {"enabled": False, "reason": "distill.enabled is false in params.yaml: no student was trained "
                  "(set it to true to distil the U-Net into a few-step student)"}
        with atomic_dir(out_dir) as tmp:
            atomic_write_json(tmp / "status.json", status)
        atomic_write_json(metrics_path, {"enabled": False})
        print("distill: disabled (distill.enabled: false); wrote models/distilled/status.json", flush=True)
        return status

    if cfg.runtime.num_processes != 1:
        raise ValueError(f"distill runs in one process; set distill.runtime.num_processes: 1 (got {cfg.runtime.num_processes})")
    import torch

    from components.data.artifact import read_dataset
    from components.diffusion import make_betas
    from components.models.checkpoint import load_autoencoder, load_unet, save_checkpoint
    from components.registry.lineage import file_sha256
    from components.training.autoencoder import diffusion_latents
    from components.training.distill import DistilledInfo, distill_round, plan_rounds, round_fingerprint, state_digest
    from components.training.distributed import DistContext
    from components.training.loop import LoopConfig

    device = setup(params)
    models_dir = Path(models_dir)
    teacher, meta = load_unet(models_dir / "diffusion", device)
    if teacher.config.conditioning != "class":
        raise ValueError("distill: the teacher is text-conditioned (train_diffusion.conditioning: text); distillation supports "
                         "class-conditioned models only: set distill.enabled: false")
    sched = meta["schedule"]
    if sched.get("variance_type", "fixed_small") != "fixed_small":
        log.info("distill: the teacher's learned variance channels are dropped; students are deterministic (DDIM)")
    betas = make_betas(sched["schedule"], sched["num_timesteps"], sched["beta_start"], sched["beta_end"],
                       zero_terminal_snr=sched.get("zero_terminal_snr", False))
    guidance = float(params.sample.guidance)
    rescale, interval = float(params.sample.guidance_rescale), params.sample.guidance_interval
    rounds = plan_rounds(cfg.steps, cfg.teacher_steps, guidance, len(betas), guidance_rescale=rescale, guidance_interval=interval)
    ds = read_dataset(data_dir, stream=True)
    autoencoder, _ = load_autoencoder(models_dir / "autoencoder", device)
    # the latents the teacher learnt, at the teacher's scale (its checkpoint's train_diffusion.latents and latent_scale;
    # older checkpoints: posterior draws at the autoencoder's scale factor)
    latents = meta.get("training", {}).get("latents", "posterior_sample")
    mean, logvar, latent_scale = diffusion_latents(autoencoder, ds.images["train"], device, latents, meta.get("latent_scale", "autoencoder"),
                                                   workers=cfg.runtime.data_workers)
    labels = torch.from_numpy(ds.labels["train"]).long()
    teacher_file = models_dir / "diffusion" / "model.safetensors"
    # what every round learns from: the section less `steps` and `enabled` (a round's own step counts and its teacher's
    # weights enter round_fingerprint), so appending a round to distill.steps reuses the finished ones
    section = params.distill.model_copy(update={"steps": (), "enabled": True})
    base = training_fingerprint(params.model_copy(update={"distill": section}), "distill", ds.manifest["dataset_digest"], teacher_file)
    base += f"|guidance={guidance}"
    loop = LoopConfig.from_section(cfg)
    ctx = DistContext(device=device)
    ckroot = models_dir.resolve().parent / CHECKPOINTS_DIR / "distill"
    current, current_type = teacher, sched["prediction_type"]
    teacher_record = {"weights_sha256": file_sha256(teacher_file), "prediction_type": sched["prediction_type"],
                      "dataset_digest": meta.get("dataset_digest"), "guidance": guidance, "guidance_rescale": rescale,
                      "guidance_interval": None if interval is None else list(interval), "sampler": "ddim",
                      "teacher_steps": cfg.teacher_steps}
    done, records = [], []
    for r, rnd in enumerate(rounds):
        fingerprint = round_fingerprint(base, rnd, state_digest(current), cfg.prediction_type)
        student, result = distill_round(
            current, current_type, rnd, mean, logvar, labels, betas, loop, student_prediction_type=cfg.prediction_type,
            seed=params.base.seed + r, ctx=ctx, checkpoint_dir=ckroot / f"round_{r}_steps_{rnd.student_steps}", fingerprint=fingerprint,
            progress=progress, on_checkpoint=on_checkpoint,
        )
        record = {"student_steps": rnd.student_steps, "teacher_steps": rnd.teacher_steps, "teacher_guidance": rnd.teacher_guidance,
                  "teacher_guidance_rescale": rnd.teacher_guidance_rescale,
                  "teacher_guidance_interval": None if rnd.teacher_guidance_interval is None else list(rnd.teacher_guidance_interval),
                  "images_seen": result.images_seen, "train_seconds": result.train_seconds,
                  "final_loss": result.history[-1]["loss"] if result.history else None,
                  "first_loss": result.history[0]["loss"] if result.history else None,
                  "resumed_from_step": result.resumed_from_step, "stopped_by_max_time": result.stopped_by_max_time}
        records.append(record)
        if result.stopped_by_max_time:
            raise RuntimeError(f"distill: round {r} ({rnd.teacher_steps} -> {rnd.student_steps} steps) stopped at its "
                               "max_time_minutes budget; its checkpoint is saved: rerun the stage to continue. "
                               f"{out_dir} was left as it was.")
        done.append((rnd, student, list(records)))
        current, current_type = student, cfg.prediction_type

    def student_meta(rnd, recs) -> dict:
        info = DistilledInfo(steps=rnd.student_steps, guidance=guidance, teacher=teacher_record, rounds=recs)
        return {"schedule": {**sched, "prediction_type": cfg.prediction_type, "variance_type": "fixed_small"},
                "class_names": meta.get("class_names"), "dataset_digest": meta.get("dataset_digest"), "weights": "ema",
                "latent_scale": latent_scale,
                "training": params_dict(params)["distill"], "distilled": info.to_dict()}

    with atomic_dir(out_dir) as tmp:
        for rnd, student, recs in done:
            folder = tmp / "rounds" / f"steps_{rnd.student_steps}"
            shutil.copytree(models_dir / "autoencoder", folder / "autoencoder")
            save_checkpoint(folder / "diffusion", student, student.config.to_dict(), student_meta(rnd, recs))
        last = done[-1]
        shutil.copytree(models_dir / "autoencoder", tmp / "autoencoder")
        save_checkpoint(tmp / "diffusion", last[1], last[1].config.to_dict(), student_meta(last[0], last[2]))
        status = {"enabled": True, "steps": last[0].student_steps, "guidance": guidance, "rounds": records,
                  "teacher_weights_sha256": teacher_record["weights_sha256"]}
        atomic_write_json(tmp / "status.json", status)
    atomic_write_json(metrics_path, {"enabled": True, "steps": last[0].student_steps, "guidance": guidance,
                                     "rounds": {str(rec["student_steps"]): rec for rec in records}})
    log.info("distill: %s", status)
    return status
