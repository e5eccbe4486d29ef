"""Whole remote-sensing scenes: rasters of any size read window by window (GeoTIFF and every format GDAL reads),
band selection and a percentile stretch to 8-bit RGB, the grid of overlapping tiles, and the tiles as in-memory
images that every model kind's ``predict`` takes in place of image files.

Memory stays bounded whatever the scene size: a tile is read when the model asks for it, the stretch comes from a
decimated read, and which tiles hold data at all is decided on a decimated read of GDAL's mask (nodata, alpha).
rasterio is an optional extra: without it a scene gets one line naming it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sam_distill.core.errors import DistillError

GEO_EXTRA = 'pip install "sam-distill[geo]"'
OVERVIEW_SIDE = 1024  # longest side of the decimated reads (stretch statistics, data mask, overview picture)


def require_rasterio():
    try:
        import rasterio
    except ImportError:
        raise DistillError(f"reading scenes (GeoTIFF, tiled prediction) needs rasterio: {GEO_EXTRA}") from None
    return rasterio


def tile_grid(width: int, height: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Windows (x, y, width, height) of side ``tile`` stepping ``tile - overlap``, the last one flush with the far
    edge, so every pixel is covered and neighbours share ``overlap`` pixels (more at the far edge)."""
    if tile < 16:
        raise DistillError(f"--tile {tile} is too small; use at least 16 (the model's input size is a good choice)")
    if not 0 <= overlap < tile:
        raise DistillError(f"--overlap {overlap} must be at least 0 and smaller than --tile {tile}")

    def starts(size: int) -> list[int]:
        if size <= tile:
            return [0]
        return sorted(set(range(0, size - tile, tile - overlap)) | {size - tile})

    return [(x, y, min(tile, width - x), min(tile, height - y)) for y in starts(height) for x in starts(width)]


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    """``"4,3,2"`` → (4, 3, 2): 1-based band numbers as GDAL counts them, one (grey) or three (RGB)."""
    if text is None:
        return None
    try:
        bands = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise DistillError(f"--bands {text!r}: give 1-based band numbers separated by commas, e.g. 4,3,2") from None
    if len(bands) not in (1, 3):
        raise DistillError(f"--bands {text!r}: give one band (grey) or three (red, green, blue), not {len(bands)}")
    return bands


def parse_stretch(text: str | None) -> tuple[float, float] | None:
    """``"2,98"`` → (2.0, 98.0): the percentiles mapped to 0 and 255."""
    if text is None:
        return None
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise DistillError(f"--stretch {text!r}: give two percentiles, e.g. 2,98") from None
    if not 0 <= low < high <= 100:
        raise DistillError(f"--stretch {text!r}: percentiles must satisfy 0 <= low < high <= 100")
    return low, high


