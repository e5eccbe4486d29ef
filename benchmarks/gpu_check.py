"""Every CUDA path of the toolkit once, with throughput figures: run it whenever a GPU machine is available.

    python benchmarks/gpu_check.py --out runs/gpu_check            # on a CUDA machine, about 3-6 minutes
    python benchmarks/gpu_check.py --device cpu --smoke --out runs/gpu_check_cpu   # the same steps, tiny, on CPU

Steps, each through the real command line (so the check covers what users run):

1. ``distill embed`` with a vit_b-architecture teacher (random weights; throughput does not depend on them),
   batch 8, at 1024 px: teacher images per second.
2. ``distill train``: MobileSAM's decoupled distillation of tinyvit_5m with AMP (bf16 where supported): images/s.
3. ``torchrun --nproc_per_node 1 -m sam_distill train``: the same under DDP with one process (the NCCL path).
4. ``distill run`` of the prompter recipe on generated instances (RSPrompter query head on tinyvit_5m): steps/s.
5. ``distill bench --device cuda`` of the distilled model and of vit_b: encoder/decoder latency on the GPU.

Prints one table and writes ``gpu_check.json`` into ``--out``. Exits 3 with one line when CUDA is missing and
``--device cuda`` was asked for.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch


def distill(*args: str, launcher: list[str] | None = None) -> float:
    """Run one command; its wall time in seconds. A failure stops the check with that command's output."""
    command = (launcher or [sys.executable, "-m", "sam_distill"]) + list(args)
    print("$ " + " ".join(command), flush=True)
    began = time.perf_counter()
    result = subprocess.run(command, text=True)
    if result.returncode != 0:
        raise SystemExit(f"gpu_check: step failed (exit {result.returncode}): {' '.join(command)}")
    return time.perf_counter() - began


def last_row(metrics_csv: Path) -> dict:
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_check"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (vit_tiny teacher, 256 px): checks the script")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine (or --device cpu --smoke to check the steps)")
        return 3
    teacher, size, images, steps, batch = ("vit_tiny", 256, 8, 4, 2) if args.smoke else ("sam_vit_b", 1024, 64, 60, 8)
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    from sam_distill.core.images import make_synthetic_images

    make_synthetic_images(out / "images", images, size=size, seed=0)
    figures: dict[str, float | str] = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda")
                                       else "cpu", "teacher": teacher, "image_size": size}

    seconds = distill("embed", str(out / "images"), "--out", str(out / "cache"), "--teacher", teacher,
                      "--random-init", "--image-size", str(size), "--batch-size", str(batch), "--device", args.device)
    figures["embed_images_per_s"] = images / seconds  # includes start-up and image decoding: a floor

    train = ["--student", "tinyvit_5m", "--max-steps", str(steps), "--batch-size", str(batch), "--warmup-steps", "5",
             "--log-every", "5", "--checkpoint-every", str(steps), "--holdout", "0", "--workers", "2",
             "--device", args.device]
    distill("train", str(out / "cache"), "--out", str(out / "distill"), *train)
    figures["distill_amp_images_per_s"] = float(last_row(out / "distill" / "metrics.csv")["images_per_s"])
    distill("train", str(out / "cache"), "--out", str(out / "distill_ddp"), *train,
            launcher=[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                      "-m", "sam_distill"])
    figures["distill_ddp1_images_per_s"] = float(last_row(out / "distill_ddp" / "metrics.csv")["images_per_s"])
    distill("assemble", str(out / "distill"), "--out", str(out / "model"), "--teacher", teacher, "--random-init",
            "--image-size", str(size))

    prompter_run = out / "prompter"
    distill("run", "configs/prompter_quickstart.yaml", "--set", f"run_dir={prompter_run}", "--set",
            f"device={args.device}", "--set", "encoder.name=tinyvit_5m", "--set", f"encoder.image_size={size}",
            "--set", f"instances.synthetic.size={size}", "--set", f"train.max_steps={steps}",
            "--set", "instances.eval.every=1000")
    metrics = next(prompter_run.glob("checkpoints/*/metrics.csv"))
    figures["prompter_images_per_s"] = float(last_row(metrics)["images_per_s"])

    distill("bench", str(out / "model" / "model.pt"), teacher, "--random-init", "--image-size", str(size),
            "--device", args.device, "--runs", "20", "--out", str(out / "bench.json"))
    for row in json.loads((out / "bench.json").read_text())["rows"]:
        for phase in ("encoder", "decoder"):
            if row.get(f"{phase}_p50_ms") is not None:
                figures[f"bench {row['model']} {phase} p50 ms"] = row[f"{phase}_p50_ms"]

    (out / "gpu_check.json").write_text(json.dumps(figures, indent=2) + "\n")
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value:.1f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    print(f"written {out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
