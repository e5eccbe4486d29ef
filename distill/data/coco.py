"""COCO-format instance data for the prompters: polygons and RLE through pycocotools, SAM's preprocessing,
flip/scale augmentation applied to image and masks together, a fixed file-name-hash split, and a generator
of images with known instances (and their COCO json) for offline runs and tests."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from segment_anything.utils.transforms import ResizeLongestSide
from torch.utils.data import Dataset
from torchvision.ops import masks_to_boxes

from sam_distill.core.errors import DistillError
from sam_distill.core.fileio import atomic_write_json
from sam_distill.core.images import Preprocessing, UnreadableImage, load_rgb


def load_coco(annotations: Path) -> COCO:
    annotations = Path(annotations)
    if not annotations.is_file():
        raise DistillError(f"annotations file {annotations} does not exist; give a COCO instances json")
    try:
        data = json.loads(annotations.read_text())
    except json.JSONDecodeError as err:
        raise DistillError(f"annotations file {annotations} is not valid JSON (line {err.lineno}): {err.msg}") from None
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if not isinstance(data, dict) or missing:
        raise DistillError(f"annotations file {annotations} is not COCO instances format: it lacks {', '.join(missing)}")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco.createIndex()
    return coco


def hash_split(file_names: list[str], val_fraction: float) -> tuple[list[int], list[int]]:
    """A split that never changes with ordering or machine: an image is held out when the sha1 of its file
    name falls below ``val_fraction`` of the hash range. Returns (train positions, val positions)."""
    train, val = [], []
    for position, name in enumerate(file_names):
        value = int(hashlib.sha1(Path(name).name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (val if value < val_fraction else train).append(position)
    return train, val


def split_image_ids(coco: COCO, split: str, val_fraction: float, source: Path | str = "annotations") -> list[int]:
    """The image ids of one side ("all", "train" or "val") of the instance recipes' file-name-hash split."""
    ids = sorted(coco.getImgIds())
    if split == "all":
        return ids
    train, val = hash_split([coco.imgs[i]["file_name"] for i in ids], val_fraction)
    chosen = [ids[position] for position in (val if split == "val" else train)]
    if not chosen:
        raise DistillError(f"the {split} split of {source} at val fraction {val_fraction} holds no images")
    return chosen


FLIPS = ("horizontal", "dihedral")


