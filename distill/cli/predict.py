"""``distill predict MODEL IMAGES --out DIR``: any model file on an image, a folder or a whole scene (tiled)."""
from __future__ import annotations

from pathlib import Path

from sam_distill.cli.options import add_model_options, model_options
from sam_distill.core.errors import DistillError


def cmd_predict(args) -> int:
    from sam_distill.core.device import pick_device
    from sam_distill.methods.predict import output_folder, predict_to_folder
    from sam_distill.methods.scene_predict import is_scene, predict_scene

    if args.tile is not None or is_scene(args.images):
        from sam_distill.data.scenes import parse_bands, parse_stretch

        if args.images.is_dir():
            raise DistillError(f"--tile takes one scene file, not the folder {args.images}; run it once per scene")
        predict_scene(args.model, args.images, output_folder(args.out), pick_device(args.device), model_options(args),
                      args.tile or 1024, args.overlap, parse_bands(args.bands), parse_stretch(args.stretch))
        return 0
    for flag, value in (("--bands", args.bands), ("--stretch", args.stretch)):
        if value is not None:
            raise DistillError(f"{flag} applies to scenes: add --tile SIZE (or give a GeoTIFF)")
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
    scene = p.add_argument_group("whole scenes (a GeoTIFF, or any image with --tile): tiles, merged polygons, "
                                 "scene.geojson/.gpkg in the raster's CRS, overview.png")
    scene.add_argument("--tile", type=int, help="tile side in px (default for a GeoTIFF: 1024; the model's input "
                                                "size keeps its native scale)")
    scene.add_argument("--overlap", type=int, default=128, help="px shared by neighbouring tiles (at least the "
                                                                "size of the largest object keeps it whole in one)")
    scene.add_argument("--bands", help="1-based bands for R,G,B (or one band, grey), e.g. 4,3,2; default 1,2,3")
    scene.add_argument("--stretch", help="percentiles mapped to 0 and 255 per band, e.g. 2,98 (default for data "
                                         "that is not 8-bit)")
    p.set_defaults(func=cmd_predict)
