"""MLflow packaging and registration of the latent-diffusion generator.

Everything here talks to MLflow through an explicit ``MlflowClient`` and explicit
run ids: no fluent active run and no global tracking URI is read or written, so
the functions are safe to call from Prefect task threads.

The model is logged with MLflow's *models from code* (``pyfunc_model.py``): nothing of ours is
pickled. It carries a copy of the ``components`` package (``code_paths``: MLflow puts the model's
``code/`` first on ``sys.path`` before running ``pyfunc_model.py``) and ``==`` pins of what loading and
predicting import (:func:`pinned_requirements`), so ``mlflow models serve`` works in a fresh environment
built from the model's ``requirements.txt`` alone. Against a tracking server the HTTP retries are bounded
(``RetryPolicy``); an outage ends in a ``RegistryError`` naming the step that failed, and a model version
that was created but not fully tagged and aliased is deleted.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import importlib.metadata
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.artifacts
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModel, LoggedModelOutput, LoggedModelStatus, Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.types.schema import ColSpec, Schema

from components.diffusion.options import DEFAULT_GUIDANCE, DEFAULT_INPAINT_STRENGTH, DEFAULT_RESAMPLE_STEPS, DEFAULT_STRENGTH
from components.images import decode_image, decode_mask, encode_png
from components.registry.tracking import (
    RetryPolicy,
    flatten_params,
    log_history,
    resume_or_create_run,
)
from components.registry.tracking import experiment_id as find_or_create_experiment

log = logging.getLogger("latentflow")
CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_DESCRIPTION = (
    "latentflow: class-conditional latent diffusion image generators (KL autoencoder + EMA U-Net), one version per "
    "pipeline run. Alias `champion`: the version that won on the primary metric (tag `metric.<name>`); `challenger`: "
    "the newest that did not. Each version's description says what it generates and from which data; its artifacts "
    "hold the sample grid and lineage.json (code commit, raw-data DVC hash, dataset digest, params hash). "
    "Load: mlflow.pyfunc.load_model('models:/<name>@champion'), or `latentflow sample --model models:/<name>@champion`."
)
MODEL_NAME_IN_RUN = "model"
DEVICE_ENV = "LATENTFLOW_DEVICE"  # device of a served pyfunc when the loader passes no model_config["device"]; default cpu
MODEL_CODE_PATH = Path(__file__).with_name("pyfunc_model.py")
# What loading + predicting imports (pyfunc_model -> this module -> components.generation): MLflow, torch and
# safetensors (checkpoints), numpy, pandas, Pillow (PNG). Pinned with == to the installed versions at registration.
SERVING_DISTRIBUTIONS = ("mlflow", "torch", "numpy", "pandas", "safetensors", "pillow")
CODE_PACKAGE = Path(__file__).resolve().parents[1]  # components/: bundled as the model's code/components
DEFAULTS: dict[str, Any] = {"num_images": 1, "sampler": "ddim", "steps": 50, "guidance": DEFAULT_GUIDANCE, "seed": 0}

SIGNATURE = ModelSignature(
    inputs=Schema([
        # one of class_label (class-conditioned models; text models take the class name as the prompt) or prompt (text
        # models). class_label stays long (MLflow refuses int64 for a double column): a served request therefore holds
        # prompt rows or class rows, not both (pandas makes a long column with gaps float64, which the schema refuses)
        ColSpec("long", "class_label", required=False),
        ColSpec("string", "prompt", required=False),
        ColSpec("long", "num_images", required=False),
        ColSpec("string", "sampler", required=False),
        ColSpec("long", "steps", required=False),
        ColSpec("double", "guidance", required=False),
        ColSpec("long", "seed", required=False),
        # editing (``latentflow edit``): base64-encoded PNGs of the model's image size; see LatentDiffusionPyfunc.predict.
        # resample_steps is a whole number declared double: in a request mixing editing and plain rows it is missing on
        # the plain ones, and pandas holds an integer column with missing values as float64, which a long column refuses
        ColSpec("string", "image", required=False),
        ColSpec("string", "mask", required=False),
        ColSpec("double", "strength", required=False),
        ColSpec("double", "resample_steps", required=False),
    ]),
    outputs=Schema([
        ColSpec("long", "class_label"),  # -1 on prompt rows
        ColSpec("string", "prompt"),  # "" on class rows
        ColSpec("long", "seed"),
        ColSpec("binary", "image"),
        ColSpec("long", "height"),
        ColSpec("long", "width"),
        ColSpec("long", "channels"),
    ]),
)
INPUT_EXAMPLE = pd.DataFrame(
    {"class_label": [0], "num_images": [1], "sampler": ["ddim"], "steps": [10], "guidance": [3.0], "seed": [0]}
)


class LatentDiffusionPyfunc(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper: one input row -> ``num_images`` PNG-encoded samples of ``class_label`` or of ``prompt``."""

    def __init__(self) -> None:
        self._generator = None

    def load_context(self, context) -> None:
        """Load the generator from the ``model_dir`` artifact (autoencoder/ + diffusion/) onto the device the caller
        asks for: ``mlflow.pyfunc.load_model(uri, model_config={"device": "cuda"})``, else the environment variable
        ``LATENTFLOW_DEVICE`` (what ``mlflow models serve`` can pass), else the CPU. ``auto`` takes CUDA when present;
        asking for CUDA where there is none fails at load time, naming the setting. (Models registered before the
        ``device`` model config existed ignore ``model_config``, with MLflow's warning; the variable still works.)"""
        from components.generation import LatentDiffusionGenerator

        self._generator = LatentDiffusionGenerator.from_dir(context.artifacts["model_dir"], device=serving_device(context))

    @property
    def generator(self):
        """The loaded ``LatentDiffusionGenerator`` (after ``load_context``)."""
        if self._generator is None:
            raise RuntimeError("generator not loaded; load the model with mlflow.pyfunc.load_model")
        return self._generator

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Generate images; the returned frame has one row per image.

        Missing optional columns / null cells default to num_images=1, sampler="ddim",
        steps=50, guidance=3.0, seed=0. ``seed`` is the seed of the row's batch.

        Each row gives ``class_label`` (an integer in ``[0, num_classes)``) or ``prompt`` (a text-conditioned model's
        prompt, e.g. "a thick handwritten seven"; see :meth:`~components.generation.LatentDiffusionGenerator.condition`),
        not both; a class-conditioned model refuses prompts. Output rows carry ``class_label`` (-1 for prompt rows) and
        ``prompt`` ("" for class rows).

        Editing: a row with ``image`` (a base64-encoded PNG of the model's size and channels, the same encoding as
        the output's ``image``) returns ``num_images`` edits of it toward ``class_label``
        (:meth:`~components.generation.LatentDiffusionGenerator.edit`): image-to-image with ``strength`` in [0, 1]
        (default 0.6), or, with ``mask`` (a base64 PNG of the same size; white = repaint, black = keep), inpainting
        (``strength`` default 1, ``resample_steps`` RePaint resamplings per step, default 0). Rows without
        ``image`` generate exactly as before; ``mask``, ``strength`` or ``resample_steps`` without ``image`` are an error.
        """
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        generator = self.generator
        rows: list[dict[str, Any]] = []
        for index, record in enumerate(frame.to_dict(orient="records")):
            row = {key: _or_default(record.get(key), default) for key, default in DEFAULTS.items()}
            label, prompt = _or_default(record.get("class_label"), None), _or_default(record.get("prompt"), None)
            if (label is None) == (prompt is None):
                raise ValueError(f"row {index}: give class_label or prompt (one of them, not {'both' if label is not None else 'neither'})")
            if label is not None:
                if isinstance(label, bool) or not isinstance(label, int | float | np.integer | np.floating) or label != int(label):
                    raise ValueError(f"row {index}: class_label must be a whole number, got {label!r}")
                label = int(label)
                if not 0 <= label < generator.num_classes:
                    raise ValueError(f"class_label {label} outside [0, {generator.num_classes})")
            else:
                if not isinstance(prompt, str):
                    raise ValueError(f"row {index}: prompt must be a string, got {type(prompt).__name__}")
                generator.condition(None, [prompt])  # a class model, or a prompt too long: the error says what to do
            count = int(row["num_images"])
            if count < 1:
                raise ValueError(f"num_images must be >= 1, got {count}")
            edit = {key: _or_default(record.get(key), None) for key in ("image", "mask", "strength", "resample_steps")}
            given_steps = _or_default(record.get("steps"), None)  # a distilled student defaults to its own step count
            student_steps = getattr(generator, "default_steps", None)
            steps = int(row["steps"]) if given_steps is not None or student_steps is None else student_steps
            settings = {"seed": int(row["seed"]), "sampler": str(row["sampler"]), "steps": steps,
                        "guidance": float(row["guidance"])}
            if edit["image"] is None:
                given = [key for key, value in edit.items() if value is not None]
                if given:
                    raise ValueError(f"row {index}: {', '.join(given)} apply to editing and need an 'image' (a base64 PNG)")
                if prompt is not None:
                    images = generator.generate(None, prompts=[prompt] * count, **settings)
                else:
                    images = generator.generate([label] * count, **settings)
            elif prompt is not None:
                raise ValueError(f"row {index}: editing takes a class_label; prompts apply to generation (rows without 'image')")
            else:
                image = decode_image(_png_bytes(edit["image"], f"row {index}: image"), f"row {index}: image")
                generator.check_image(image, f"row {index}: image")
                masks = None
                if edit["mask"] is not None:
                    mask = decode_mask(_png_bytes(edit["mask"], f"row {index}: mask"), f"row {index}: mask")
                    if mask.shape != image.shape[:2]:
                        raise ValueError(f"row {index}: mask is {mask.shape[1]}x{mask.shape[0]} pixels, image {image.shape[1]}x"
                                         f"{image.shape[0]}: they must be the same size")
                    masks = np.repeat(mask[None], count, axis=0)
                default_strength = DEFAULT_STRENGTH if masks is None else DEFAULT_INPAINT_STRENGTH
                resample = float(_or_default(edit["resample_steps"], DEFAULT_RESAMPLE_STEPS))
                if not (math.isfinite(resample) and resample == int(resample) and resample >= 0):
                    raise ValueError(f"row {index}: resample_steps must be a whole number >= 0, got {edit['resample_steps']}")
                images = generator.edit(
                    np.repeat(image[None], count, axis=0), [label] * count, masks=masks,
                    strength=float(_or_default(edit["strength"], default_strength)), resample_steps=int(resample), **settings,
                )
            for image in images:
                height, width, channels = (*image.shape[:2], image.shape[2] if image.ndim == 3 else 1)
                rows.append({"class_label": -1 if label is None else label, "prompt": prompt or "", "seed": int(row["seed"]), "image": encode_png(image),
                             "height": height, "width": width, "channels": channels})
        return pd.DataFrame(rows, columns=[c.name for c in SIGNATURE.outputs.inputs])


def serving_device(context) -> Any:
    """The device a loaded pyfunc generates on (see :meth:`LatentDiffusionPyfunc.load_context`), as a ``torch.device``."""
    from components.device import resolve_device

    config = getattr(context, "model_config", None) or {}
    if config.get("device") is not None:
        return resolve_device(config["device"], key="model_config['device']")
    if os.environ.get(DEVICE_ENV):
        return resolve_device(os.environ[DEVICE_ENV], key=f"the environment variable {DEVICE_ENV}")
    return resolve_device("cpu")


def _png_bytes(value: Any, what: str) -> bytes:
    """The bytes of a base64-encoded PNG (``str``), or the bytes themselves (in-process callers may pass ``bytes``)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a base64-encoded PNG string, got {type(value).__name__}")
    try:  # whitespace is dropped: MLflow's own responses break their base64 every 76 characters
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{what} is not valid base64 ({exc}); send the PNG file's bytes base64-encoded") from None


def _or_default(value: Any, default: Any) -> Any:
    """Return ``default`` when ``value`` is missing (None / NaN / pd.NA)."""
    return default if value is None or (not isinstance(value, str) and pd.isna(value)) else value


@dataclass
class PromotionDecision:
    promote: bool  # True -> the new version becomes "champion"
    reason: str  # human-readable, includes both figures
    new_value: float
    champion_value: float | None


def decide_promotion(
    new_value: float, champion_value: float | None, *, greater_is_better: bool, min_improvement: float
) -> PromotionDecision:
    """Decide whether a new model replaces the champion.

    No champion (None) -> promote. NaN new value -> never promote. Otherwise promote iff the new value
    beats the champion (strictly) by at least ``min_improvement``: ``gain > 0 and gain >= min_improvement``
    with ``gain = new - champ`` (higher is better) or ``champ - new`` (lower is better).
    """
    new_value = float(new_value)
    if math.isnan(new_value):
        return PromotionDecision(False, f"new value is NaN (champion {champion_value}); not promoting",
                                 new_value, champion_value)
    if champion_value is None or math.isnan(champion_value):
        return PromotionDecision(True, f"no champion value to compare against; promoting new value {new_value:.6g}",
                                 new_value, champion_value)
    gain = new_value - champion_value if greater_is_better else champion_value - new_value
    direction = "higher" if greater_is_better else "lower"
    promote = gain > 0 and gain >= min_improvement
    verdict = "promoting" if promote else "keeping champion"
    reason = (f"new {new_value:.6g} vs champion {champion_value:.6g} ({direction} is better): improvement "
              f"{gain:.6g} (needs > 0 and >= min_improvement {min_improvement:.6g}); {verdict}")
    return PromotionDecision(promote, reason, new_value, float(champion_value))


@dataclass
class RegistrationResult:
    run_id: str
    model_name: str
    version: str
    alias: str  # "champion" or "challenger"
    decision: PromotionDecision
    model_uri: str  # models:/NAME/VERSION
    experiment_id: str = ""


def pinned_requirements() -> list[str]:
    """``name==version`` of each of :data:`SERVING_DISTRIBUTIONS`, as installed in this environment."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in SERVING_DISTRIBUTIONS]


def _copy_code_package(dest: Path) -> Path:
    """Copy :data:`CODE_PACKAGE` (sources only: no ``__pycache__`` or compiled files) to ``dest/components``."""
    target = dest / CODE_PACKAGE.name
    shutil.copytree(CODE_PACKAGE, target, ignore=shutil.ignore_patterns("__pycache__", "*.py[cod]"))
    return target


def save_pyfunc(path: Path, model_dir: Path, code_dir: Path, mlflow_model: Model | None = None) -> None:
    """Save the pyfunc (models from code, the ``components`` package copied under ``code_dir``) at ``path``.

    ``model_config={"device": None}`` declares the one load-time setting: MLflow passes only the keys a model was saved
    with, so ``mlflow.pyfunc.load_model(uri, model_config={"device": "cuda"})`` reaches ``load_context`` and ``None``
    falls back to ``LATENTFLOW_DEVICE``, then the CPU."""
    mlflow.pyfunc.save_model(
        path=str(path), python_model=str(MODEL_CODE_PATH),
        artifacts={"model_dir": str(model_dir)}, signature=SIGNATURE, input_example=INPUT_EXAMPLE,
        code_paths=[str(_copy_code_package(code_dir))], pip_requirements=pinned_requirements(),
        model_config={"device": None}, mlflow_model=mlflow_model,
    )


def _log_pyfunc(client: MlflowClient, experiment_id: str, run_id: str, model_dir: Path) -> LoggedModel:
    """Save the pyfunc locally and upload it as a LoggedModel output of ``run_id``."""
    logged = client.create_logged_model(experiment_id, name=MODEL_NAME_IN_RUN, source_run_id=run_id)
    try:
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        with tempfile.TemporaryDirectory() as tmp:
            local_path = Path(tmp, "model")
            save_pyfunc(local_path, model_dir, Path(tmp, "code"), Model(artifact_path=logged.artifact_location, run_id=run_id,
                                                                        model_uuid=logged.model_id, model_id=logged.model_id))
            client.log_model_artifacts(logged.model_id, str(local_path))
    except BaseException:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    return client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)


def _champion(client: MlflowClient, model_name: str, metric_tag: str) -> tuple[str | None, float | None]:
    """Current champion version and its recorded metric value (None when absent)."""
    version = client.get_registered_model(model_name).aliases.get(CHAMPION)
    if version is None:
        return None, None
    raw = client.get_model_version(model_name, str(version)).tags.get(metric_tag)
    try:
        return str(version), float(raw) if raw is not None else None
    except ValueError:
        return str(version), None


class RegistryError(RuntimeError):
    """The tracking server or its artifact store failed; the message names the step and the URI."""


def _dataset_input(dataset: dict[str, str]) -> DatasetInput:
    """The training dataset as an MLflow dataset input (what ``mlflow.log_input`` records), by digest."""
    entity = Dataset(name=dataset.get("name", "dataset"), digest=dataset["digest"][:36], source_type=dataset.get("source_type", "local"),
                     source=dataset.get("source", "data/dataset"), profile=dataset.get("profile"))
    return DatasetInput(entity, tags=[InputTag("mlflow.data.context", "training")])


def register_model(
    *, tracking_uri: str, experiment: str, model_name: str, model_dir: Path, params: dict,
    metrics: dict[str, float], artifacts: list[Path], primary_metric: str, greater_is_better: bool,
    min_improvement: float, tags: dict[str, str], run_name: str | None = None,
    artifact_location: str | None = None, dataset: dict[str, str] | None = None,
    retry: RetryPolicy = RetryPolicy(), description: str = "", run_id: str | None = None,
    histories: dict[str, list[dict]] | None = None, run_tags: dict[str, str] | None = None, alias: str | None = None,
) -> RegistrationResult:
    """Log a training result as an MLflow run + pyfunc model, register it and assign an alias.

    The new version becomes ``champion`` if ``decide_promotion`` says so against the current
    champion's ``metric.<primary_metric>`` version tag, else ``challenger``; the decision, both
    figures and the compared version are tagged on the version. ``tags`` (lineage: git commit,
    dvc.lock hashes, dataset digest) go on the run and on the version; ``dataset`` (name, digest,
    source) is logged as the run's training input. ``artifact_location`` is only used when the
    experiment has to be created. The run ends FINISHED, or FAILED on error; a version created
    before the error is deleted (no half-registered versions) and a ``RegistryError`` names the
    step that failed. ``description`` (what the version generates, from which data) becomes the version's
    description, followed by the promotion decision; the registered model gets :data:`MODEL_DESCRIPTION`.

    ``run_id``: the pipeline execution's run, opened by a training stage (``components/registry/tracking.py``): when it
    is still RUNNING everything is logged into it (else a new run is created). ``histories`` (prefix -> loss history
    points with ``step``) are logged as step metrics ``<prefix>/<name>`` where the run lacks them (training stages
    that DVC did not re-run in this execution). ``run_tags`` go on the run only (e.g. the DVC experiment name).

    ``alias`` (e.g. ``fast`` for a distilled student): set that alias on the new version without a promotion decision
    (``champion``/``challenger`` are left alone); ``primary_metric`` is then recorded if present, not required.
    """
    if alias in (CHAMPION, CHALLENGER):
        raise ValueError(f"alias {alias!r} is set by the promotion rule; pass alias=None, or another alias such as 'fast'")
    if alias is None and primary_metric not in metrics:
        raise KeyError(f"primary metric {primary_metric!r} not in metrics {sorted(metrics)}")
    client = MlflowClient(tracking_uri)
    state: dict[str, Any] = {"step": "connect to the tracking server", "run_id": None, "version": None}
    with retry.applied():
        try:
            return _register(client, state, experiment=experiment, model_name=model_name, model_dir=Path(model_dir), params=params,
                             metrics=metrics, artifacts=artifacts, primary_metric=primary_metric, greater_is_better=greater_is_better,
                             min_improvement=min_improvement, tags=tags, run_name=run_name, artifact_location=artifact_location,
                             dataset=dataset, description=description, run_id=run_id, histories=histories or {},
                             run_tags=run_tags or {}, alias=alias)
        except BaseException as exc:
            _roll_back(client, model_name, state)
            if isinstance(exc, MlflowException | OSError) and not isinstance(exc, FileNotFoundError):
                raise RegistryError(
                    f"MLflow registration failed while trying to {state['step']} (tracking URI {tracking_uri}, "
                    f"{retry.max_retries} HTTP retries): {_short(exc)}. No model version was registered; check that the "
                    "tracking server and its artifact store are up (infra/README.md) and re-run `latentflow register`."
                ) from exc
            raise


def _short(exc: BaseException, limit: int = 600) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + " ..."


def _roll_back(client: MlflowClient, model_name: str, state: dict[str, Any]) -> None:
    """Best effort after a failure: delete the half-registered version, mark the run FAILED."""
    if state["version"] is not None:
        with contextlib.suppress(Exception):
            client.delete_model_version(model_name, state["version"])
    if state["run_id"] is not None:
        with contextlib.suppress(Exception):
            client.set_terminated(state["run_id"], RunStatus.to_string(RunStatus.FAILED))


REGISTRATION_TAG, OWNER_TAG = "registration", "latentflow.owner"
STALE_AFTER_S = 6 * 3600  # an in-progress registration of another host older than this is abandoned


def _owner() -> str:
    """``host:pid`` of this process: who is registering (a tag on the run and on the new version)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_gone(owner: str | None, started_ms: int | None) -> bool:
    """The process that tagged ``owner`` no longer runs: on this host, its pid is gone; elsewhere, it started more
    than :data:`STALE_AFTER_S` ago. A registration without an owner tag is never touched."""
    if not owner or ":" not in owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return started_ms is not None and time.time() - started_ms / 1000 > STALE_AFTER_S


def recover_interrupted(client: MlflowClient, model_name: str, experiment_id: str | None) -> list[str]:
    """Finish or undo what a killed registration (SIGKILL, power loss) left behind, before a new one starts.

    A version still tagged ``registration=in_progress`` by a process that is gone is either complete in all but its
    last tag (it already holds its alias ``champion``/``challenger``: the tag is set) or half-registered (no alias:
    it is deleted, so it can never be loaded or compared against). Runs still RUNNING for a gone owner are marked
    FINISHED when their version completed, FAILED otherwise. Returns what was done, one line each."""
    done: list[str] = []
    try:
        aliases = client.get_registered_model(model_name).aliases
    except MlflowException:
        aliases = {}
    aliased = {str(v) for v in aliases.values()}
    completed_runs = set()
    for mv in client.search_model_versions(f"name='{model_name}'"):
        tags = mv.tags or {}
        if tags.get(REGISTRATION_TAG) != "in_progress" or not _owner_gone(tags.get(OWNER_TAG), mv.creation_timestamp):
            if tags.get(REGISTRATION_TAG) == "complete":
                completed_runs.add(mv.run_id)
            continue
        if str(mv.version) in aliased:
            client.set_model_version_tag(model_name, str(mv.version), REGISTRATION_TAG, "complete")
            completed_runs.add(mv.run_id)
            done.append(f"version {mv.version}: completed (it held its alias; only the last tag was missing)")
        else:
            client.delete_model_version(model_name, str(mv.version))
            done.append(f"version {mv.version}: deleted (its registration by {tags.get(OWNER_TAG)} was interrupted)")
    if experiment_id is not None:
        for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
            if _owner_gone(run.data.tags.get(OWNER_TAG), run.info.start_time):
                status = RunStatus.FINISHED if run.info.run_id in completed_runs else RunStatus.FAILED
                client.set_terminated(run.info.run_id, RunStatus.to_string(status))
                done.append(f"run {run.info.run_id}: marked {RunStatus.to_string(status)} (its process is gone)")
    return done


def _register(client: MlflowClient, state: dict[str, Any], *, experiment: str, model_name: str, model_dir: Path, params: dict,
              metrics: dict[str, float], artifacts: list[Path], primary_metric: str, greater_is_better: bool, min_improvement: float,
              tags: dict[str, str], run_name: str | None, artifact_location: str | None, dataset: dict[str, str] | None,
              description: str = "", run_id: str | None = None, histories: dict[str, list[dict]] | None = None,
              run_tags: dict[str, str] | None = None, alias: str | None = None) -> RegistrationResult:
    state["step"] = f"find or create experiment {experiment!r}"
    experiment_id = find_or_create_experiment(client, experiment, artifact_location)
    state["step"] = "finish or undo an interrupted registration"
    for line in recover_interrupted(client, model_name, experiment_id):
        log.warning("register: recovered an interrupted registration: %s", line)
    state["step"] = "open the pipeline run" if run_id else "create the run"
    owner = _owner()
    # the owner tag is added to a joined pipeline run too (tags it lacks are added): a register killed mid-way leaves
    # a RUNNING run whose owner is gone, which the next registration ends (recover_interrupted)
    run_id, _ = resume_or_create_run(client, experiment_id, run_id, tags={**tags, **(run_tags or {}), OWNER_TAG: owner}, run_name=run_name)
    state["run_id"] = run_id
    state["step"] = "log the training curves"
    for prefix, history in (histories or {}).items():
        log_history(client, run_id, prefix, history)
    state["step"] = "log params, metrics and the dataset input"
    flat = list(flatten_params(params).items())
    for i in range(0, len(flat), 100):  # log_batch accepts at most 100 params per call
        client.log_batch(run_id, params=[Param(k, v) for k, v in flat[i:i + 100]])
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    if dataset is not None:
        client.log_inputs(run_id, datasets=[_dataset_input(dataset)])
    state["step"] = "upload the run's artifacts"
    for path in map(Path, artifacts):
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=path.name)
        else:
            client.log_artifact(run_id, str(path))
    state["step"] = "log the pyfunc model (upload its artifacts)"
    logged = _log_pyfunc(client, experiment_id, run_id, model_dir)

    state["step"] = f"read registered model {model_name!r} and its champion"
    metric_tag = f"metric.{primary_metric}"
    try:
        client.create_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    if not client.get_registered_model(model_name).description:
        client.update_registered_model(model_name, description=MODEL_DESCRIPTION)
    if alias is None:
        champ_version, champ_value = _champion(client, model_name, metric_tag)
        decision = decide_promotion(float(metrics[primary_metric]), champ_value,
                                    greater_is_better=greater_is_better, min_improvement=min_improvement)
        verdict = (f"Promotion: {'champion' if decision.promote else 'challenger'} — {decision.reason}"
                   f"{f' (compared with version {champ_version})' if champ_version else ''}.")
    else:  # a named alias (a distilled student's 'fast'): no comparison with the champion
        champ_version, champ_value = None, None
        decision = PromotionDecision(False, f"alias {alias!r} set without a promotion decision", float(metrics.get(primary_metric, math.nan)),
                                     None)
        verdict = f"Alias: {alias}."
    state["step"] = "create the model version"
    # source = storage location, not "models:/m-<id>": DB-backed registry stores resolve the
    # latter through the *global* tracking URI (MlflowClient()), which we must not depend on.
    # tagged in_progress at creation (one call): if this process dies before the alias is set, the next registration
    # sees it and deletes it (recover_interrupted)
    version = state["version"] = client.create_model_version(model_name, logged.artifact_location, run_id=run_id, model_id=logged.model_id,
                                                             tags={REGISTRATION_TAG: "in_progress", OWNER_TAG: owner},
                                                             description=f"{description} {verdict}".strip()).version
    version_tags = {
        **tags, metric_tag: repr(decision.new_value), "promotion_reason": decision.reason,
        "promotion_decision": ("promoted" if decision.promote else "not promoted") if alias is None else f"alias {alias}",
        "compared_to_version": champ_version or "none", "champion_value": repr(champ_value),
        "logged_model_id": logged.model_id,  # sqlalchemy registries do not persist model_id
    }
    state["step"] = f"tag model version {version}"
    for key, value in version_tags.items():
        client.set_model_version_tag(model_name, str(version), key, str(value))
    alias = alias or (CHAMPION if decision.promote else CHALLENGER)  # set last: a champion always has its tags
    state["step"] = f"set alias {alias!r} on version {version}"
    client.set_registered_model_alias(model_name, alias, version)
    state["version"] = None  # complete: nothing to roll back from here on
    client.set_model_version_tag(model_name, str(version), REGISTRATION_TAG, "complete")
    state["step"] = "finish the run"
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    return RegistrationResult(run_id, model_name, str(version), alias, decision, f"models:/{model_name}/{version}", experiment_id)


