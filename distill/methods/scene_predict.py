"""``distill predict`` on a whole scene, for every model kind: a raster of any size is cut into overlapping tiles
at the model's scale, each kind's own ``predict`` runs on the tiles (read one at a time), and the tiles'
detections become one set of polygons in scene coordinates (an object seen by two tiles comes back once, see
:mod:`sam_distill.data.polygons`), georeferenced when the raster is.

Prompted SAM takes its points and box in scene pixels and runs on one tile centred on them.

Output folder: ``scene.geojson`` and ``scene.gpkg`` (class, score, model; the raster's CRS), ``results.json``
(COCO results in scene pixels, image id 1), ``images.json`` (the scene as a COCO image and the categories) and
``overview.png`` (the scene decimated, the polygons drawn).
"""
from __future__ import annotations

import io
import time
from pathlib import Path

import torch

from sam_distill.core.errors import DistillError
from sam_distill.data.polygons import (
    Detection,
    mask_to_geometry,
    merge_tiles,
    require_shapely,
    touches_interior_edge,
    write_vectors,
)
from sam_distill.data.scenes import Scene, SceneTile, tile_grid
from sam_distill.methods.predict import predictor

SCENE_SUFFIXES = {".tif", ".tiff", ".vrt", ".jp2", ".img"}


def prompt_window(points, box, tile: int, scene: Scene) -> tuple[int, int, int, int]:
    """The tile centred on the prompts (their bounding box), moved inside the scene."""
    xs = [p[0] for p in points or []] + ([box[0], box[2]] if box else [])
    ys = [p[1] for p in points or []] + ([box[1], box[3]] if box else [])
    if max(xs) - min(xs) > tile or max(ys) - min(ys) > tile:
        raise DistillError(f"the prompts span {max(xs) - min(xs):.0f}×{max(ys) - min(ys):.0f} px, more than one "
                           f"--tile {tile}; raise --tile or prompt one object at a time")
    if not (0 <= min(xs) and max(xs) <= scene.width and 0 <= min(ys) and max(ys) <= scene.height):
        raise DistillError(f"a prompt lies outside the scene ({scene.width}×{scene.height} px); give scene pixels")
    width, height = min(tile, scene.width), min(tile, scene.height)
    x = int(min(max((min(xs) + max(xs)) / 2 - width / 2, 0), scene.width - width))
    y = int(min(max((min(ys) + max(ys)) / 2 - height / 2, 0), scene.height - height))
    return x, y, width, height


def shifted_prompts(options: dict, x: int, y: int) -> dict:
    """Scene-pixel prompts → the prompt window's pixels."""
    shifted = dict(options)
    if options.get("points"):
        shifted["points"] = [(px - x, py - y, label) for px, py, label in options["points"]]
    if options.get("box"):
        x0, y0, x1, y1 = options["box"]
        shifted["box"] = (x0 - x, y0 - y, x1 - x, y1 - y)
    return shifted


def draw_overview(scene: Scene, detections: list[Detection], classes: dict[int, str], path: Path) -> Path:
    """The scene decimated to at most 1024 px, each polygon outlined in its class colour."""
    from PIL import Image, ImageDraw

    from sam_distill.core.fileio import atomic_write_bytes
    from sam_distill.eval.gallery import class_colour

    rgb, scale = scene.overview()
    picture = Image.fromarray(rgb)
    draw = ImageDraw.Draw(picture)
    for detection in detections:
        colour = class_colour(classes.get(detection.category_id))
        for part in getattr(detection.geometry, "geoms", [detection.geometry]):
            draw.polygon([(px / scale, py / scale) for px, py in part.exterior.coords], outline=colour, width=2)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def predict_scene(model: Path, scene_path: Path, out: Path, device: torch.device, options: dict, tile: int = 1024,
                  overlap: int = 128, bands: tuple[int, ...] | None = None, stretch: tuple[float, float] | None = None,
                  min_iou: float = 0.5, log=print) -> dict:
    """Predict on a whole scene and write the output folder; returns a summary."""
    from pycocotools import mask as mask_utils

    from sam_distill.core.fileio import atomic_write_json

    require_shapely()
    predict = predictor(model, options)
    scene = Scene(scene_path, bands, stretch)
    if options.get("points") or options.get("box"):
        windows = [prompt_window(options.get("points"), options.get("box"), tile, scene)]
        options = shifted_prompts(options, *windows[0][:2])
        grid_size = 1
    else:
        grid = tile_grid(scene.width, scene.height, tile, overlap)
        windows = [window for window in grid if scene.has_data(window)]
        grid_size = len(grid)
    where = f"CRS {scene.crs.to_string()}" if scene.georeferenced else "no georeferencing: pixel coordinates"
    log(f"scene: {scene.path.name} {scene.width}×{scene.height} px, bands {','.join(map(str, scene.bands))}"
        + (", stretched" if scene.stretch else "") + f", {where}; {len(windows)} tile(s) of {tile} px with "
        f"{overlap} px overlap ({grid_size - len(windows)} without data skipped)")
    tiles = [SceneTile(scene, window) for window in windows]
    started = time.time()
    predictions = predict(Path(model), tiles, device, **options) if tiles else None
    seconds = time.time() - started
    tile_of = {entry["id"]: index for index, entry in enumerate(predictions.images)} if predictions else {}
    detections = []
    for result in predictions.results if predictions else []:
        index = tile_of[result["image_id"]]
        window = windows[index]
        mask = mask_utils.decode(result["segmentation"]).astype(bool)
        geometry = mask_to_geometry(mask, window[0], window[1])
        if geometry is not None:
            detections.append(Detection(geometry, result["category_id"], float(result.get("score", 1.0)), index,
                                        touches_interior_edge(mask, window, scene.width, scene.height)))
    merged = merge_tiles(detections, windows, min_iou)
    classes = {c["id"]: c["name"] for c in predictions.classes} if predictions else {}
    out = Path(out)
    paths = write_vectors(merged, classes, scene, Path(model).name, out)
    atomic_write_json(out / "images.json", {
        "images": [{"id": 1, "file_name": scene.path.name, "width": scene.width, "height": scene.height,
                    "path": str(scene.path)}],
        "categories": predictions.classes if predictions else []})
    paths["overview"] = draw_overview(scene, merged, classes, out / "overview.png")
    megapixels = sum(w * h for _, _, w, h in windows) / 1e6
    summary = {"scene": str(scene.path), "width": scene.width, "height": scene.height,
               "crs": scene.crs.to_string() if scene.georeferenced else None, "tiles": len(windows),
               "tiles_without_data": grid_size - len(windows), "tile_detections": len(detections),
               "objects": len(merged), "seam_merged": sum(d.cut for d in merged), "seconds": round(seconds, 2),
               "megapixels_per_second": round(megapixels / seconds, 3) if seconds > 0 else None,
               "files": {k: str(v) for k, v in paths.items()}}
    atomic_write_json(out / "scene.json", summary)
    log(f"scene: {len(merged)} object(s) from {len(detections)} tile detection(s) "
        f"({summary['seam_merged']} joined across seams) in {seconds:.1f} s; {', '.join(map(str, paths.values()))}")
    return summary


def is_scene(path: Path) -> bool:
    """A single raster file of a scene format (GeoTIFF and other GDAL formats), which ``distill predict`` tiles."""
    return Path(path).is_file() and Path(path).suffix.lower() in SCENE_SUFFIXES

