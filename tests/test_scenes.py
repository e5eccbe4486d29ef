"""Whole scenes: the tile grid, GeoTIFF reading (bands, 16-bit stretch, nodata), objects across tile seams coming
back once at the right map coordinates, and the command on a GeoTIFF with a real model file."""
from __future__ import annotations

import json

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
gpd = pytest.importorskip("geopandas")

from rasterio.transform import from_origin  # noqa: E402

from sam_distill.core.errors import DistillError  # noqa: E402
from sam_distill.data.scenes import Scene, parse_bands, parse_stretch, tile_grid  # noqa: E402
from sam_distill.methods.scene_predict import predict_scene, prompt_window, shifted_prompts  # noqa: E402

ORIGIN_X, ORIGIN_Y, PIXEL = 500_000.0, 4_100_000.0, 0.5
CRS = "EPSG:32633"


def write_raster(path, bands: np.ndarray, nodata=None):
    """(count, h, w) array → a GeoTIFF in UTM 33N, 0.5 m pixels, top-left at (500000, 4100000)."""
    count, height, width = bands.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count, dtype=bands.dtype,
                       crs=CRS, transform=from_origin(ORIGIN_X, ORIGIN_Y, PIXEL, PIXEL), nodata=nodata) as dst:
        dst.write(bands)
    return path


# Objects (x0, y0, x1, y1) in scene pixels of a 600×400 scene cut into 256-px tiles with 64 px overlap
# (tile columns start at 0, 192, 344; rows at 0, 144):
WHOLE = (40, 40, 90, 80)          # inside the first tile only
ACROSS_SEAM = (230, 100, 330, 150)  # cut by the first tile's right edge (256), whole in the second tile
LONG = (150, 300, 560, 330)       # wider than any tile: cut in every tile that sees it


def scene_with_objects(path):
    pixels = np.full((3, 400, 600), 40, np.uint8)
    for x0, y0, x1, y1 in (WHOLE, ACROSS_SEAM, LONG):
        pixels[:, y0:y1, x0:x1] = 230
    return write_raster(path, pixels)


def threshold_predict(model, tiles, device, **options):
    """A deterministic stand-in for a model: each connected bright region of a tile is one 'box' instance."""
    from scipy import ndimage

    from sam_distill.eval.coco_ap import masks_to_results
    from sam_distill.methods.instance_predict import Predictions, readable_images

    results, entries = [], []
    for image, _, entry in readable_images(tiles, progress=False):
        labels, count = ndimage.label(image[..., 0] > 200)
        masks = np.array([labels == k for k in range(1, count + 1)]).reshape(count, *labels.shape)
        results += masks_to_results(entry["id"], masks, np.full(count, 0.9), np.ones(count, int))
        entries.append(entry)
    return Predictions(results, entries, [{"id": 1, "name": "box"}])


def map_bounds(x0, y0, x1, y1):
    return (ORIGIN_X + x0 * PIXEL, ORIGIN_Y - y1 * PIXEL, ORIGIN_X + x1 * PIXEL, ORIGIN_Y - y0 * PIXEL)


def test_tile_grid_covers_the_scene_with_the_asked_overlap():
    assert tile_grid(600, 400, 256, 64) == [(x, y, 256, 256) for y in (0, 144) for x in (0, 192, 344)]
    assert tile_grid(100, 50, 256, 64) == [(0, 0, 100, 50)]
    with pytest.raises(DistillError, match="--overlap 256 must be"):
        tile_grid(600, 400, 256, 256)


