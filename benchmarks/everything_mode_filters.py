"""How many of a SAM's everything-mode masks would pass segment-anything's filters, on a few validation images.

SAM-cls and the FastSAM-style student both start from SAM's automatic mask generator, which keeps a mask only when
SAM's own predicted IoU and its stability score clear thresholds (0.88 / 0.95 in segment-anything, 0.8 / 0.9 in the
chain's config). A SAM trained here on few images may answer a grid point on background with an empty or
low-confidence mask; this probe runs the generator with both filters off and prints how the masks' scores are
spread and how many would pass each pair of thresholds, so a run that keeps almost nothing can be explained.

    python benchmarks/everything_mode_filters.py benchmarks/chain_nwpu/teacher_resnet34_512.pt --images 5 --points 8
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

THRESHOLDS = ((0.88, 0.95), (0.8, 0.9), (0.7, 0.8), (0.5, 0.7), (0.3, 0.5))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path, help="a SAM model file (model.pt, an official .pth)")
    parser.add_argument("--coco", type=Path, default=Path("../shared/data/nwpu_vhr10/annotations_train.json"))
    parser.add_argument("--images", type=int, default=5, help="the first N images of the validation split")
    parser.add_argument("--image-dir", type=Path, default=Path("../shared/data/nwpu_vhr10/images"))
    parser.add_argument("--val-fraction", type=float, default=0.2, help="the instance recipes' split")
    parser.add_argument("--points", type=int, default=8, help="points per side of the grid")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from sam_distill.core.images import load_rgb
    from sam_distill.data.coco import load_coco, split_image_ids
    from sam_distill.data.everything import generator_settings
    from sam_distill.sam.model_file import load_model
    from sam_distill.sam.teachers import make_generator

    torch.set_num_threads(args.threads)
    coco = load_coco(args.coco)
    image_ids = split_image_ids(coco, "val", args.val_fraction, args.coco)[: args.images]
    sam, _ = load_model(args.model)
    # the generator SAM-cls and pseudo-labelling build, with both filters off
    settings = generator_settings(points_per_side=args.points, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    generator = make_generator(sam, settings, torch.device("cpu"))
    predicted_iou, stability = [], []
    for image_id in image_ids:
        image = load_rgb(args.image_dir / coco.loadImgs(image_id)[0]["file_name"])
        for mask in generator.generate(image):
            predicted_iou.append(mask["predicted_iou"])
            stability.append(mask["stability_score"])
    predicted_iou, stability = np.array(predicted_iou), np.nan_to_num(np.array(stability), nan=0.0)
    print(f"{args.model}: {len(predicted_iou)} masks after NMS on {len(image_ids)} validation images, "
          f"{args.points}² points")
    print(f"predicted IoU p50 {np.percentile(predicted_iou, 50):.3f}, p90 {np.percentile(predicted_iou, 90):.3f}; "
          f"stability p50 {np.percentile(stability, 50):.3f}, p90 {np.percentile(stability, 90):.3f} "
          f"(an empty mask's undefined stability counts as 0)")
    for iou_threshold, stability_threshold in THRESHOLDS:
        kept = int(((predicted_iou >= iou_threshold) & (stability >= stability_threshold)).sum())
        print(f"predicted IoU >= {iou_threshold} and stability >= {stability_threshold}: {kept} kept")


if __name__ == "__main__":
    main()
