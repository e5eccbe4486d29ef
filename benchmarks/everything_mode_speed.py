"""Everything mode, teacher against FastSAM-style student, on the same validation images: seconds an image and
masks an image for a SAM's automatic mask generator and for a YOLO-seg student's whole pipeline (network, NMS and
masks upsampled to the image), each with the settings its run used.

A FastSAM student replaces the teacher's everything mode, so that is the speed-up that matters, not the network
forward alone (`distill bench` times that).

    python benchmarks/everything_mode_speed.py benchmarks/chain_nwpu/teacher_resnet34_512.pt \
        runs/chain_nwpu_fastsam/model/fastsam.pt --images 20 --points 8 --pred-iou 0.3 --stability 0.5 --min-region 100
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def seconds_and_masks(segment, images) -> tuple[float, float]:
    """Mean seconds an image and masks an image of ``segment`` over ``images``, after one untimed warm-up call."""
    segment(images[0])
    started, counts = time.perf_counter(), [segment(image) for image in images]
    return (time.perf_counter() - started) / len(images), sum(counts) / len(counts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("teacher", type=Path, help="a SAM model file (model.pt, an official .pth)")
    parser.add_argument("student", type=Path, help="a YOLO-seg student (a fastsam run's model/fastsam.pt)")
    parser.add_argument("--coco", type=Path, default=Path("../shared/data/nwpu_vhr10/annotations_train.json"))
    parser.add_argument("--image-dir", type=Path, default=Path("../shared/data/nwpu_vhr10/images"))
    parser.add_argument("--val-fraction", type=float, default=0.2, help="the instance recipes' split")
    parser.add_argument("--images", type=int, default=20, help="the first N images of the validation split")
    parser.add_argument("--points", type=int, default=8, help="the teacher's points per side")
    parser.add_argument("--pred-iou", type=float, default=0.88, help="the teacher's pred_iou_thresh")
    parser.add_argument("--stability", type=float, default=0.95, help="the teacher's stability_score_thresh")
    parser.add_argument("--min-region", type=int, default=0, help="the teacher's min_mask_region_area")
    parser.add_argument("--imgsz", type=int, default=512, help="the student's image size")
    parser.add_argument("--conf", type=float, default=0.01, help="the student's confidence (the AP evaluation's)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from sam_distill.core.images import load_rgb
    from sam_distill.data.coco import load_coco, split_image_ids
    from sam_distill.data.everything import generator_settings
    from sam_distill.methods.fastsam.student import YoloSegStudent
    from sam_distill.sam.model_file import load_model
    from sam_distill.sam.teachers import make_generator

    torch.set_num_threads(args.threads)
    coco = load_coco(args.coco)
    ids = split_image_ids(coco, "val", args.val_fraction, args.coco)[: args.images]
    images = [load_rgb(args.image_dir / coco.imgs[i]["file_name"]) for i in ids]
    sam, _ = load_model(args.teacher)
    generator = make_generator(sam.float(), generator_settings(points_per_side=args.points,
                                                               pred_iou_thresh=args.pred_iou,
                                                               stability_score_thresh=args.stability,
                                                               min_mask_region_area=args.min_region),
                               torch.device("cpu"))
    student = YoloSegStudent(args.student, imgsz=args.imgsz, conf=args.conf, max_det=100, device="cpu")
    with torch.inference_mode():
        teacher_s, teacher_n = seconds_and_masks(lambda image: len(generator.generate(image)), images)
    student_s, student_n = seconds_and_masks(lambda image: len(student.everything(image).masks), images)
    print(f"{len(images)} validation images, {args.threads} threads")
    print(f"teacher {args.teacher.name}: SAM's generator, {args.points}² points, filters {args.pred_iou} / "
          f"{args.stability}: {teacher_s * 1000:.0f} ms an image, {teacher_n:.1f} masks an image")
    print(f"student {args.student.name}: {args.imgsz} px, conf {args.conf}: {student_s * 1000:.0f} ms an image, "
          f"{student_n:.1f} masks an image")
    print(f"student {teacher_s / student_s:.1f}x faster")


if __name__ == "__main__":
    main()
