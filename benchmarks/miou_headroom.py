"""Where a SAM's ground-truth mIoU is lost: its one-click answer choice, and its low-res mask grid.

Two questions that ``distill eval miou`` does not answer, on the first ``--images`` validation images of a COCO file:

* **one click**: SamPredictor answers one click with three masks and keeps the one with the highest predicted IoU.
  The script prints the mIoU of that choice, of the best of the three (an oracle choice), and of each output
  alone, with how often each output was chosen. A large gap between the choice and the oracle means the IoU head
  (or the outputs it chooses between) is what to train.
* **k clicks**: the corrective-click protocol of ``distill eval miou`` (``--clicks``), once with the first answer
  chosen by the scores and once with it fixed to each live output. Each later click feeds the first answer's
  low-res logits back, so which output the scores pick changes every later click too.
* **box**: SAM's decoder draws masks on a grid a quarter of the input (128² at 512 px) that is then upsampled
  bilinearly. The script prints the model's box mIoU beside two ceilings of that grid: the ground truth
  area-resized to the grid and thresholded at one half (what the low-res loss of ``recipe: finetune`` trains
  towards), and the same with the grid's area fractions kept as logits. Beside them, where the answer goes wrong:
  its mIoU once cut to the prompt box (what it loses outside the box it was given), its median area over the
  object's (above 1 it spills over the object, below 1 it leaves part of it out), and how many cells of the
  image embedding (16 input pixels each) the object's longer side spans. Per COCO size and per class.

    python benchmarks/miou_headroom.py benchmarks/chain_nwpu/teacher_resnet34_512_long.pt \
        --coco ../shared/data/nwpu_vhr10/annotations_train.json --images-dir ../shared/data/nwpu_vhr10/images
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

from sam_distill.core.images import load_rgb
from sam_distill.core.model_files import load_model_file
from sam_distill.data.coco import load_coco, masks_on_input, split_image_ids
from sam_distill.eval.fidelity import mask_iou
from sam_distill.eval.miou import box_mask, corrective_clicks, farthest_from_boundary, promptable, size_name
from sam_distill.students.heads.losses import resize_masks

EMBEDDING_STRIDE = 16  # input pixels per cell of SAM's image embedding


def grid_ceilings(sam, ground_truth: np.ndarray) -> tuple[float, float]:
    """IoU with the ground truth of the best masks SAM's low-res grid can draw for it: the mask placed on the model
    input as ``recipe: finetune`` places it, put on the grid (a) thresholded at one half, as the low-res loss's
    targets are (``resize_masks``), or (b) as area fractions; each turned into logits (2p - 1) and brought back by
    SAM's own ``postprocess_masks``, as SamPredictor brings back the decoder's logits."""
    image_size = int(sam.image_encoder.img_size)
    input_hw = ResizeLongestSide.get_preprocess_shape(*ground_truth.shape, image_size)
    placed = masks_on_input(torch.from_numpy(ground_truth)[None], input_hw, image_size)
    fractions = F.interpolate(placed[None], (image_size // 4, image_size // 4), mode="area")
    thresholded = resize_masks(placed, image_size // 4)[None]

    def drawn(grid: torch.Tensor) -> np.ndarray:
        return (sam.postprocess_masks(grid * 2 - 1, input_hw, ground_truth.shape)[0, 0] > 0).numpy()

    return mask_iou(drawn(thresholded), ground_truth), mask_iou(drawn(fractions), ground_truth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--coco", type=Path, required=True)
    parser.add_argument("--images-dir", type=Path, required=True)
    parser.add_argument("--split", default="val", choices=("train", "val"))
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--images", type=int, default=40, help="the first N images of the split")
    parser.add_argument("--clicks", type=int, default=3, help="clicks of the corrective-click protocol")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    coco = load_coco(args.coco)
    image_ids = split_image_ids(coco, args.split, args.val_fraction, args.coco)[: args.images]
    kind, loaded = load_model_file(args.model, expect=("sam",))
    sam = loaded[0]
    predictor = promptable(kind.name, sam, "cpu")
    image_size = int(sam.image_encoder.img_size)
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    click_rows, box_rows = [], defaultdict(list)
    with torch.no_grad():
        for image_id in image_ids:
            info = coco.imgs[image_id]
            predictor.set_image(load_rgb(args.images_dir / info["file_name"]))
            for annotation in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False)):
                truth = coco.annToMask(annotation).astype(bool)
                if not truth.any():
                    continue
                (x, y), _ = farthest_from_boundary(truth)
                masks, scores, low_res = predictor.predict(point_coords=np.array([[x, y]], np.float32),
                                                     point_labels=np.array([1]), multimask_output=True)
                ious = [mask_iou(mask, truth) for mask in masks]
                chosen = int(np.argmax(scores))
                # the k-click protocol of `distill eval miou` from each first answer: the scored choice, output 0, 1
                corrected = [([ious[first]] + corrective_clicks(predictor, truth, [[x, y]], [1], masks[first],
                                                                 low_res[first][None], args.clicks - 1))[-1]
                             for first in (chosen, 0, 1)]
                click_rows.append((ious[chosen], max(ious), *ious, chosen, *corrected))
                bx, by, bw, bh = annotation["bbox"]
                box, _, _ = predictor.predict(box=np.array([bx, by, bx + bw, by + bh], np.float32),
                                              multimask_output=False)
                inside_box = box_mask(annotation["bbox"], *truth.shape)
                cells_across = max(bw, bh) * image_size / max(truth.shape) / EMBEDDING_STRIDE
                row = (mask_iou(box[0], truth), *grid_ceilings(sam, truth), mask_iou(box[0] & inside_box, truth),
                       float(box[0].sum()) / float(truth.sum()), cells_across)
                for group in ("all", size_name(float(truth.sum())), names[annotation["category_id"]]):
                    box_rows[group].append(row)
    clicks = np.array(click_rows)
    print(f"{args.model}: {len(clicks)} objects on {len(image_ids)} {args.split} images, {image_size} px")
    print(f"one click: chosen by predicted IoU {clicks[:, 0].mean():.3f}, best of three {clicks[:, 1].mean():.3f}, "
          f"outputs alone {clicks[:, 2].mean():.3f} / {clicks[:, 3].mean():.3f} / {clicks[:, 4].mean():.3f}, "
          f"chosen {np.bincount(clicks[:, 5].astype(int), minlength=3).tolist()}")
    print(f"{args.clicks} clicks: first answer chosen by the scores {clicks[:, 6].mean():.3f}, "
          f"fixed to output 0 {clicks[:, 7].mean():.3f}, to output 1 {clicks[:, 8].mean():.3f}")
    print("| objects | n | box mIoU | grid ceiling, thresholded | grid ceiling, fractions | cut to the box | "
          "area / object's, median | longer side in embedding cells, median |\n|---|---|---|---|---|---|---|---|")
    order = ["all", "small", "medium", "large"] + sorted(set(box_rows) - {"all", "small", "medium", "large"})
    for group in (g for g in order if g in box_rows):
        values = np.array(box_rows[group])
        print(f"| {group} | {len(values)} | {values[:, 0].mean():.3f} | {values[:, 1].mean():.3f} | "
              f"{values[:, 2].mean():.3f} | {values[:, 3].mean():.3f} | {np.median(values[:, 4]):.2f} | "
              f"{np.median(values[:, 5]):.1f} |")


if __name__ == "__main__":
    main()
