"""Does a SAM-det model's SAM follow box prompts? Mask IoU of SAM's answer to each ground-truth box.

Prompts the model's SAM with every ground-truth box of the first images of its run's data and prints, per
image, the mask IoU of each answer with its instance and the foreground fraction of each answer (one value
repeated for every box means the decoder ignores the prompt).

    python benchmarks/box_prompt_iou.py runs/bench_instances_shapes/sam_det_vit_tiny_128 [--images 3]
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path, help="a `recipe: sam_det` run folder on generated shapes")
    parser.add_argument("--images", type=int, default=3)
    args = parser.parse_args()

    import torch

    from sam_distill.data.coco import CocoInstances
    from sam_distill.methods.rcnn.model import load_rcnn
    from sam_distill.students.heads.losses import resize_masks

    model, _ = load_rcnn(args.run_dir / "model" / "sam_det.pt")
    data = args.run_dir / "data" / "synthetic_coco"
    dataset = CocoInstances(data / "annotations.json", data / "images", model.image_size)
    for index in range(min(args.images, len(dataset))):
        item = dataset[index]
        with torch.no_grad():
            answer = model.sam.box_masks(model.encode(item["image"][None]), item["boxes"]) > 0
        truth = resize_masks(item["masks"], answer.shape[-1]) > 0.5
        iou = (truth & answer).flatten(1).sum(1) / (truth | answer).flatten(1).sum(1).clamp(min=1)
        print(f"image {index}: mask IoU {[round(v, 2) for v in iou.tolist()]}, "
              f"foreground fraction {[round(v, 3) for v in answer.flatten(1).float().mean(1).tolist()]}")


if __name__ == "__main__":
    main()
