"""Pseudo-label throughput (vit_b teacher, random weights) and latency at 1024 px of YOLO-seg students vs SAM vit_b's encoder.

    nice -n 10 .venv/bin/python benchmarks/fastsam_speed.py --images 2 --repeats 3
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import torch

os.environ["YOLO_OFFLINE"] = "1"


def latency(function, repeats: int) -> float:
    from sam_distill.eval.bench import time_runs

    return statistics.median(time_runs(function, repeats, warmup=1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=768, help="side of the generated images")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    from sam_distill.core.images import make_synthetic_images
    from sam_distill.data.everything import generator_settings, pseudo_label
    from sam_distill.sam.teachers import load_teacher

    teacher = load_teacher("vit_b", random_init=True, image_size=1024)
    with tempfile.TemporaryDirectory() as tmp:
        make_synthetic_images(Path(tmp) / "img", args.images, args.image_size, seed=0)
        counts = pseudo_label(teacher, Path(tmp) / "img", Path(tmp) / "labels",
                              generator_settings(points_per_side=args.points_per_side), log=lambda m: None)
    print(f"pseudo-label: vit_b (random init) at 1024, points_per_side {args.points_per_side}, "
          f"{args.images} images of {args.image_size} px: {counts['seconds_per_image']:.1f} s/image")

    from ultralytics import YOLO

    x = torch.zeros(1, 3, 1024, 1024)
    with torch.inference_mode():
        sam_s = latency(lambda: teacher.model.image_encoder(x), args.repeats)
        rows = [("SAM vit_b image encoder", sam_s)]
        for name in ("yolov8s-seg", "yolov8x-seg"):
            model = YOLO(f"{name}.yaml").model.eval().fuse(verbose=False)
            rows.append((f"{name} (full network, no NMS)", latency(lambda: model(x), args.repeats)))
    print("| model at 1024x1024 | latency (s, median) | speed-up vs SAM vit_b encoder |")
    print("|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} | {sam_s / seconds:.1f}x |")


if __name__ == "__main__":
    main()
