"""Tile detections → one set of scene polygons: masks become polygons in scene pixels, the copies of an object that
neighbouring tiles both saw become one, and the result is georeferenced and written as GeoJSON, GeoPackage and
COCO results.

How an object is recognised in two tiles: inside the pixels the two windows share, both tiles saw the same
image, so the same object gives nearly the same mask there; two detections of one class whose parts inside the
shared window overlap with IoU >= ``min_iou`` are one object. Of such a group, a detection that touches no
interior tile edge saw the whole object and is kept (the best-scoring one); when every copy was cut by a seam,
the object is the union of its pieces.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sam_distill.core.errors import DistillError
from sam_distill.data.scenes import GEO_EXTRA


def require_shapely():
    try:
        import shapely  # noqa: F401
    except ImportError:
        raise DistillError(f"scene polygons need shapely and geopandas: {GEO_EXTRA}") from None


@dataclass
class Detection:
    """One object: its outline in scene pixels, class id (``None``: class-agnostic), score, and the tile it came
    from with whether it touches that tile's interior edge (``cut``: the tile may have seen only part of it)."""

    geometry: object  # shapely (Multi)Polygon
    category_id: int | None
    score: float
    tile: int
    cut: bool


def mask_to_geometry(mask: np.ndarray, x0: int, y0: int):
    """A boolean mask placed at (x0, y0) of the scene → its outline as a shapely (Multi)Polygon in scene pixels
    (pixel edges, so a w×h rectangle has area w·h)."""
    from affine import Affine
    from rasterio.features import shapes
    from shapely.geometry import shape
    from shapely.ops import unary_union

    pieces = [shape(geometry) for geometry, value in
              shapes(mask.astype(np.uint8), mask=mask, transform=Affine.translation(x0, y0)) if value]
    return unary_union(pieces) if pieces else None


def touches_interior_edge(mask: np.ndarray, window: tuple[int, int, int, int], width: int, height: int) -> bool:
    """Whether the mask reaches an edge of its tile that lies inside the scene (a seam), where it may be cut."""
    x, y, w, h = window
    return bool((x > 0 and mask[:, 0].any()) or (y > 0 and mask[0].any())
                or (x + w < width and mask[:, -1].any()) or (y + h < height and mask[-1].any()))


def _window_box(window):
    from shapely.geometry import box

    x, y, w, h = window
    return box(x, y, x + w, y + h)


def merge_tiles(detections: list[Detection], windows: list[tuple[int, int, int, int]],
                min_iou: float = 0.5) -> list[Detection]:
    """One detection per object (see the module's docstring), in descending score."""
    from shapely import STRtree
    from shapely.ops import unary_union

    if not detections:
        return []
    parent = list(range(len(detections)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    tree = STRtree([d.geometry for d in detections])
    boxes = [_window_box(w) for w in windows]
    for i, j in zip(*tree.query([d.geometry for d in detections], predicate="intersects")):
        a, b = detections[i], detections[j]
        if i >= j or a.tile == b.tile or a.category_id != b.category_id:
            continue
        shared = boxes[a.tile].intersection(boxes[b.tile])
        part_a, part_b = a.geometry.intersection(shared), b.geometry.intersection(shared)
        union = part_a.union(part_b).area
        if union > 0 and part_a.intersection(part_b).area / union >= min_iou:
            parent[root(i)] = root(j)

    groups: dict[int, list[Detection]] = {}
    for index, detection in enumerate(detections):
        groups.setdefault(root(index), []).append(detection)
    merged = []
    for group in groups.values():
        whole = [d for d in group if not d.cut]
        if whole:
            merged.append(max(whole, key=lambda d: d.score))
        else:
            merged.append(Detection(unary_union([d.geometry for d in group]), group[0].category_id,
                                    max(d.score for d in group), group[0].tile, True))
    return sorted(merged, key=lambda d: -d.score)


def georeference(geometry, transform):
    """Scene pixels → the raster's coordinates through its affine transform (GDAL order a, b, c, d, e, f)."""
    from shapely.affinity import affine_transform

    return affine_transform(geometry, [transform.a, transform.b, transform.d, transform.e, transform.c, transform.f])


def coco_polygons(geometry) -> list[list[float]]:
    """COCO's polygon list (exterior rings, x y x y ...) of a (Multi)Polygon in pixels."""
    parts = getattr(geometry, "geoms", [geometry])
    return [[round(float(v), 2) for point in list(part.exterior.coords)[:-1] for v in point] for part in parts]


def write_vectors(detections: list[Detection], classes: dict[int, str], scene, model: str, out: Path) -> dict[str, Path]:
    """``scene.geojson`` and ``scene.gpkg`` (class, score, model; the raster's CRS, or pixel coordinates for an
    image without georeferencing) and ``results.json`` (COCO results in scene pixels, image id 1)."""
    import geopandas as gpd

    from sam_distill.core.fileio import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    rows = [{"class": classes.get(d.category_id, "object"), "category_id": d.category_id or 1,
             "score": round(d.score, 4), "model": model, "seam_merged": d.cut,
             "geometry": georeference(d.geometry, scene.transform) if scene.georeferenced else d.geometry}
            for d in detections]
    frame = gpd.GeoDataFrame(rows, geometry="geometry", crs=scene.crs if scene.georeferenced else None) if rows else \
        gpd.GeoDataFrame({"class": [], "category_id": [], "score": [], "model": [], "seam_merged": []},
                         geometry=[], crs=scene.crs if scene.georeferenced else None)
    paths = {"geojson": out / "scene.geojson", "gpkg": out / "scene.gpkg", "results": out / "results.json"}
    for key, driver in (("geojson", "GeoJSON"), ("gpkg", "GPKG")):
        paths[key].unlink(missing_ok=True)
        frame.to_file(paths[key], driver=driver)
    results = []
    for d in detections:
        x0, y0, x1, y1 = d.geometry.bounds
        results.append({"image_id": 1, "category_id": d.category_id or 1, "score": round(d.score, 4),
                        "segmentation": coco_polygons(d.geometry), "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": float(d.geometry.area)})
    atomic_write_text(paths["results"], json.dumps(results))
    return paths
