"""Encoder latency at 1024 px: SAM vit_h and vit_b against tinyvit_5m, PyTorch eager, CPU, in one run.

Weights are random (latency does not depend on them). Prints median/min of N runs after a warm-up and
the ratios to tinyvit_5m.

    python benchmarks/encoder_latency.py --threads 2 --runs 3
"""
from __future__ import annotations

import argparse
import statistics

import torch

from sam_distill.eval.bench import time_runs
from sam_distill.sam.build import build_sam
from sam_distill.students import create_student


def time_encoder(model: torch.nn.Module, runs: int, size: int = 1024) -> list[float]:
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        return time_runs(lambda: model(x), runs, warmup=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["tinyvit_5m", "vit_b", "vit_h"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for name in args.models:
        model = (create_student(name) if name == "tinyvit_5m" else build_sam(name).image_encoder).eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        times = time_encoder(model, args.runs)
        results[name] = statistics.median(times)
        print(f"{name:<11} params {params:7.1f} M   median {results[name]:7.2f} s   min {min(times):7.2f} s", flush=True)
        del model
    base = results.get("tinyvit_5m")
    if base:
        for name, seconds in results.items():
            print(f"{name:<11} {seconds / base:6.1f}x tinyvit_5m")


if __name__ == "__main__":
    main()