class Scene:
    """One raster, read window by window as 8-bit RGB with a validity mask.

    ``bands``: 1-based band numbers (default: 1, 2, 3, or band 1 as grey when there are fewer than three).
    ``stretch``: percentiles (low, high) mapped to 0..255 per band, computed once over the valid pixels of a
    decimated read; default (2, 98) for data that is not 8-bit (16-bit, float), none for 8-bit data.
    """

    def __init__(self, path: Path | str, bands: tuple[int, ...] | None = None,
                 stretch: tuple[float, float] | None = None):
        rasterio = require_rasterio()
        self.path = Path(path)
        if not self.path.is_file():
            raise DistillError(f"scene {self.path} does not exist")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                self.dataset = rasterio.open(self.path)
        except rasterio.errors.RasterioIOError as err:
            raise DistillError(f"{self.path} is not a raster GDAL can read ({str(err).splitlines()[0][:120]}); "
                               "give a GeoTIFF or an image file") from None
        ds = self.dataset
        self.width, self.height, self.crs, self.transform = ds.width, ds.height, ds.crs, ds.transform
        self.georeferenced = ds.crs is not None and not ds.transform.is_identity
        self.bands = bands or ((1, 2, 3) if ds.count >= 3 else (1,))
        wrong = [b for b in self.bands if not 1 <= b <= ds.count]
        if wrong:
            raise DistillError(f"--bands {','.join(map(str, self.bands))}: {self.path} has bands 1..{ds.count}")
        eight_bit = all(ds.dtypes[b - 1] == "uint8" for b in self.bands)
        percentiles = stretch if stretch is not None else (None if eight_bit else (2.0, 98.0))
        self.stretch = self._band_limits(percentiles) if percentiles else None
        self._data_mask, self._mask_scale = self._decimated_mask()

    def _decimated(self, indexes, side: int = OVERVIEW_SIDE):
        scale = max(1.0, max(self.width, self.height) / side)
        shape = (max(1, round(self.height / scale)), max(1, round(self.width / scale)))
        return self.dataset.read(indexes, out_shape=(len(indexes), *shape)), scale

    def _decimated_mask(self) -> tuple[np.ndarray, float]:
        scale = max(1.0, max(self.width, self.height) / OVERVIEW_SIDE)
        shape = (max(1, round(self.height / scale)), max(1, round(self.width / scale)))
        return self.dataset.dataset_mask(out_shape=shape) > 0, scale

    def _band_limits(self, percentiles: tuple[float, float]) -> list[tuple[float, float]]:
        data, _ = self._decimated(list(self.bands))
        valid = self._decimated_mask()[0]
        limits = []
        for band in data.astype(np.float64):
            values = band[valid] if valid.any() else band.ravel()
            low, high = np.percentile(values, percentiles) if values.size else (0.0, 1.0)
            limits.append((float(low), float(high) if high > low else float(low) + 1.0))
        return limits

    def to_rgb(self, data: np.ndarray) -> np.ndarray:
        """(bands, h, w) raw values → h×w×3 uint8 (stretched per band when the scene has a stretch)."""
        if self.stretch is not None:
            data = np.stack([(band.astype(np.float64) - low) / (high - low) * 255.0
                             for band, (low, high) in zip(data, self.stretch)])
        rgb = np.clip(data, 0, 255).astype(np.uint8).transpose(1, 2, 0)
        return np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb

    def read(self, window: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(RGB h×w×3 uint8 with invalid pixels set to 0, valid h×w bool) of one window (x, y, width, height)."""
        from rasterio.windows import Window

        area = Window(*window)
        rgb = self.to_rgb(self.dataset.read(list(self.bands), window=area))
        valid = self.dataset.dataset_mask(window=area) > 0
        rgb[~valid] = 0
        return rgb, valid

    def has_data(self, window: tuple[int, int, int, int]) -> bool:
        """Whether any pixel of the window is valid, judged on the decimated mask (a skipped tile is all nodata)."""
        x, y, w, h = window
        s = self._mask_scale
        rows = slice(int(y / s), max(int(y / s) + 1, int(np.ceil((y + h) / s))))
        cols = slice(int(x / s), max(int(x / s) + 1, int(np.ceil((x + w) / s))))
        return bool(self._data_mask[rows, cols].any())

    def overview(self) -> tuple[np.ndarray, float]:
        """The whole scene, decimated to at most ``OVERVIEW_SIDE`` px on its longest side, and the scale used."""
        data, scale = self._decimated(list(self.bands))
        rgb = self.to_rgb(data)
        rgb[~self._data_mask[: rgb.shape[0], : rgb.shape[1]]] = 0
        return rgb, scale


@dataclass(frozen=True)
class SceneTile:
    """One window of a scene, read when a model asks for it: what ``readable_images`` takes besides image paths."""

    scene: Scene
    window: tuple[int, int, int, int]

    @property
    def name(self) -> str:
        x, y, _, _ = self.window
        return f"{self.scene.path.stem}_x{x}_y{y}.png"

    def load(self) -> np.ndarray:
        return self.scene.read(self.window)[0]

    def __str__(self) -> str:
        return f"{self.scene.path}[x={self.window[0]}, y={self.window[1]}, {self.window[2]}x{self.window[3]}]"
