"""Solver accuracy vs steps, independent of how good the model is: the RMS distance of each sampler's final latents
to the probability-flow ODE solution (DPM-Solver++ with 999 trailing steps), relative to that solution's RMS, on the
trained model, the same initial noise and labels for every run.

DPM-Solver++ (Lu et al. 2022b) should reach a given distance in far fewer steps than DDIM. With ``leading`` spacing
every run starts below t = T - 1 (at t = (N - 1) T//N for DDIM, N T//(N + 1) for DPM-Solver++), so its distance has a
floor set by where it starts, whatever the solver; ``trailing`` starts at T - 1 and shows the solver alone.

    .venv/bin/python -m benchmarks.solver_convergence --models models
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.provenance import provenance
from components.diffusion import sample
from components.generation import LatentDiffusionGenerator
from components.io import atomic_write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument("--num-per-class", type=int, default=2)
    ap.add_argument("--samplers", default="ddim,dpmpp_2m,dpmpp_2m_karras")
    ap.add_argument("--spacings", default="leading,trailing")
    ap.add_argument("--steps", default="5,8,10,15,20,25,50")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("reports/benchmarks/solver_convergence.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    gen = LatentDiffusionGenerator.from_dir(args.models)
    labels = torch.arange(gen.num_classes).repeat_interleave(args.num_per_class)
    x_T = torch.randn((len(labels), *gen.latent_shape), generator=torch.Generator().manual_seed(args.seed))
    kw = {"betas": gen.betas, "prediction_type": gen.prediction_type, "class_labels": labels, "guidance_scale": args.guidance}
    ref = sample(gen.unet, x_T, sampler="dpmpp_2m", num_steps=len(gen.betas) - 1, timestep_spacing="trailing", **kw)
    ref_rms = float(ref.double().pow(2).mean().sqrt())
    rows = []
    for spacing in args.spacings.split(","):
        for sampler in args.samplers.split(","):
            for steps in [int(s) for s in args.steps.split(",")]:
                out = sample(gen.unet, x_T, sampler=sampler, num_steps=steps, timestep_spacing=spacing, **kw)
                rows.append({"spacing": spacing, "sampler": sampler, "steps": steps,
                             "relative_rms_error": float((out.double() - ref.double()).pow(2).mean().sqrt()) / ref_rms})
                print(json.dumps(rows[-1]), flush=True)
    result = {"protocol": {"num_samples": len(labels), "guidance": args.guidance, "seed": args.seed,
                           "reference": f"dpmpp_2m, {len(gen.betas) - 1} trailing steps", "models": str(args.models)},
              "rows": rows, "provenance": provenance()}
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
