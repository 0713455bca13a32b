"""``latentflow``: one command per pipeline stage, plus ``run``, ``flow``, ``sample`` and ``edit``.

``dvc.yaml`` calls these commands; ``dvc repro`` (or ``latentflow run``) runs the whole DAG.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from components.diffusion.options import DEFAULT_INPAINT_STRENGTH, DEFAULT_RESAMPLE_STEPS, DEFAULT_STRENGTH, SAMPLERS
from components.io import TELEMETRY_OFF

app = typer.Typer(
    help="latentflow: train, sample, evaluate and register class-conditional latent diffusion models.\n\n"
    "Each stage command reads its section of params.yaml and writes the outputs declared in dvc.yaml. "
    "Run the whole pipeline with `dvc repro` (or `latentflow run`), or as a Prefect flow with `latentflow flow`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params file (one section per stage)")]


# ours, and Prefect's flow and task run loggers, which carry `latentflow flow`'s per-stage lines and run states
OWN_LOGGERS = ("latentflow", "components", "pipelines", "prefect.flow_runs", "prefect.task_runs")


def _own_or_warning(record: logging.LogRecord) -> bool:
    """Our records at any level; a library's only from WARNING up (a level set on the logger is not enough:
    great-expectations pins one of its loggers to INFO when imported)."""
    return record.levelno >= logging.WARNING or any(record.name == n or record.name.startswith(n + ".") for n in OWN_LOGGERS)


def _setup() -> None:
    """Telemetry off; our log lines at INFO, libraries' from WARNING up (great-expectations alone logged ~200 INFO lines
    about its own decorators per ``validate``)."""
    for k, v in TELEMETRY_OFF.items():
        os.environ.setdefault(k, v)
    root = logging.getLogger()
    if not root.handlers:  # as logging.basicConfig, plus the filter; a host's handlers (pytest's, an app's) are left alone
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(_own_or_warning)
        root.addHandler(handler)
        root.setLevel(logging.INFO)


def _with_max_time(params, stage: str, minutes: float | None):
    """``params`` with ``<stage>.runtime.max_time_minutes`` replaced (the ``--max-time`` option)."""
    if minutes is None:
        return params
    section = getattr(params, stage)
    runtime = section.runtime.model_copy(update={"max_time_minutes": minutes})
    return params.model_copy(update={stage: section.model_copy(update={"runtime": runtime})})


def _run_stage(name: str, stage, params_path: Path, max_time: float | None = None, **kwargs) -> None:
    """Load params, run one stage, and turn known errors into a one-line message and exit code 1.

    A training stage whose ``runtime.num_processes`` is above 1 relaunches itself under torchrun."""
    from components.config import ConfigError, load_params

    _setup()
    try:
        params = load_params(params_path)
        if name == "distill":
            params = _with_max_time(params, name, max_time)
        if name.startswith("train_"):  # only the training stages import torch.distributed (~3 s of start-up)
            from components.training.distributed import launch_torchrun, under_torchrun

            params = _with_max_time(params, name, max_time)
            nproc = getattr(params, name).runtime.num_processes
            if nproc > 1 and not under_torchrun():
                extra = ["--max-time", str(max_time)] if max_time is not None else []
                launch_torchrun(nproc, ["-m", "pipelines.cli", name, "--params", str(params_path), *extra])
                return
        stage(params, **kwargs)
        if name.startswith("train_"):
            from components.training.distributed import shutdown_distributed

            shutdown_distributed()
    except ConfigError as exc:
        _mark_run_failed(name, exc)
        typer.secho(f"latentflow {name}: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        _mark_run_failed(name, exc)
        typer.secho(f"latentflow {name} failed: {type(exc).__name__}: {exc}", fg="red", err=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            typer.secho(f"The disk is full: free space where the outputs go (df -h {Path.cwd()}) and re-run.", err=True)
        typer.secho("The previous outputs of this stage are left intact.", err=True)
        raise typer.Exit(1) from None
    except BaseException as exc:  # anything else (a bug, Ctrl-C) still ends the execution's MLflow run FAILED
        if not (isinstance(exc, SystemExit) and not exc.code):
            _mark_run_failed(name, exc)
        raise


def _mark_run_failed(name: str, exc: BaseException) -> None:
    """The pipeline execution's open MLflow run (opened by a training stage) ends FAILED; never raises."""
    from pipelines.stages.tracking import mark_failed

    mark_failed(name, exc)


