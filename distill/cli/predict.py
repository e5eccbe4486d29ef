"""``distill predict MODEL IMAGES --out DIR``: any model file on an image or a folder, one output layout."""
from __future__ import annotations

from pathlib import Path

from sam_distill.cli.options import add_model_options, model_options


def cmd_predict(args) -> int:
    from sam_distill.core.device import pick_device
    from sam_distill.methods.predict import predict_to_folder

    predict_to_folder(args.model, args.images, args.out, pick_device(args.device), model_options(args), args.overlays,
                      args.overlay_min_score)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="masks from any model file: results.json (COCO results), images.json and overlays/ in --out",
        description="SAM files take --point/--box (none: everything mode); YOLO-seg students one of --point, --box, "
                    "--text (none: every mask); RSPrompter, SAM-det and SAM-seg files no prompt; SAM-cls files "
                    "--text or none. An option a model kind has no use for is refused.")
    p.add_argument("model", type=Path, help="a model file (model.pt, mobile_sam.pt, an official SAM .pth, a YOLO-seg "
                                            ".pt, prompter.pt, sam_det.pt, sam_seg.pt, sam_cls.pt)")
    p.add_argument("images", type=Path, help="an image or a folder of images (searched recursively)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    add_model_options(p, prompts=True)
    p.add_argument("--overlays", type=int, default=20, help="how many overlay images to write")
    p.add_argument("--overlay-min-score", type=float, default=0.3, help="instances drawn on the overlays")
    p.set_defaults(func=cmd_predict)
