"""Latency of every automatic instance method at a real input size, on the same encoder.

Builds each method's model file with RANDOM weights (latency, parameters and FLOPs depend on the
architecture, not the weights): RSPrompter query and anchor prompters, SAM-det, SAM-seg with Mask R-CNN and with
Mask2Former (the config's defaults: 100 queries, 6 layers, deformable pixel decoder) and SAM-cls (everything mode at
``--points``² points), then times them all with ``distill bench``'s harness.

    python benchmarks/instance_methods_latency.py --encoder tinyvit_5m --image-size 1024 --threads 2 --runs 3
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--encoder", default="tinyvit_5m")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=10, help="NWPU VHR-10 has 10")
    parser.add_argument("--points", type=int, default=32, help="everything mode's points per side (SAM: 32)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_instances_latency"))
    args = parser.parse_args()

    import torch

    from sam_distill.core.fileio import atomic_write_json
    from sam_distill.data.everything import generator_settings
    from sam_distill.eval.bench import bench_many, format_bench_table
    from sam_distill.methods.prompter.model import build_prompter, save_prompter
    from sam_distill.methods.rcnn.config import SamSegConfig
    from sam_distill.methods.rcnn.model import build_rcnn, save_rcnn
    from sam_distill.methods.sam_cls.model import SamCls
    from sam_distill.sam.model_file import build_sam_for

    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    classes = [{"id": i + 1, "name": f"class{i + 1}"} for i in range(args.classes)]
    base = {"encoder": args.encoder, "image_size": args.image_size, "num_classes": args.classes}
    files = []
    for head in ("query", "anchor"):
        model = build_prompter({**base, "head": head, "width": 128, "head_kwargs": {"num_queries": 32}})
        files.append(save_prompter(model, args.out / f"rsprompter_{head}.pt", classes))
    for method in ("sam_det", "sam_seg"):
        files.append(save_rcnn(build_rcnn({**base, "method": method}), args.out / f"{method}.pt", classes))
    seg = SamSegConfig(head="mask2former")
    mask2former = {"num_queries": seg.num_queries, "decoder_layers": seg.decoder_layers,
                   "pixel_decoder": seg.pixel_decoder, "pixel_decoder_layers": seg.pixel_decoder_layers}
    files.append(save_rcnn(build_rcnn({**base, "method": "sam_seg", "head": "mask2former", "mask2former": mask2former}),
                           args.out / "sam_seg_mask2former.pt", classes))
    settings = generator_settings(points_per_side=args.points)
    sam_cls = SamCls(build_sam_for(args.encoder, args.image_size),
                     {"encoder": args.encoder, "image_size": args.image_size, "classifier": "pooled",
                      "generator": settings, "geometry": True, "hidden": 256, "match_iou": 0.5}, classes, {})
    files.append(sam_cls.save(args.out / "sam_cls.pt"))

    result = bench_many([str(f) for f in files], runs=args.runs, warmup=1, threads=args.threads)
    atomic_write_json(args.out / "bench.json", result)
    print(format_bench_table(result))


if __name__ == "__main__":
    main()