@app.command()
def ingest(params: ParamsOpt = Path("params.yaml")) -> None:
    """Read the source (bundled MNIST or an image folder), split it and write data/dataset."""
    from pipelines.stages import ingest as stage

    _run_stage("ingest", stage.run, params)


@app.command()
def validate(params: ParamsOpt = Path("params.yaml")) -> None:
    """Check the dataset with great-expectations; data docs under reports/validation/data_docs."""
    from pipelines.stages import validate as stage

    _run_stage("validate", stage.run, params)


def _finite_positive(value: float | None) -> float | None:
    """typer callback: a finite number > 0."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"must be a finite number of minutes > 0, got {value}")
    return value


MaxTimeOpt = Annotated[
    float | None,
    typer.Option("--max-time", callback=_finite_positive, help="wall-clock budget in minutes: stop early with a resumable checkpoint "
                 "(overrides runtime.max_time_minutes); rerun the stage to continue"),
]

_TRAINING_HELP = (
    "\n\nRuns in one process, or under torchrun (DDP) when runtime.num_processes > 1. Resumes automatically from "
    "the newest checkpoint in checkpoints/<stage>/ written with the same params and data (every "
    "runtime.checkpoint_every_images images)."
)


@app.command("train_autoencoder", help="Train the autoencoder (KL, VQ or plain; f=4 or 8) -> models/autoencoder, "
             "metrics/autoencoder.json." + _TRAINING_HELP)
def train_autoencoder(params: ParamsOpt = Path("params.yaml"), max_time: MaxTimeOpt = None) -> None:
    from pipelines.stages import train_autoencoder as stage

    _run_stage("train_autoencoder", stage.run, params, max_time=max_time, track=True)


@app.command("train_diffusion", help="Train the class-conditional latent U-Net with EMA -> models/diffusion, loss curve."
             + _TRAINING_HELP)
def train_diffusion(params: ParamsOpt = Path("params.yaml"), max_time: MaxTimeOpt = None) -> None:
    from pipelines.stages import train_diffusion as stage

    _run_stage("train_diffusion", stage.run, params, max_time=max_time, track=True)


@app.command("distill", help="Optional (distill.enabled): distil the EMA U-Net into few-step students with sample.guidance "
             "folded in (guided progressive distillation) -> models/distilled (the last student; rounds/steps_<N>/ each round's), "
             "metrics/distill.json. Disabled, it only writes models/distilled/status.json.\n\nRuns in one process. Each round resumes "
             "automatically from the newest checkpoint in checkpoints/distill/ written with the same params, data and teacher.")
def distill(params: ParamsOpt = Path("params.yaml"), max_time: MaxTimeOpt = None) -> None:
    from pipelines.stages import distill as stage

    _run_stage("distill", stage.run, params, max_time=max_time)


@app.command("reference_stats")
def reference_stats(params: ParamsOpt = Path("params.yaml")) -> None:
    """Train the domain classifier; features and statistics of the real val split per extractor -> reference_stats/."""
    from pipelines.stages import reference_stats as stage

    _run_stage("reference_stats", stage.run, params)


@app.command()
def evaluate(params: ParamsOpt = Path("params.yaml")) -> None:
    """Score the samples (class consistency; FD, KID, precision/recall per extractor) and quality vs steps -> metrics.json."""
    from pipelines.stages import evaluate as stage

    _run_stage("evaluate", stage.run, params)


@app.command()
def register(params: ParamsOpt = Path("params.yaml")) -> None:
    """Log the run to MLflow, register the model, move alias `champion` when it wins."""
    from pipelines.stages import register as stage

    _run_stage("register", stage.run, params)


def _finite_nonnegative(value: float | None) -> float | None:
    """typer callback: a finite number >= 0 (``nan`` and ``inf`` parse as floats, and ``nan`` passes a range check)."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise typer.BadParameter(f"must be a finite number >= 0, got {value}")
    return value


