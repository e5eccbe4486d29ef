"""Options several commands share, defined once: the teacher, SAM's everything-mode settings and the options of
``distill predict`` / ``distill eval ap`` (whose kind-specific ones default to None: only those given are passed
on, and a model kind that has no use for one refuses it in one line)."""
from __future__ import annotations

import argparse
from pathlib import Path

# ``distill predict`` options handed to the model kind's predict function when given (``generator`` apart).
PREDICT_OPTIONS = ("points", "box", "text", "clip_checkpoint", "clip_model", "clip_config", "score_threshold", "imgsz",
                   "image_size")


def add_teacher_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", default="sam_vit_h",
                        help="official name (sam_vit_h, sam_vit_l, sam_vit_b, mobile_sam) or architecture (vit_b, ...)")
    parser.add_argument("--checkpoint", type=Path, help="local checkpoint file (else the official one is downloaded)")
    parser.add_argument("--random-init", action="store_true", help="random weights of the architecture (smoke tests)")
    parser.add_argument("--image-size", type=int, help="input size: --random-init's (default 1024); with a "
                        "checkpoint, the size to run it at (default its own; only timm ConvNet encoders take another)")
    parser.add_argument("--device", default="auto")


def load_teacher_from(args):
    from sam_distill.sam.teachers import load_teacher

    return load_teacher(args.teacher, args.checkpoint, args.random_init, args.image_size)


def add_generator_args(parser: argparse.ArgumentParser) -> None:
    """segment-anything's ``SamAutomaticMaskGenerator`` settings; unset ones keep its defaults."""
    from sam_distill.data.everything import GENERATOR_DEFAULTS

    group = parser.add_argument_group("everything mode (segment-anything's automatic mask generator)")
    for key, default in GENERATOR_DEFAULTS.items():
        group.add_argument(f"--{key.replace('_', '-')}", dest=key, type=type(default), metavar=key.split("_")[-1].upper(),
                           help=f"default {default}")


def generator_overrides(args) -> dict:
    from sam_distill.data.everything import GENERATOR_DEFAULTS

    return {key: getattr(args, key) for key in GENERATOR_DEFAULTS if getattr(args, key) is not None}


def point(text: str) -> tuple[float, float, int]:
    """``X,Y`` or ``X,Y,LABEL`` (1 object, the default; 0 background)."""
    parts = text.split(",")
    try:
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2].strip() not in ("0", "1")):
            raise ValueError
        return float(parts[0]), float(parts[1]), int(parts[2]) if len(parts) == 3 else 1
    except ValueError:
        raise argparse.ArgumentTypeError(f"point {text!r} must be X,Y or X,Y,LABEL (LABEL 1 = object, 0 = background)")


def add_model_options(parser: argparse.ArgumentParser, prompts: bool) -> None:
    """What a model file is run with; ``prompts`` adds --point/--box/--text (``distill predict``)."""
    if prompts:
        group = parser.add_argument_group("prompts (SAM: --point/--box; YOLO-seg: one of the three; SAM-cls: --text)")
        group.add_argument("--point", dest="points", type=point, action="append", metavar="X,Y[,LABEL]",
                           help="a point in image pixels, label 1 (object, the default) or 0 (background); repeat for more")
        group.add_argument("--box", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"), help="a box in image pixels")
        group.add_argument("--text", help="the mask CLIP matches best to this text, per image")
    parser.add_argument("--clip-checkpoint", type=Path, help="local open_clip weights (SAM-cls: default the model's own)")
    parser.add_argument("--clip-model", help="open_clip architecture (default ViT-B-32, or the SAM-cls model's)")
    parser.add_argument("--clip-config", type=Path, help="architecture JSON of a custom open_clip model")
    parser.add_argument("--score-threshold", type=float,
                        help="keep instances scoring at least this (default 0.05; YOLO-seg: ultralytics' conf, 0.25)")
    parser.add_argument("--imgsz", type=int, help="YOLO-seg inference size (default: its training size)")
    parser.add_argument("--image-size", type=int, help="SAM input size (default: its training size; another only for "
                                                       "encoders that take any input size, the timm ConvNets)")
    add_generator_args(parser)
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda, cuda:1, ...")


def model_options(args) -> dict:
    """The model options given on the command line, as the kind's predict function takes them."""
    options = {name: getattr(args, name) for name in PREDICT_OPTIONS if getattr(args, name, None) is not None}
    generator = generator_overrides(args)
    return {**options, **({"generator": generator} if generator else {})}
