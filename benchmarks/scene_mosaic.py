"""Whole-scene prediction at scale: a GeoTIFF mosaic of NWPU VHR-10 validation images (default 10 × 10 cells of
800 px: 8000 × 8000 px), its COCO ground truth, and for each model ``distill predict``'s tiled path on it:
megapixels per second, peak memory, and class-agnostic mask AP of the merged scene polygons against the mosaic's
ground truth (as one image, every detection counted), the same polygons re-cut into the mosaic's images and scored
as the images one by one are (COCO's 100 detections each), and the model's AP on those images untiled, which the
re-cut tiled prediction should match.

    python benchmarks/scene_mosaic.py MODEL [MODEL ...] [--cells 10] [--cell 800] [--tile 512] [--overlap 128]
        [--points-per-side 16 --pred-iou-thresh 0.88 ...] [--out runs/scene_mosaic]

Run from the folder that holds ../shared. Each model runs in a fresh process, so its peak memory (VmHWM) is its
own. Each model's row is written as soon as it is measured; a rerun measures only the models not in the
table yet (and reuses the mosaic). Figures: docs/BENCHMARKS.md ("Whole scenes").
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path("../shared/data/nwpu_vhr10")


def build_mosaic(out: Path, cells: int, cell: int, val_fraction: float = 0.2) -> tuple[Path, Path, Path]:
    """mosaic.tif (EPSG:32633, 0.5 m pixels), mosaic_coco.json (one image), and cells/ with cells_coco.json (the
    same pixels image by image, for the untiled AP). Images larger than a cell are cropped to it, with their
    objects."""
    import rasterio
    from PIL import Image
    from pycocotools import mask as mask_utils
    from rasterio.transform import from_origin

    from sam_distill.core.images import load_rgb
    from sam_distill.data.coco import load_coco, split_image_ids

    annotations = DATA / "annotations_train.json"
    coco = load_coco(annotations)
    ids = split_image_ids(coco, "val", val_fraction, annotations)[: cells * cells]
    side = cells * cell
    mosaic = np.zeros((side, side, 3), np.uint8)
    scene_anns, cell_images, cell_anns = [], [], []
    (out / "cells").mkdir(parents=True, exist_ok=True)
    for position, image_id in enumerate(ids):
        row, col = divmod(position, cells)
        x0, y0 = col * cell, row * cell
        image = load_rgb(DATA / "images" / coco.imgs[image_id]["file_name"])[:cell, :cell]
        h, w = image.shape[:2]
        mosaic[y0:y0 + h, x0:x0 + w] = image
        name = f"cell{position:03d}.png"
        Image.fromarray(image).save(out / "cells" / name)
        cell_images.append({"id": position + 1, "file_name": name, "width": w, "height": h})
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False)):
            mask = coco.annToMask(ann)[:cell, :cell].astype(bool)
            if not mask.any():
                continue
            for target, (dx, dy, size, image_ref) in ((scene_anns, (x0, y0, (side, side), 1)),
                                                      (cell_anns, (0, 0, (h, w), position + 1))):
                placed = np.zeros(size, bool)
                placed[dy:dy + h, dx:dx + w] = mask
                rle = mask_utils.encode(np.asfortranarray(placed.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode()
                target.append({"id": len(target) + 1, "image_id": image_ref, "category_id": 1, "iscrowd": 0,
                               "segmentation": rle, "area": float(placed.sum()),
                               "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
    categories = [{"id": 1, "name": "object"}]
    path = out / "mosaic.tif"
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500_000, 4_100_000, 0.5, 0.5), tiled=True, compress="deflate") as dst:
        dst.write(mosaic.transpose(2, 0, 1))
    scene_gt, cells_gt = out / "mosaic_coco.json", out / "cells_coco.json"
    scene_gt.write_text(json.dumps({"images": [{"id": 1, "file_name": "mosaic.tif", "width": side, "height": side}],
                                    "annotations": scene_anns, "categories": categories}))
    cells_gt.write_text(json.dumps({"images": cell_images, "annotations": cell_anns, "categories": categories}))
    return path, scene_gt, cells_gt


def model_folder(out: Path, model: str) -> Path:
    """Where one model's outputs go: named after the last parts of its path, since run folders hold files of the
    same name (two runs' model/sam_det.pt)."""
    return out / "_".join(Path(model).with_suffix("").parts[-3:])


def measure(model: str, scene: Path, out: Path, tile: int, overlap: int, generator: dict) -> dict:
    """In this (fresh) process: the tiled prediction of one model, its speed and peak memory."""
    import torch

    from sam_distill.core.model_files import identify
    from sam_distill.methods.scene_predict import predict_scene

    torch.set_num_threads(2)
    options = {"generator": generator} if identify(model).name == "sam" else {}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.time()
    summary = predict_scene(Path(model), scene, out, torch.device("cpu"), options, tile, overlap, log=lambda m: None)
    summary["wall_seconds"] = round(time.time() - started, 1)
    summary["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    summary["rss_before_mib"] = round(before / 1024, 1)
    return summary


def generator_flags(generator: dict) -> list[str]:
    return [text for key, value in generator.items() for text in (f"--{key.replace('_', '-')}", str(value))]


def untiled_ap(model: str, cells_gt: Path, out: Path, generator: dict) -> dict:
    """The same model on the mosaic's images one by one (``distill eval ap --class-agnostic``); kept in the
    model's folder, so a rerun that measures the tiled path again (on a quiet machine, say) does not redo it."""
    from sam_distill.cli import main
    from sam_distill.core.model_files import identify

    if (out / "untiled_ap.json").exists():
        return json.loads((out / "untiled_ap.json").read_text())
    images = out.parent / "cells"
    extra = generator_flags(generator) if identify(model).name == "sam" else []
    code = main(["eval", "ap", model, "--annotations", str(cells_gt), "--images", str(images), "--class-agnostic",
                 "--out", str(out / "untiled_ap.json"), *extra])
    return json.loads((out / "untiled_ap.json").read_text()) if code == 0 else {"error": f"exit {code}"}


def recut_into_cells(results: list[dict], cells: int, cell: int) -> list[dict]:
    """The scene's detections as detections of the mosaic's images: each goes to the cell holding its box centre,
    in that cell's pixels. Scored against the cells' ground truth with COCO's 100 detections per image, the tiled
    prediction meets exactly the protocol of the untiled one."""
    recut = []
    for result in results:
        x, y, w, h = result["bbox"]
        col, row = min(int((x + w / 2) // cell), cells - 1), min(int((y + h / 2) // cell), cells - 1)
        dx, dy = col * cell, row * cell
        polygons = [[v - (dx if i % 2 == 0 else dy) for i, v in enumerate(p)] for p in result["segmentation"]]
        recut.append({**result, "image_id": row * cells + col + 1, "segmentation": polygons,
                      "bbox": [x - dx, y - dy, w, h]})
    return recut


def main() -> None:
    from sam_distill.cli.options import add_generator_args, generator_overrides

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="model files (any kind distill predict takes)")
    parser.add_argument("--cells", type=int, default=10)
    parser.add_argument("--cell", type=int, default=800)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=128)
    add_generator_args(parser)  # SAM's everything mode on each tile (a SAM model file); unset: its defaults
    parser.add_argument("--out", type=Path, default=Path("runs/scene_mosaic"))
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one model in a fresh process
    args = parser.parse_args()
    generator = generator_overrides(args)
    if not args.models and not args.measure:
        parser.error("give at least one model file")
    if args.measure:
        scene, out = Path(args.out) / "mosaic.tif", model_folder(Path(args.out), args.measure)
        summary = measure(args.measure, scene, out, args.tile, args.overlap, generator)
        print(json.dumps(summary))
        return

    from sam_distill.eval.coco_ap import mask_ap

    args.out.mkdir(parents=True, exist_ok=True)
    scene, scene_gt, cells_gt = args.out / "mosaic.tif", args.out / "mosaic_coco.json", args.out / "cells_coco.json"
    if not (scene.exists() and scene_gt.exists() and cells_gt.exists()):
        scene, scene_gt, cells_gt = build_mosaic(args.out, args.cells, args.cell)
    print(f"mosaic {scene} ({args.cells * args.cell} px square), ground truth {scene_gt}")
    table = args.out / "scene_mosaic.json"
    rows = json.loads(table.read_text()) if table.exists() else []  # a rerun keeps the models already measured
    for model in args.models:
        if any(row["model"] == model for row in rows):
            print(f"{model}: measured already ({table})")
            continue
        command = [sys.executable, __file__, "--measure", model, "--out", str(args.out), "--tile", str(args.tile),
                   "--overlap", str(args.overlap), *generator_flags(generator)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{model}: failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        out = model_folder(args.out, model)
        results = json.loads((out / "results.json").read_text())
        # one image holding every object: COCO's 100-detection cap would count only the best 100 of thousands
        tiled = mask_ap(scene_gt, results, class_agnostic=True, max_detections=max(100, len(results)))
        cells_total = len(json.loads(cells_gt.read_text())["images"])
        per_cell = mask_ap(cells_gt, recut_into_cells(results, args.cells, args.cell), class_agnostic=True,
                           image_ids=list(range(1, cells_total + 1)))
        untiled = untiled_ap(model, cells_gt, out, generator)
        row = {"model": model, "generator": generator, "tile": args.tile, "overlap": args.overlap,
               "megapixels_per_second": summary["megapixels_per_second"],
               "wall_seconds": summary["wall_seconds"], "peak_rss_mib": summary["peak_rss_mib"],
               "tiles": summary["tiles"], "objects": summary["objects"], "seam_merged": summary["seam_merged"],
               "tiled_mask_AP": tiled["stats"]["AP"], "tiled_mask_AP50": tiled["stats"]["AP50"],
               "tiled_recut_mask_AP": per_cell["stats"]["AP"], "tiled_recut_mask_AP50": per_cell["stats"]["AP50"],
               "untiled_mask_AP": untiled.get("mask_AP"), "untiled_mask_AP50": untiled.get("mask_AP50")}
        rows.append(row)
        table.write_text(json.dumps(rows, indent=1))
        print(json.dumps(row))
    print(f"written {table}")


if __name__ == "__main__":
    main()