@app.command()
def sample(
    num_per_class: Annotated[int | None, typer.Option("--num-per-class", min=1, help="images per class (per prompt with --prompt), >= 1 "
                                                      "(params: sample.num_per_class)")] = None,
    prompt: Annotated[list[str] | None, typer.Option(metavar="TEXT", help="text prompt, e.g. 'a thick handwritten seven'; repeat for several. Only "
                                                     "for models trained with train_diffusion.conditioning: text; writes OUT/<k>/<index>.png "
                                                     "for the k-th prompt (from 0) and a grid row per prompt. Unknown words are read as "
                                                     "<unk> (with a warning); an empty prompt is the unconditional model")] = None,
    seed: Annotated[int | None, typer.Option(min=0, max=2**63 - 1, help="random seed; same seed, same images (params: base.seed)")] = None,
    out: Annotated[Path, typer.Option(help="output folder: OUT/<label>/<index>.png (replaced; must be new, empty or a samples folder)")] = Path("samples"),
    model: Annotated[str, typer.Option(help="model folder (autoencoder/ + diffusion/) or MLflow URI, e.g. models:/latentflow@champion")] = "models",
    sampler: Annotated[str | None, typer.Option(help=f"{' | '.join(SAMPLERS)} (params: sample.sampler)")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="sampler steps, 1 .. the model's training timesteps; a distilled student "
                                                                 "defaults to its own step count (params: sample.steps)")] = None,
    guidance: Annotated[float | None, typer.Option(callback=_finite_nonnegative,
                                                   help="classifier-free guidance scale, >= 0; 1 = none (params: sample.guidance)")] = None,
    eta: Annotated[float | None, typer.Option(callback=_finite_nonnegative, help="DDIM eta, >= 0 (0 deterministic, 1 DDPM-like) (params: sample.eta)")] = None,
    grid: Annotated[Path | None, typer.Option(help="also write a grid PNG (one row per class) here")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N; auto = CUDA when present (params: base.device)")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="images per sampler call (memory; the images do "
                                                   "not depend on it) (params: sample.batch_size)")] = None,
    guidance_rescale: Annotated[float | None, typer.Option("--guidance-rescale", min=0.0, max=1.0,
                                                           help="rescaled guidance phi in [0, 1] (Lin et al. 2024): pulls the guided "
                                                                "prediction's spread back to the conditional one's; 0 = off "
                                                                "(params: sample.guidance_rescale)")] = None,
    guidance_interval: Annotated[str | None, typer.Option("--guidance-interval", metavar="LO,HI",
                                                          help="guide only at noise levels sigma in (LO, HI] (Kynkäänniemi et al. "
                                                               "2024), e.g. 0.3,5; 'none' = every step (params: sample.guidance_interval)")] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Generate images: OUT/<label>/<index>.png at the dataset's resolution, or, with --prompt (text-conditioned
    models), OUT/<k>/<index>.png for the k-th prompt.

    Defaults come from params.yaml's `sample` section when the file exists. Every option is checked before any
    work; on failure nothing is written to OUT or GRID.
    """
    from components.config import ConfigError, Params, load_params
    from components.data.samples import check_samples_target
    from components.errors import OptionError

    _setup()
    from components.registry.lineage import resolve_tracking_uri
    from pipelines.stages import sample as stage

    try:
        cfg = load_params(params) if params.is_file() else Params()
    except ConfigError as exc:
        typer.secho(f"latentflow sample: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    s = cfg.sample
    sampler = s.sampler if sampler is None else sampler
    problems = []
    if sampler not in SAMPLERS:
        problems.append(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    try:
        check_samples_target(out)
    except ValueError as exc:
        problems.append(f"--out: {exc}")
    if grid is not None and grid.is_dir():
        problems.append(f"--grid {grid} is a folder; give the path of a PNG file, e.g. {grid / 'samples_grid.png'}")
    if problems:
        for line in problems:
            typer.secho(f"latentflow sample: {line}", fg="red", err=True)
        raise typer.Exit(2)
    if cfg.base.num_threads:  # the stages apply base.num_threads; so does sampling
        import torch

        torch.set_num_threads(cfg.base.num_threads)
    try:
        stage.run(
            model=model, out_dir=out, num_per_class=s.num_per_class if num_per_class is None else num_per_class,
            seed=cfg.base.seed if seed is None else seed, sampler=sampler, steps=steps, default_steps=s.steps,
            guidance=s.guidance if guidance is None else guidance, eta=s.eta if eta is None else eta,
            timestep_spacing=s.timestep_spacing, grid_path=grid, tracking_uri=resolve_tracking_uri(cfg.register_.tracking_uri),
            device=cfg.base.device if device is None else device, device_key="base.device" if device is None else "--device",
            batch_size=s.batch_size if batch_size is None else batch_size, prompts=list(prompt) if prompt else None,
            guidance_rescale=s.guidance_rescale if guidance_rescale is None else guidance_rescale,
            guidance_interval=s.guidance_interval if guidance_interval is None else _interval(guidance_interval),
        )
        if prompt:
            for k, text in enumerate(prompt):
                typer.echo(f"{out}/{k}: {text!r}")
    except (OptionError, ConfigError) as exc:
        typer.secho(f"latentflow sample: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        typer.secho(f"latentflow sample failed: {type(exc).__name__}: {exc}", fg="red", err=True)
        typer.secho(f"Nothing was written to {out}.", err=True)
        raise typer.Exit(1) from None


def _interval(text: str) -> tuple[float, float] | None:
    """``--guidance-interval LO,HI`` (or ``none``) as a sigma interval; an :class:`OptionError` for anything else."""
    from components.diffusion.options import guidance_interval_ok
    from components.errors import OptionError

    if text.strip().lower() in ("none", "null", ""):
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise OptionError(f"--guidance-interval {text!r}: give two numbers LO,HI (noise levels sigma), e.g. 0.3,5, or 'none'") from None
    if not guidance_interval_ok(lo, hi):
        raise OptionError(f"--guidance-interval {text!r}: needs finite 0 <= LO < HI")
    return lo, hi


def _strength(value: float | None) -> float | None:
    """typer callback: a strength in [0, 1]."""
    if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise typer.BadParameter(f"must be in [0, 1] (0 = keep the image, 1 = start from pure noise), got {value}")
    return value


def resolve_label(label: str, class_names: list, num_classes: int) -> int:
    """``--label``: a class name of the model (its ``class_names``, e.g. ``cat``), else an index 0 .. num_classes - 1."""
    from components.errors import OptionError

    names = [str(n) for n in class_names]
    if label in names:
        return names.index(label)
    try:
        index = int(label)
    except ValueError:
        index = None
    if index is not None and 0 <= index < num_classes:
        return index
    raise OptionError(f"--label {label!r} is not a class of this model: give an index 0..{num_classes - 1} or one of its class "
                      f"names {names}")


@app.command()
def edit(
    image: Annotated[Path, typer.Option(help="input image (PNG) at the model's size and channels, e.g. 32x32 greyscale for the "
                                             "MNIST model")],
    label: Annotated[str, typer.Option(help="class to edit toward: a class name of the model or an index 0..N-1")],
    out: Annotated[Path, typer.Option(help="output PNG; written atomically (an existing file is replaced only on success)")],
    strength: Annotated[float | None, typer.Option(
        callback=_strength, help="how much to change, 0..1: the sampler runs the last strength x STEPS of its steps from the "
        "image noised to that level (SDEdit). 0 = the autoencoder's reconstruction of the image, 1 = start from pure noise "
        f"(ignores the image outside the mask). (default: {DEFAULT_STRENGTH} without --mask, {DEFAULT_INPAINT_STRENGTH} with it)")] = None,
    mask: Annotated[Path | None, typer.Option(
        help="inpainting: a PNG of the image's size, white = repaint, black = keep. The kept region is the input's latent at "
        "every step (Blended Latent Diffusion) and the input's own pixels in the output")] = None,
    resample_steps: Annotated[int | None, typer.Option(
        min=0, help="RePaint resampling (needs --mask): re-noise and redo every step R more times, so the repainted region "
        f"fits the kept one; each costs one more model call per step (default: {DEFAULT_RESAMPLE_STEPS})")] = None,
    paste: Annotated[bool, typer.Option(
        help="with --mask: put the input's pixels back outside the mask (--no-paste keeps the decoder's output there, which "
        "differs from the input by about the autoencoder's reconstruction error)")] = True,
    seed: Annotated[int | None, typer.Option(min=0, max=2**63 - 1, help="random seed; same seed, same result (params: base.seed)")] = None,
    model: Annotated[str, typer.Option(help="model folder (autoencoder/ + diffusion/) or MLflow URI, e.g. models:/latentflow@champion")] = "models",
    sampler: Annotated[str | None, typer.Option(help=f"{' | '.join(SAMPLERS)} (params: sample.sampler)")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="sampler steps of a full run (strength 1); 1 .. the model's training "
                                                        "timesteps (params: sample.steps)")] = None,
    guidance: Annotated[float | None, typer.Option(callback=_finite_nonnegative,
                                                   help="classifier-free guidance scale, >= 0; 1 = none (params: sample.guidance)")] = None,
    eta: Annotated[float | None, typer.Option(callback=_finite_nonnegative, help="DDIM eta, >= 0 (params: sample.eta)")] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Edit an image toward a class: image-to-image (SDEdit) with --strength, or inpainting with --mask.

    Defaults come from params.yaml's `sample` section (sampler, steps, guidance, eta, timestep spacing) and `base.seed`.
    Inputs are checked before any work (exit 2 names the problem); on failure OUT is left as it was.
    """
    from components.config import ConfigError, Params, load_params
    from components.errors import OptionError
    from components.images import encode_png, read_image, read_mask
    from components.io import atomic_write_bytes

    _setup()
    from components.registry.lineage import resolve_tracking_uri
    from pipelines.stages.sample import load_generator

    def fail(message: str, code: int = 2) -> typer.Exit:
        typer.secho(f"latentflow edit: {message}", fg="red", err=True)
        return typer.Exit(code)

    try:
        cfg = load_params(params) if params.is_file() else Params()
    except ConfigError as exc:
        raise fail(str(exc)) from None
    s = cfg.sample
    sampler = s.sampler if sampler is None else sampler
    problems = []
    if sampler not in SAMPLERS:
        problems.append(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if out.suffix.lower() != ".png" or out.is_dir():
        problems.append(f"--out {out}: give the path of a .png file to write (e.g. {out.with_suffix('.png').name})")
    if resample_steps and mask is None:
        problems.append("--resample-steps needs --mask: RePaint harmonises the repainted region with the kept one")
    pixels = masks = None
    try:
        pixels = read_image(image, "--image")
    except ValueError as exc:
        problems.append(str(exc))
    if mask is not None:
        try:
            mask_pixels = read_mask(mask, "--mask")
            if pixels is not None and mask_pixels.shape != pixels.shape[:2]:
                problems.append(f"--mask {mask} is {mask_pixels.shape[1]}x{mask_pixels.shape[0]} pixels but --image {image} is "
                                f"{pixels.shape[1]}x{pixels.shape[0]}: they must be the same size")
            else:
                masks = mask_pixels[None]
                if not masks.any():
                    problems.append(f"--mask {mask} has no white pixel: nothing to repaint (white = repaint, black = keep)")
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        for line in problems:
            typer.secho(f"latentflow edit: {line}", fg="red", err=True)
        raise typer.Exit(2)
    if cfg.base.num_threads:
        import torch

        torch.set_num_threads(cfg.base.num_threads)
    try:
        gen = load_generator(model, "cpu", resolve_tracking_uri(cfg.register_.tracking_uri))
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        raise fail(f"cannot load the model {model}: {type(exc).__name__}: {exc}", 1) from None
    steps = s.steps if steps is None else steps
    try:
        gen.check_image(pixels, f"--image {image}")
        class_label = resolve_label(label, gen.class_names, gen.num_classes)
        if not 1 <= steps <= len(gen.betas):
            raise OptionError(f"--steps {steps}: the model was trained with {len(gen.betas)} timesteps; choose --steps from 1 to "
                              f"{len(gen.betas)}")
    except ValueError as exc:
        raise fail(str(exc)) from None
    default_strength = DEFAULT_STRENGTH if masks is None else DEFAULT_INPAINT_STRENGTH
    try:
        result = gen.edit(
            pixels[None], [class_label], masks=masks, seed=cfg.base.seed if seed is None else seed,
            strength=default_strength if strength is None else strength,
            resample_steps=DEFAULT_RESAMPLE_STEPS if resample_steps is None else resample_steps, sampler=sampler, steps=steps,
            guidance=s.guidance if guidance is None else guidance, eta=s.eta if eta is None else eta,
            timestep_spacing=s.timestep_spacing, paste_pixels=paste,
        )
        atomic_write_bytes(out, encode_png(result[0]))
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        typer.secho(f"latentflow edit failed: {type(exc).__name__}: {exc}", fg="red", err=True)
        typer.secho(f"Nothing was written to {out}.", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {out} (class {gen.class_names[class_label]!s}, strength "
               f"{default_strength if strength is None else strength}{', inpainting' if masks is not None else ''})")


@app.command()
def run(force: Annotated[bool, typer.Option(help="re-run every stage (dvc repro --force)")] = False) -> None:
    """Run the whole pipeline with `dvc repro` (stages that are up to date are skipped)."""
    _setup()
    raise typer.Exit(subprocess.call(["dvc", "repro", *(["--force"] if force else [])]))


@app.command("exp-preset")
def exp_preset(
    preset: Annotated[str, typer.Argument(help="a folder name under presets/, e.g. cifar10")],
    queue: Annotated[bool, typer.Option(help="queue it (`dvc exp run --queue`); start with `dvc queue start`")] = False,
    name: Annotated[str | None, typer.Option(help="experiment name; default the preset's")] = None,
    dry_run: Annotated[bool, typer.Option(help="print the `dvc exp run` command only")] = False,
) -> None:
    """Run a params preset as a DVC experiment of this repository: `dvc exp run -n PRESET -S key=value ...` with every
    key of presets/PRESET/params.yaml, so `dvc exp show` and `dvc plots diff` compare it with main and other experiments."""
    import shlex

    from components.config import ConfigError
    from pipelines.presets import preset_overrides

    _setup()
    try:
        overrides = preset_overrides(preset)
    except (ConfigError, OSError) as exc:
        typer.secho(f"latentflow exp-preset: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    cmd = ["dvc", "exp", "run", "-n", name or preset, *(["--queue"] if queue else []), *[a for o in overrides for a in ("-S", o)]]
    typer.echo(shlex.join(cmd))
    if not dry_run:
        raise typer.Exit(subprocess.call(cmd))


@app.command("init-run")
def init_run(
    preset: Annotated[str, typer.Argument(help="a folder name under presets/, e.g. cifar10")],
    dest: Annotated[Path | None, typer.Option(help="run directory; default runs/<preset>")] = None,
    repro: Annotated[bool, typer.Option(help="then run `dvc repro` in it")] = False,
) -> None:
    """Lay out a run directory for a params preset (dvc.yaml + params.yaml = project params merged with
    presets/<preset>/params.yaml); `cd` there and run `dvc repro`. A DVC project without git of its own (`dvc exp`
    does not work there): its outputs and mlflow.db stay apart from the workspace's. `latentflow exp-preset` runs the
    preset as an experiment of this repository instead."""
    from components.config import ConfigError
    from pipelines.presets import init_run_dir

    _setup()
    try:
        out = init_run_dir(preset, dest or Path("runs") / preset)
    except (ConfigError, ValueError, OSError) as exc:
        typer.secho(f"latentflow init-run: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"run directory ready: {out}\n  cd {out} && dvc repro")
    if repro:
        raise typer.Exit(subprocess.call(["dvc", "repro"], cwd=out))


@app.command()
def flow(
    stages: Annotated[list[str] | None, typer.Option("--stage", help="run only these stages (repeatable)")] = None,
) -> None:
    """Run the pipeline as a Prefect flow (local ephemeral mode): one task per dvc.yaml stage, in DAG order."""
    _setup()
    # Prefect's own 20 s for its temporary server is too short on a busy 2-core machine (seen: a timeout under load)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from pipelines.flow import latentflow_pipeline

    try:
        latentflow_pipeline(project_dir=str(Path.cwd()), only=stages)
    except RuntimeError as exc:
        typer.secho(f"latentflow flow failed: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None


@app.command("add-data")
def add_data_cmd(
    src: Annotated[Path, typer.Argument(help="a folder of <class>/*.png|jpg images, or a .tar of one")],
    name: Annotated[str | None, typer.Option(help="folder name under data/raw (default: the source's name)")] = None,
    channels: Annotated[int | None, typer.Option(min=1, max=3, help="1 (grey) or 3 (RGB) (params: ingest.channels)")] = None,
    image_size: Annotated[int | None, typer.Option(min=8, max=512, help="resize to this square size, 8..512 (params: ingest.image_size)")] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Put your images under DVC and train on them: copy SRC to data/raw/NAME, `dvc add` it, and set
    ingest.source=image_folder and ingest.root=data/raw/NAME in params.yaml.

    Run it again on data/raw/NAME after adding or changing images to record the new version; `dvc repro`
    re-runs ingest and everything downstream either way."""
    from components.config import ConfigError
    from pipelines.rawdata import AddDataError, add_data

    _setup()
    try:
        rel = add_data(src, name=name, project=Path.cwd(), params_path=params.resolve(), channels=channels, image_size=image_size)
    except (AddDataError, ConfigError, OSError) as exc:
        typer.secho(f"latentflow add-data: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{rel} is tracked by DVC ({rel}.dvc) and params.yaml's ingest.root points at it. Next:\n"
               f"  git add {rel}.dvc {rel.parent}/.gitignore {params} && git commit -m 'data: {rel.name}'\n"
               f"  dvc push   # when a remote is configured\n  dvc repro")


@app.command()
def deps(
    write: Annotated[bool, typer.Option("--write", help="rewrite the code entries of dvc.yaml's deps")] = False,
    check: Annotated[bool, typer.Option("--check", help="exit 1 when dvc.yaml lists other code than the stages import")] = False,
) -> None:
    """The code each stage runs (its module under pipelines/stages/ and every project file it imports), as
    dvc.yaml lists it in the stage's deps. Default: print it; --check compares; --write updates dvc.yaml."""
    from pipelines.codedeps import stage_code, stale_stages, write_code_deps
    from pipelines.flow import _declared_stages

    dvc_yaml = Path.cwd() / "dvc.yaml"
    if write:
        changed = write_code_deps(dvc_yaml, Path.cwd())
        typer.echo(f"updated the code deps of: {', '.join(changed)}" if changed else "dvc.yaml's code deps are up to date")
        return
    if check:
        stale = stale_stages(dvc_yaml, Path.cwd())
        for name, (missing, extra) in stale.items():
            typer.secho(f"{name}: missing {missing or '-'}; not imported {extra or '-'}", fg="red", err=True)
        if stale:
            typer.secho("run `latentflow deps --write` to update dvc.yaml", err=True)
            raise typer.Exit(1)
        typer.echo("dvc.yaml's code deps match the stages' imports")
        return
    for name in _declared_stages(dvc_yaml):
        typer.echo(f"{name}:")
        for path in stage_code(name, Path.cwd()):
            typer.echo(f"  {path}")


@app.command()
def dag() -> None:
    """Print the stage order the flow will use (read from dvc.yaml)."""
    from pipelines.flow import stage_order

    for name in stage_order(Path.cwd()):
        typer.echo(name)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