def test_objects_across_tile_seams_come_back_once_at_their_map_coordinates(tmp_path, monkeypatch):
    import sam_distill.methods.scene_predict as scene_predict

    monkeypatch.setattr(scene_predict, "predictor", lambda model, options: threshold_predict)
    scene = scene_with_objects(tmp_path / "scene.tif")
    summary = predict_scene(tmp_path / "model.pt", scene, tmp_path / "out", "cpu", {}, tile=256, overlap=64,
                            log=lambda m: None)
    assert summary["tiles"] == 6 and summary["crs"] == CRS
    assert summary["objects"] == 3 and summary["tile_detections"] > 3
    frame = gpd.read_file(tmp_path / "out" / "scene.gpkg")
    assert frame.crs.to_string() == CRS and set(frame["class"]) == {"box"}
    found = sorted(tuple(round(v, 3) for v in geometry.bounds) for geometry in frame.geometry)
    assert found == sorted(map_bounds(*box) for box in (WHOLE, ACROSS_SEAM, LONG))
    areas = sorted(round(geometry.area, 3) for geometry in frame.geometry)
    assert areas == sorted((x1 - x0) * (y1 - y0) * PIXEL ** 2 for x0, y0, x1, y1 in (WHOLE, ACROSS_SEAM, LONG))
    assert sorted(frame["seam_merged"]) == [False, False, True]  # only the long one had no whole copy
    geojson = json.loads((tmp_path / "out" / "scene.geojson").read_text())
    assert len(geojson["features"]) == 3
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sorted(tuple(round(v) for v in r["bbox"]) for r in results) == sorted(
        (x0, y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in (WHOLE, ACROSS_SEAM, LONG))
    assert (tmp_path / "out" / "overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sixteen_bit_four_band_scene_with_nodata(tmp_path):
    """Band selection picks the bands asked for, the percentile stretch maps them to 8 bits as computed by hand,
    nodata pixels are invalid and a tile of nodata only is skipped."""
    height, width = 64, 200
    ramp = np.tile(np.linspace(1000, 2000, width), (height, 1)).astype(np.uint16)
    bands = np.stack([ramp, ramp // 2, ramp // 4, 3000 - ramp]).astype(np.uint16)
    bands[:, :, 150:] = 0  # nodata on the right
    path = write_raster(tmp_path / "ms.tif", bands, nodata=0)
    scene = Scene(path, bands=parse_bands("4,1,2"), stretch=parse_stretch("0,100"))
    rgb, valid = scene.read((0, 0, 200, 64))
    assert rgb.shape == (64, 200, 3) and rgb.dtype == np.uint8
    assert not valid[:, 150:].any() and valid[:, :150].all() and (rgb[:, 150:] == 0).all()
    valid_ramp = ramp[0, :150].astype(float)
    low, high = (3000 - valid_ramp).min(), (3000 - valid_ramp).max()
    expected = np.clip((3000 - valid_ramp - low) / (high - low) * 255, 0, 255).astype(np.uint8)
    assert np.abs(rgb[0, :150, 0].astype(int) - expected.astype(int)).max() <= 1  # band 4 is red
    assert rgb[0, 0, 1] == 0 and rgb[0, 149, 1] == 255  # band 1 stretched over its valid range
    assert scene.has_data((0, 0, 64, 64)) and not scene.has_data((160, 0, 40, 64))
    with pytest.raises(DistillError, match="has bands 1..4"):
        Scene(path, bands=(5, 1, 2))
    grey = Scene(write_raster(tmp_path / "one.tif", bands[:1]))
    assert grey.bands == (1,) and grey.read((0, 0, 10, 10))[0].shape == (10, 10, 3)


def test_prompts_in_scene_pixels_run_on_the_tile_around_them(tmp_path):
    scene = Scene(scene_with_objects(tmp_path / "scene.tif"))
    window = prompt_window([(300, 120, 1)], (230, 100, 330, 150), 256, scene)
    assert window == (152, 0, 256, 256)  # centred on x 280 and moved down to the top edge
    shifted = shifted_prompts({"points": [(300, 120, 1)], "box": (230, 100, 330, 150)}, *window[:2])
    assert shifted == {"points": [(148, 120, 1)], "box": (78, 100, 178, 150)}
    with pytest.raises(DistillError, match="more than one --tile 256"):
        prompt_window([(10, 10, 1), (500, 10, 1)], None, 256, scene)


def test_distill_predict_on_a_geotiff_with_a_sam_file(tmp_path, tiny_teacher_checkpoint, capsys):
    """The command tiles a GeoTIFF for a real model file (SAM everything mode) and writes the scene layout in the
    raster's CRS; a file that is not a raster, and --bands without a scene, are one line each."""
    from sam_distill.cli import main

    scene = scene_with_objects(tmp_path / "scene.tif")
    out = tmp_path / "out"
    assert main(["predict", str(tiny_teacher_checkpoint), str(scene), "--out", str(out), "--tile", "256",
                 "--overlap", "64", "--points-per-side", "2"]) == 0
    summary = json.loads((out / "scene.json").read_text())
    assert summary["tiles"] == 6 and summary["crs"] == CRS
    frame = gpd.read_file(out / "scene.geojson")
    assert len(frame) == summary["objects"]
    if len(frame):  # random weights: whatever it finds lies inside the scene's footprint
        minx, miny, maxx, maxy = frame.total_bounds
        assert ORIGIN_X <= minx and maxx <= ORIGIN_X + 600 * PIXEL and ORIGIN_Y - 400 * PIXEL <= miny <= maxy <= ORIGIN_Y
    (tmp_path / "broken.tif").write_bytes(b"not a raster")
    capsys.readouterr()
    assert main(["predict", str(tiny_teacher_checkpoint), str(tmp_path / "broken.tif"), "--out", str(out)]) == 2
    assert "is not a raster GDAL can read" in capsys.readouterr().err
    assert main(["predict", str(tiny_teacher_checkpoint), str(tmp_path), "--out", str(out), "--bands", "1"]) == 2
    assert "--bands applies to scenes" in capsys.readouterr().err


def test_a_scene_prediction_is_scored_with_every_detection_counted(tmp_path):
    """A whole scene is one image holding hundreds of objects: COCO's cap of 100 detections an image would score only
    the best 100 of them. `distill eval ap` on a scene's output folder (it holds scene.json) counts them all."""
    from sam_distill.methods.predict import evaluate_ap

    side, count = 20, 150
    boxes = [(40 * (i % 15), 40 * (i // 15), side, side) for i in range(count)]

    def square(x, y):
        return [x, y, x + side, y, x + side, y + side, x, y + side]

    annotations = [{"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": side * side,
                    "bbox": list(map(float, box)), "segmentation": [square(*box[:2])]} for i, box in enumerate(boxes)]
    ground_truth = tmp_path / "gt.json"
    ground_truth.write_text(json.dumps({"images": [{"id": 1, "file_name": "scene.tif", "width": 600, "height": 400}],
                                        "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}))
    out = tmp_path / "prediction"
    out.mkdir()
    results = [{"image_id": 1, "category_id": 1, "score": 0.5, "bbox": list(map(float, box)),
                "segmentation": [square(*box[:2])]} for box in boxes]
    (out / "results.json").write_text(json.dumps(results))
    (out / "images.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "scene.tif"}],
                                                 "categories": [{"id": 1, "name": "object"}]}))
    capped = evaluate_ap(out, ground_truth)
    assert capped["mask_AP"] < 0.7  # 100 of the 150 objects found at most
    (out / "scene.json").write_text(json.dumps({"tiles": 1}))
    scene = evaluate_ap(out, ground_truth)
    assert scene["max_detections"] == count and scene["mask_AP"] == pytest.approx(1.0)
