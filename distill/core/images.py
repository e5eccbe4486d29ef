"""Image folders and SAM's exact preprocessing.

Any image PIL reads is turned into 8-bit RGB: grayscale is repeated, alpha is dropped, 16-bit
and float images are rescaled by their own range. Files that cannot be read are skipped with
the reason, never fatal inside a folder.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from segment_anything.utils.transforms import ResizeLongestSide

from sam_distill.core.errors import DistillError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}
# Remote-sensing scenes are large; beyond this many pixels an image should be tiled first.
MAX_PIXELS = 30_000 * 30_000
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class UnreadableImage(Exception):
    """An image inside a folder that is skipped, with the reason as message."""


def find_images(folder: Path | str) -> list[Path]:
    """All images under ``folder`` (recursive, sorted, so every rank sees the same order)."""
    folder = Path(folder)
    if not folder.exists():
        raise DistillError(f"image folder {folder} does not exist")
    if folder.is_file():
        if folder.suffix.lower() in IMAGE_SUFFIXES:
            return [folder]
        raise DistillError(f"{folder} is a file, not an image folder")
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise DistillError(f"image folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return images


def to_rgb8(array: np.ndarray) -> np.ndarray:
    """Any H×W or H×W×C array (uint8/16, int, float) as H×W×3 uint8."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] == 0:
        raise UnreadableImage(f"unsupported array shape {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 2:  # gray + alpha
        array = np.repeat(array[..., :1], 3, axis=2)
    else:
        array = array[..., :3]
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    array = array.astype(np.float64)
    lo, hi = float(np.nanmin(array)), float(np.nanmax(array))
    if np.issubdtype(array.dtype, np.floating) and lo >= 0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip((np.nan_to_num(array) - lo) * scale, 0, 255).round().astype(np.uint8)


def load_rgb(path: Path | str) -> np.ndarray:
    """Read an image as H×W×3 uint8, or raise UnreadableImage with the reason."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise UnreadableImage("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_PIXELS
            try:
                with Image.open(path) as image:
                    image.load()
                    if image.mode in ("RGBA", "LA", "P", "PA", "CMYK", "YCbCr", "1", "L", "RGB"):
                        return np.asarray(image.convert("RGB"))
                    return to_rgb8(np.asarray(image))
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except UnreadableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UnreadableImage(f"too large ({err}); tile it into pieces of at most {MAX_PIXELS} pixels") from None
    except Exception as err:  # PIL raises many types for broken files
        raise UnreadableImage(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'cannot read'}") from None


VIEWS = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270")


def apply_view(image: np.ndarray, view: str) -> np.ndarray:
    """One of the image's flipped or rotated copies (H×W×C; rot90 turns counter-clockwise), made before SAM's
    preprocessing so the teacher and the student see the same pixels."""
    if view == "identity":
        return image
    if view == "hflip":
        return np.ascontiguousarray(image[:, ::-1])
    if view == "vflip":
        return np.ascontiguousarray(image[::-1])
    if view in ("rot90", "rot180", "rot270"):
        return np.ascontiguousarray(np.rot90(image, int(view[3:]) // 90))
    raise ValueError(f"unknown view {view!r}; one of {', '.join(VIEWS)}")


@dataclass(frozen=True)
class Preprocessing:
    """SAM's preprocessing: resize the longest side, normalise pixels, pad bottom-right to a square; or SAM 2's
    (``resize="square"``): the image stretched to the square (``SAM2Transforms``: torchvision's antialiased
    bilinear ``Resize`` of the [0, 1] image), normalised with the same ImageNet statistics, no padding."""

    image_size: int = 1024
    pixel_mean: tuple[float, float, float] = PIXEL_MEAN
    pixel_std: tuple[float, float, float] = PIXEL_STD
    resize_mode: str = "longest_side"

    def as_dict(self) -> dict:
        if self.resize_mode == "square":
            return {"resize": "square", "image_size": self.image_size, "pixel_mean": list(self.pixel_mean),
                    "pixel_std": list(self.pixel_std)}
        return {
            "resize": "longest_side",
            "image_size": self.image_size,
            "pixel_mean": list(self.pixel_mean),
            "pixel_std": list(self.pixel_std),
            "pad": "bottom_right_zero_after_normalise",
        }

    @classmethod
    def from_dict(cls, values: dict) -> "Preprocessing":
        return cls(values["image_size"], tuple(values["pixel_mean"]), tuple(values["pixel_std"]),
                   values.get("resize", "longest_side"))

    def resize(self, image: np.ndarray) -> np.ndarray:
        return ResizeLongestSide(self.image_size).apply_image(image)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """H×W×3 uint8 → 3×S×S float tensor exactly as ``Sam.preprocess`` (or ``SAM2Transforms``) makes it."""
        mean = torch.tensor(self.pixel_mean).view(-1, 1, 1)
        std = torch.tensor(self.pixel_std).view(-1, 1, 1)
        if self.resize_mode == "square":
            from torchvision.transforms.functional import resize

            unit = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0
            squared = resize(unit, [self.image_size, self.image_size], antialias=True)
            return (squared - mean / 255.0) / (std / 255.0)
        resized = torch.as_tensor(self.resize(image)).permute(2, 0, 1).float()
        normalised = (resized - mean) / std
        h, w = normalised.shape[-2:]
        return torch.nn.functional.pad(normalised, (0, self.image_size - w, 0, self.image_size - h))


def make_synthetic_images(folder: Path, count: int, size: int = 512, seed: int = 0) -> list[Path]:
    """Images of coloured shapes on textured backgrounds: objects with clear edges for smoke runs."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        h = size
        w = int(size * rng.uniform(0.6, 1.0))
        yy, xx = np.mgrid[0:h, 0:w]
        base = rng.uniform(40, 200, size=3)
        image = base + 20 * np.sin(xx[..., None] / rng.uniform(5, 30) + rng.uniform(0, 6, size=3))
        for _ in range(rng.integers(3, 7)):
            color = rng.uniform(0, 255, size=3)
            cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
            ry, rx = rng.uniform(0.05, 0.2) * h, rng.uniform(0.05, 0.2) * w
            if rng.random() < 0.5:
                inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            else:
                inside = (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
            image[inside] = color
        path = folder / f"synthetic_{index:04d}.png"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths
