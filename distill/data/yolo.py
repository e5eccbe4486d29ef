"""Instance masks → ultralytics' YOLO-seg dataset layout (normalised polygons + dataset YAML).

Two sources: the teacher's pseudo-labels (one class, "object") or a COCO dataset with ground truth
(its categories, in id order). Layout written under ``out``::

    images/{train,val}/<name>     links to (or copies of) the source images
    labels/{train,val}/<stem>.txt one line per instance: class x1 y1 x2 y2 ... (normalised to 0-1)
    data.yaml                     ultralytics' dataset file (absolute ``path``)
    val_coco.json                 the val split's instances as COCO ground truth (RLE), for mask AP
    conversion.json               counts: images, instances kept, and masks dropped by reason

Polygons: ultralytics holds ONE polygon per instance line, so each mask keeps its largest outer
contour. A mask is dropped (and counted) when it is empty, when that contour encloses fewer than
``min_area`` pixels (tiny), or when the mask falls apart into more than ``max_components`` pieces
(speckle, which one polygon cannot represent). The train/val split hashes the image name, so it is
the same on every run and every machine, whatever else is in the folder.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import yaml
from pycocotools import mask as mask_utils

from sam_distill.core.errors import DistillError
from sam_distill.core.fileio import atomic_write_json, atomic_write_text, read_json

DROP_REASONS = ("empty", "tiny", "fragmented", "crowd")


# Salt of the split's hash. The instance recipes split a COCO file by the unsalted SHA-1 of the same names
# (``data.coco.hash_split``); a dataset made from one side of that split, hashed the same way, would have no image
# below a smaller fraction (e.g. a val fraction of 0.1 within the training side of a 0.2 split: every name there
# hashes at or above 0.2). Salted, the two splits are independent.
SPLIT_SALT = b"sam-distill/yolo-val/"


def _split_digest(name: str) -> bytes:
    return hashlib.sha1(SPLIT_SALT + name.encode("utf-8")).digest()


def is_val(name: str, val_fraction: float) -> bool:
    """Stable split: the first 8 bytes of the name's salted SHA-1 as a fraction of 2^64."""
    return int.from_bytes(_split_digest(name)[:8], "big") / 2**64 < val_fraction


def split_names(names: list[str], val_fraction: float) -> set[str]:
    """Names in the val split; with two or more images and a non-zero fraction, at least one (ultralytics needs one)."""
    val = {name for name in names if is_val(name, val_fraction)}
    if not val and val_fraction > 0 and len(names) >= 2:
        val = {min(names, key=_split_digest)}
    if len(val) == len(names) and len(names) >= 2:
        val.discard(max(names, key=_split_digest))
    return val


def mask_to_polygon(mask: np.ndarray, min_area: float, max_components: int) -> tuple[np.ndarray | None, str]:
    """The largest outer contour of a binary mask as an N×2 pixel polygon, or None and the drop reason."""
    mask = np.ascontiguousarray(mask.astype(np.uint8))
    if not mask.any():
        return None, "empty"
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if len(contours) > max_components:
        return None, "fragmented"
    largest = max(contours, key=cv2.contourArea)
    if len(largest) < 3 or cv2.contourArea(largest) < min_area:
        return None, "tiny"
    return largest.reshape(-1, 2).astype(np.float64), "kept"


def _label_line(category: int, polygon: np.ndarray, width: int, height: int) -> str:
    normalised = np.clip(polygon / np.array([width, height], dtype=np.float64), 0.0, 1.0)
    return " ".join([str(category)] + [f"{v:.6f}" for v in normalised.reshape(-1)])


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    try:
        os.symlink(source.resolve(), target)
    except OSError:
        shutil.copy2(source, target)


def flat_name(relative: str) -> str:
    """``a/b.png`` → ``a__b.png``: one folder level, as ultralytics pairs images/ with labels/ by name."""
    return relative.replace("\\", "/").replace("/", "__")


class _Writer:
    """Collects images with their RLE masks and writes the layout once at the end."""

    def __init__(self, out: Path, names: list[str], val_fraction: float, min_area: float, max_components: int):
        self.out = Path(out)
        self.class_names = names
        self.val_fraction = val_fraction
        self.min_area = min_area
        self.max_components = max_components
        self.items: list[tuple[str, Path, int, int, list[tuple[int, dict]]]] = []
        self.counts: Counter = Counter()

    def add(self, name: str, image_path: Path, width: int, height: int, instances: list[tuple[int, dict]]) -> None:
        self.items.append((name, image_path, width, height, instances))

    def write(self) -> dict:
        if not self.items:
            raise DistillError(f"no images to convert into {self.out}; check the image folder or annotation file")
        val = split_names([item[0] for item in self.items], self.val_fraction)
        coco = {"images": [], "annotations": [],
                "categories": [{"id": i + 1, "name": n} for i, n in enumerate(self.class_names)]}
        per_split = Counter()
        for image_id, (name, image_path, width, height, instances) in enumerate(sorted(self.items), start=1):
            split = "val" if name in val else "train"
            per_split[split] += 1
            other = "train" if split == "val" else "val"  # a rerun with another split leaves no copy behind there
            for stale in (self.out / "images" / other / name, self.out / "labels" / other / (Path(name).stem + ".txt")):
                if stale.is_symlink() or stale.exists():
                    stale.unlink()
            _link_or_copy(image_path, self.out / "images" / split / name)
            lines = []
            if split == "val":
                coco["images"].append({"id": image_id, "file_name": name, "width": width, "height": height})
            for category, rle in instances:
                polygon, reason = mask_to_polygon(mask_utils.decode(rle), self.min_area, self.max_components)
                self.counts[reason] += 1
                if polygon is None:
                    continue
                lines.append(_label_line(category, polygon, width, height))
                if split == "val":
                    coco["annotations"].append({
                        "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": category + 1,
                        "segmentation": {"size": rle["size"], "counts": _counts_text(rle)},
                        "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                        "iscrowd": 0})
            label = self.out / "labels" / split / (Path(name).stem + ".txt")
            atomic_write_text(label, "".join(line + "\n" for line in lines))
            self.counts["images_without_instances"] += not lines
        if self.counts["kept"] == 0:
            raise DistillError(
                f"no usable masks in any of the {len(self.items)} images for {self.out} (dropped: "
                f"{', '.join(f'{r} {self.counts[r]}' for r in DROP_REASONS)}); lower the pseudo-label thresholds "
                f"(pred_iou_thresh, stability_score_thresh) or min_area")
        data_yaml = self.out / "data.yaml"
        atomic_write_text(data_yaml, yaml.safe_dump({
            "path": str(self.out.resolve()), "train": "images/train", "val": "images/val",
            "names": dict(enumerate(self.class_names))}, sort_keys=False))
        atomic_write_json(self.out / "val_coco.json", coco)
        summary = {"images": len(self.items), "train_images": per_split["train"], "val_images": per_split["val"],
                   "instances": self.counts["kept"], "dropped": {r: self.counts[r] for r in DROP_REASONS},
                   "images_without_instances": self.counts["images_without_instances"],
                   "classes": self.class_names, "data_yaml": str(data_yaml)}
        atomic_write_json(self.out / "conversion.json", summary)
        return summary


def _counts_text(rle: dict) -> str:
    counts = rle["counts"]
    return counts.decode("ascii") if isinstance(counts, bytes) else counts


def _check_unique(names: list[str], source) -> None:
    stems = Counter(Path(n).stem for n in names)
    clash = [s for s, c in stems.items() if c > 1]
    if clash:
        raise DistillError(f"{source}: several images share the name {clash[0]!r} apart from the suffix; "
                           f"rename them so that labels/{clash[0]}.txt is unambiguous")


def convert_pseudo_labels(label_dir: Path, out: Path, val_fraction: float = 0.1, min_area: float = 16,
                          max_components: int = 8) -> dict:
    """Class-agnostic dataset (one class, ``object``) from ``distill pseudo-label`` output."""
    from sam_distill.data.everything import read_label_set

    header, records = read_label_set(label_dir)
    image_root = Path(header["images"])
    writer = _Writer(out, ["object"], val_fraction, min_area, max_components)
    names = []
    for record in records:
        info = record["image"]
        name = flat_name(info["file_name"])
        names.append(name)
        instances = [(0, ann["segmentation"]) for ann in record["annotations"]]
        writer.add(name, image_root / info["file_name"], info["width"], info["height"], instances)
    _check_unique(names, label_dir)
    summary = writer.write()
    summary["source"] = {"pseudo_labels": str(label_dir), "teacher": header["teacher"]}
    atomic_write_json(Path(out) / "conversion.json", summary)
    return summary


def convert_coco(annotations: Path, images_dir: Path, out: Path, val_fraction: float = 0.1, min_area: float = 16,
                 max_components: int = 8) -> dict:
    """Class-aware dataset from a COCO instance file; ``file_name`` is relative to ``images_dir``."""
    from pycocotools.coco import COCO

    annotations, images_dir = Path(annotations), Path(images_dir)
    if not annotations.is_file():
        raise DistillError(f"annotation file {annotations} does not exist")
    try:
        data = read_json(annotations)
        if not all(k in data for k in ("images", "annotations", "categories")):
            raise KeyError
    except (ValueError, KeyError):
        raise DistillError(f"{annotations} is not a COCO instance file (needs images, annotations and categories)") from None
    coco = COCO()
    coco.dataset = data
    _quiet(coco.createIndex)
    categories = sorted(data["categories"], key=lambda c: c["id"])
    index_of = {c["id"]: i for i, c in enumerate(categories)}
    writer = _Writer(out, [c["name"] for c in categories], val_fraction, min_area, max_components)
    missing = []
    for image in data["images"]:
        path = images_dir / image["file_name"]
        if not path.is_file():
            missing.append(image["file_name"])
            continue
        instances = []
        for ann in coco.imgToAnns.get(image["id"], []):
            if ann.get("iscrowd", 0):
                writer.counts["crowd"] += 1
                continue
            instances.append((index_of[ann["category_id"]], coco.annToRLE(ann)))
        writer.add(flat_name(image["file_name"]), path, image["width"], image["height"], instances)
    if missing and len(missing) == len(data["images"]):
        raise DistillError(f"none of the images of {annotations} are in {images_dir} (e.g. {missing[0]}); "
                           f"pass the folder their file_name is relative to")
    _check_unique([item[0] for item in writer.items], annotations)
    summary = writer.write()
    summary["missing_images"] = len(missing)
    summary["source"] = {"annotations": str(annotations), "images": str(images_dir)}
    atomic_write_json(Path(out) / "conversion.json", summary)
    return summary


def _quiet(function):
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return function()
