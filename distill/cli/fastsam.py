"""FastSAM-style commands: pseudo-label, yolo-data, yolo train, segment, eval mask-ap."""
from __future__ import annotations

import argparse
from pathlib import Path

from sam_distill.core.errors import DistillError


def cmd_pseudo_label(args) -> int:
    from sam_distill.cli.engine import _load_teacher
    from sam_distill.core.device import init_distributed
    from sam_distill.data.everything import GENERATOR_DEFAULTS, generator_settings, pseudo_label

    context = init_distributed(args.device)
    settings = generator_settings(**{k: getattr(args, k) for k in GENERATOR_DEFAULTS})
    counts = pseudo_label(_load_teacher(args), args.images, args.out, settings, context)
    if context.is_main:
        print(f"labelled {counts['labelled']} image(s), {counts['masks']} masks, {counts['skipped']} skipped; "
              f"labels in {args.out}")
    return 0


def cmd_yolo_data(args) -> int:
    from sam_distill.data.yolo import convert_coco, convert_pseudo_labels

    knobs = {"val_fraction": args.val_fraction, "min_area": args.min_area, "max_components": args.max_components}
    if args.coco:
        if args.images is None:
            raise DistillError("--coco needs --images, the folder its file_name entries are relative to")
        summary = convert_coco(args.coco, args.images, args.out, **knobs)
    elif args.labels:
        summary = convert_pseudo_labels(args.labels, args.out, **knobs)
    else:
        raise DistillError("give --labels (a pseudo-label folder) or --coco (a COCO instance file) with --images")
    print(f"{summary['train_images']} train / {summary['val_images']} val images, {summary['instances']} instances; "
          f"dropped {summary['dropped']}; dataset {summary['data_yaml']}")
    return 0


def cmd_yolo_train(args) -> int:
    from sam_distill.methods.fastsam.recipe import plot_results, train_yolo

    if not args.resume and (args.out / args.name / "weights" / "last.pt").exists():
        raise DistillError(f"{args.out / args.name} already holds a training run; pass --resume or choose another --out")
    summary = train_yolo(args.data, args.model, args.out, args.name, args.epochs, args.imgsz, args.batch,
                         args.device, args.workers, args.seed, args.patience)
    plot_results(Path(summary["run"]) / "results.csv", Path(summary["run"]) / "map.png")
    print(f"trained {summary['epochs']} epochs; best weights {summary['best']}")
    return 0


def cmd_segment(args) -> int:
    import numpy as np
    from PIL import Image

    from sam_distill.core.images import UnreadableImage, load_rgb
    from sam_distill.methods.fastsam.student import YoloSegStudent

    try:
        image = load_rgb(args.image)
    except UnreadableImage as err:
        raise DistillError(f"cannot read image {args.image}: {err}") from None
    student = YoloSegStudent(args.model, imgsz=args.imgsz, conf=args.conf)
    if args.box:
        found = student.box(image, args.box)
    elif args.point:
        points = [p[:2] for p in args.point]
        labels = [int(p[2]) if len(p) > 2 else 1 for p in args.point]
        found = student.points(image, points, labels)
    elif args.text:
        from sam_distill.sam.text_prompts import load_clip

        found = student.text(image, args.text, load_clip(args.clip_checkpoint, args.clip_model, args.clip_config))
    else:
        found = student.everything(image)
    print(f"{len(found.masks)} mask(s)")
    if args.out:
        labels = np.zeros(image.shape[:2], np.uint16)
        for index, mask in enumerate(found.masks):
            labels[mask & (labels == 0)] = index + 1
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels).save(args.out)
        print(f"label image (0 = background, i = mask i) written to {args.out}")
    return 0


def cmd_mask_ap(args) -> int:
    from sam_distill.core.fileio import atomic_write_json
    from sam_distill.eval.coco_ap import mask_ap

    report = mask_ap(args.ground_truth, args.results, class_agnostic=args.class_agnostic)
    for name, value in report["stats"].items():
        print(f"{name:<10} {value:.4f}")
    if args.out:
        atomic_write_json(args.out, report)
    return 0


def _point(text: str) -> list[float]:
    parts = text.split(",")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"point {text!r} must be X,Y or X,Y,LABEL (LABEL 1 = object, 0 = background)")
    return [float(p) for p in parts]


def register(subparsers) -> None:
    from sam_distill.cli.engine import _teacher_args
    from sam_distill.data.everything import GENERATOR_DEFAULTS

    p = subparsers.add_parser("pseudo-label", help="the teacher's segment-everything masks, one JSON per image")
    p.add_argument("images", type=Path)
    p.add_argument("--out", type=Path, required=True, help="label folder (rerun to resume)")
    _teacher_args(p)
    for key, default in GENERATOR_DEFAULTS.items():
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, type=type(default), default=default)
    p.set_defaults(func=cmd_pseudo_label)

    p = subparsers.add_parser("yolo-data", help="pseudo-labels or a COCO dataset -> ultralytics YOLO-seg layout")
    p.add_argument("--labels", type=Path, help="pseudo-label folder (class-agnostic)")
    p.add_argument("--coco", type=Path, help="COCO instance file (class-aware)")
    p.add_argument("--images", type=Path, help="with --coco: folder its file_name entries are relative to")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--min-area", type=float, default=16)
    p.add_argument("--max-components", type=int, default=8)
    p.set_defaults(func=cmd_yolo_data)

    p = subparsers.add_parser("yolo", help="train YOLO-seg students with ultralytics (export them with `distill export`)")
    yolo = p.add_subparsers(dest="yolo_command", metavar="WHAT")
    t = yolo.add_parser("train", help="train (offline) with ultralytics' trainer")
    t.add_argument("data", type=Path, help="data.yaml written by `distill yolo-data`")
    t.add_argument("--model", default="yolov8s-seg", help="variant name (from scratch) or a local .pt")
    t.add_argument("--out", type=Path, required=True, help="ultralytics project folder")
    t.add_argument("--name", default="train")
    t.add_argument("--epochs", type=int, default=100)
    t.add_argument("--imgsz", type=int, default=1024)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--patience", type=int, default=100)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto")
    t.add_argument("--resume", action="store_true")
    t.set_defaults(func=cmd_yolo_train)

    p = subparsers.add_parser("segment", help="segment an image with a YOLO-seg student and a FastSAM prompt")
    p.add_argument("model", type=Path)
    p.add_argument("image", type=Path)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--everything", action="store_true", help="every mask (the default)")
    mode.add_argument("--box", type=float, nargs=4, metavar=("X1", "Y1", "X2", "Y2"))
    mode.add_argument("--point", type=_point, action="append", help="X,Y[,LABEL]; repeat for several")
    mode.add_argument("--text")
    p.add_argument("--clip-checkpoint", type=Path, help="local open_clip weights, for --text")
    p.add_argument("--clip-model", default="ViT-B-32")
    p.add_argument("--clip-config", type=Path, help="architecture JSON of a custom open_clip model")
    p.add_argument("--imgsz", type=int, default=1024)
    p.add_argument("--conf", type=float, default=0.25)
    p.add_argument("--out", type=Path, help="write a 16-bit label PNG here")
    p.set_defaults(func=cmd_segment)

    p = subparsers.add_parser("mask-ap", help="COCO mask AP of results against ground truth (pycocotools)")
    p.add_argument("ground_truth", type=Path)
    p.add_argument("results", type=Path)
    p.add_argument("--class-agnostic", action="store_true")
    p.add_argument("--out", type=Path)
    p.set_defaults(func=cmd_mask_ap)