URI_FORMS = "models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-<id> or runs:/RUN_ID/PATH"


def _resolve_download_uri(client: MlflowClient, uri: str) -> str:
    """Map ``models:/NAME@alias``, ``models:/NAME/VERSION`` or ``models:/m-<id>`` to artifact storage."""
    path = uri.removeprefix("models:/").strip("/")
    if not path or path.startswith("@") or path.endswith("@"):
        raise RegistryError(f"{uri!r} names no model: expected {URI_FORMS}")
    if "@" in path:
        name, alias = path.split("@", 1)
        return client.get_model_version_download_uri(name, client.get_model_version_by_alias(name, alias).version)
    if "/" in path:
        name, version = path.rsplit("/", 1)
        return client.get_model_version_download_uri(name, version)
    return client.get_logged_model(path).artifact_location


def packaged_model_dir(local: Path, uri: str = "") -> Path:
    """The ``model_dir`` artifact (``autoencoder/`` + ``diffusion/``) inside a downloaded pyfunc model, found through
    its ``MLmodel`` file (read as plain YAML: nothing of the model is imported or run)."""
    import yaml

    mlmodel = Path(local) / "MLmodel"
    try:
        spec = yaml.safe_load(mlmodel.read_text()) or {}
        rel = spec["flavors"]["python_function"]["artifacts"]["model_dir"]["path"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise RegistryError(f"{uri or local} is not a latentflow model (no model_dir artifact in {mlmodel}: {type(exc).__name__}: {exc}); "
                            "register models with `latentflow register`") from None
    model_dir = (Path(local) / rel).resolve()
    if not model_dir.is_relative_to(Path(local).resolve()):
        raise RegistryError(f"{mlmodel}: model_dir {rel!r} points outside the model")
    return model_dir


def load_generator_from_uri(uri: str, tracking_uri: str | None = None, device="cpu"):
    """Load the ``LatentDiffusionGenerator`` packaged at ``uri`` (``models:/NAME@champion``, ``models:/NAME/3``,
    ``runs:/RUN_ID/model``).

    Only the weights and JSON configs of the model's ``model_dir`` artifact are read (safetensors): the packaged
    pyfunc code (``pyfunc_model.py``, the bundled ``components/``) is not run and nothing is unpickled, so a
    tampered registry entry cannot execute code here (serving with ``mlflow models serve`` does run the
    packaged code, by design). With ``tracking_uri`` the URI is resolved through an explicit client, so the global
    MLflow tracking/registry URI is neither needed nor modified. A missing model, alias, version or run, or an
    unreachable server, is a :class:`RegistryError` naming the URI and the tracking server. The generator is loaded
    onto ``device`` (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` or a ``torch.device``).
    """
    from components.generation import LatentDiffusionGenerator

    try:
        location = _resolve_download_uri(MlflowClient(tracking_uri), uri) if uri.startswith("models:/") else uri
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, tracking_uri=tracking_uri))
    except (MlflowException, OSError) as exc:
        where = tracking_uri or mlflow.get_tracking_uri()
        raise RegistryError(
            f"cannot load {uri} from the MLflow tracking server {where}: {_short(exc)}. Check the name, alias or version "
            f"({URI_FORMS}; list them in the MLflow UI) and that MLFLOW_TRACKING_URI or register.tracking_uri names the right server"
        ) from None
    return LatentDiffusionGenerator.from_dir(packaged_model_dir(local, uri), device=device)