class CocoInstances(Dataset):
    """Items: SAM-preprocessed ``image`` 3×S×S, ``masks`` n×S×S bool, ``boxes`` n×4 (xyxy, input pixels),
    ``labels`` n (1-based, in category order), plus ``image_id``, ``original_size``, ``input_size``."""

    def __init__(self, annotations: Path, images: Path, image_size: int, image_ids: list[int] | None = None,
                 augment: bool = False, scale_range: tuple[float, float] = (0.75, 1.25), flips: str = "horizontal"):
        self.coco = load_coco(annotations)
        self.images_dir = Path(images)
        if not self.images_dir.is_dir():
            raise DistillError(f"image folder {self.images_dir} does not exist (it should hold the json's file_name entries)")
        self.preprocessing = Preprocessing(image_size)
        self.image_size = image_size
        self.categories = sorted(self.coco.loadCats(self.coco.getCatIds()), key=lambda c: c["id"])
        self.label_of = {c["id"]: i + 1 for i, c in enumerate(self.categories)}
        self.image_ids = list(image_ids) if image_ids is not None else sorted(self.coco.getImgIds())
        if flips not in FLIPS:
            raise DistillError(f"flips must be one of {', '.join(FLIPS)}, not {flips!r}")
        self.augment, self.scale_range, self.flips = augment, scale_range, flips

    @property
    def classes(self) -> list[dict]:
        return [{"id": c["id"], "name": c["name"]} for c in self.categories]

    def __len__(self) -> int:
        return len(self.image_ids)

    def file_names(self) -> list[str]:
        return [self.coco.imgs[i]["file_name"] for i in self.image_ids]

    def __getitem__(self, index: int) -> dict:
        info = self.coco.imgs[self.image_ids[index]]
        path = self.images_dir / info["file_name"]
        try:
            image = load_rgb(path)
        except (UnreadableImage, DistillError) as err:
            raise DistillError(f"image {path} named in the annotations cannot be read ({err})") from None
        height, width = image.shape[:2]
        anns = [a for a in self.coco.imgToAnns[info["id"]] if not a.get("iscrowd", 0)]
        masks = np.stack([self.coco.annToMask(a) for a in anns]) if anns else np.zeros((0, height, width), np.uint8)
        labels = torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.long)
        if self.augment:
            image, masks = self._flip(image, masks)
            height, width = image.shape[:2]
        size = self.image_size
        tensor = self.preprocessing(image)
        input_size = ResizeLongestSide.get_preprocess_shape(height, width, size)
        masks_t = masks_on_input(torch.from_numpy(masks), input_size, size)
        if self.augment:
            tensor, masks_t = self._rescale(tensor, masks_t)
        masks_t = masks_t > 0.5
        keep = masks_t.flatten(1).any(1)
        masks_t, labels = masks_t[keep], labels[keep]
        boxes = masks_to_boxes(masks_t).float() + torch.tensor([0.0, 0.0, 1.0, 1.0]) if len(masks_t) else torch.zeros(0, 4)
        return {"image": tensor, "masks": masks_t, "boxes": boxes, "labels": labels, "image_id": info["id"],
                "original_size": (height, width), "input_size": input_size}

    def _flip(self, image: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A random horizontal flip, and with ``dihedral`` a vertical flip and a transpose too (together the eight
        rotations and reflections of the square). On the image as read, before SAM's resize and bottom-right pad,
        so the padding stays where SAM puts it; a transpose swaps the image's height and width."""
        if torch.rand(()) < 0.5:
            image, masks = image[:, ::-1], masks[:, :, ::-1]
        if self.flips == "dihedral":
            if torch.rand(()) < 0.5:
                image, masks = image[::-1], masks[:, ::-1]
            if torch.rand(()) < 0.5:
                image, masks = image.transpose(1, 0, 2), masks.transpose(0, 2, 1)
        return np.ascontiguousarray(image), np.ascontiguousarray(masks)

    def _rescale(self, image: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale jitter: zoom about the top-left corner, so SAM's padding stays bottom-right."""
        low, high = self.scale_range
        scale = float(low + (high - low) * torch.rand(()))
        size = self.image_size
        scaled = max(16, round(size * scale))
        image = F.interpolate(image[None], size=(scaled, scaled), mode="bilinear", align_corners=False)[0]
        if len(masks):
            masks = F.interpolate(masks[None], size=(scaled, scaled), mode="bilinear", align_corners=False)[0]
        else:
            masks = masks.new_zeros((0, scaled, scaled))
        if scaled >= size:
            return image[:, :size, :size], masks[:, :size, :size]
        pad = (0, size - scaled, 0, size - scaled)
        return F.pad(image, pad), F.pad(masks, pad)


def masks_on_input(masks: torch.Tensor, input_hw: tuple[int, int], size: int) -> torch.Tensor:
    """n×H×W instance masks placed as SAM's preprocessing places the image: resized (nearest) to the input's h×w,
    padded bottom-right to size×size. Float, so augmentation can follow before thresholding."""
    if not len(masks):
        return torch.zeros((0, size, size), dtype=torch.float32)
    resized = F.interpolate(masks[None].float(), size=input_hw, mode="nearest")[0]
    return F.pad(resized, (0, size - input_hw[1], 0, size - input_hw[0]))


def collate(items: list[dict]) -> tuple[torch.Tensor, list[dict]]:
    return torch.stack([item["image"] for item in items]), items


SYNTHETIC_CLASSES = ("disc", "square", "triangle")


def make_synthetic_coco(folder: Path, count: int, size: int = 256, seed: int = 0,
                        objects: tuple[int, int] = (2, 4), radius_range: tuple[float, float] = (0.08, 0.16)) -> Path:
    """Images with known, non-overlapping instances of three shape classes (each with its own colour family)
    on a textured background, and their COCO json (``annotations.json``): squares and triangles as polygons,
    discs as RLE, so both annotation forms are exercised."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    palette = np.array([[220, 60, 50], [50, 90, 220], [240, 210, 40]], dtype=float)
    images, annotations = [], []
    for index in range(count):
        yy, xx = np.mgrid[0:size, 0:size]
        background = rng.uniform(70, 150, size=3)
        canvas = background + 15 * np.sin(xx[..., None] / rng.uniform(4, 12) + yy[..., None] / rng.uniform(6, 20))
        placed: list[tuple[float, float, float]] = []
        for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
            for _attempt in range(50):
                radius = rng.uniform(*radius_range) * size
                cy, cx = rng.uniform(radius, size - radius, size=2)
                if all(np.hypot(cy - py, cx - px) > radius + pr + 4 for py, px, pr in placed):
                    break
            else:
                continue
            placed.append((cy, cx, radius))
            label = int(rng.integers(0, len(SYNTHETIC_CLASSES)))
            layer = Image.new("L", (size, size), 0)
            draw = ImageDraw.Draw(layer)
            if label == 0:
                draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
            elif label == 1:
                polygon = [(cx - radius, cy - radius), (cx + radius, cy - radius), (cx + radius, cy + radius),
                           (cx - radius, cy + radius)]
                draw.polygon(polygon, fill=1)
            else:
                polygon = [(cx, cy - radius), (cx + radius, cy + radius), (cx - radius, cy + radius)]
                draw.polygon(polygon, fill=1)
            mask = np.asarray(layer, dtype=np.uint8)
            canvas[mask > 0] = palette[label] + rng.uniform(-20, 20, size=3)
            if label == 0:
                rle = mask_utils.encode(np.asfortranarray(mask))
                segmentation = {"size": rle["size"], "counts": rle["counts"].decode()}
            else:
                segmentation = [[float(v) for point in polygon for v in point]]
            ys, xs = np.nonzero(mask)
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": label + 1,
                                "segmentation": segmentation, "area": float(mask.sum()), "iscrowd": 0,
                                "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                                         float(ys.max() - ys.min() + 1)]})
        name = f"shapes_{index:04d}.png"
        Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).save(folder / "images" / name)
        images.append({"id": index + 1, "file_name": name, "height": size, "width": size})
    path = folder / "annotations.json"
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(SYNTHETIC_CLASSES)]
    atomic_write_json(path, {"images": images, "annotations": annotations, "categories": categories})
    return path
