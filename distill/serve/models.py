"""The models behind ``distill demo``: each answers one image at a time, encodes an image once and keeps it.

* :class:`PromptableModel`: a SAM file (teacher, student, MobileSAM, official) or an exported ONNX pair (a
  ``distill export`` folder with ``encoder.onnx`` and ``decoder.onnx``): points, a box, or everything mode.
* :class:`AutomaticModel`: an instance model (RSPrompter, SAM-det/seg, SAM-cls, a YOLO-seg student): its own
  class-aware result, computed once per image; prompts do not apply to it.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from sam_distill.core.errors import DistillError

EVERYTHING_POINTS = 16  # points per side of the demo's everything mode: 256 prompts, a few seconds for a light SAM


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


class PromptableModel:
    """SAM's predictor interface over a PyTorch SAM or an ONNX pair; one embedding per image, kept."""

    prompts = True

    def __init__(self, path: Path, device: torch.device):
        self.path = Path(path)
        if self.path.is_dir():
            from sam_distill.export.runtime import SamOnnxPredictor

            encoder, decoder = self.path / "encoder.onnx", self.path / "decoder.onnx"
            if not (encoder.is_file() and decoder.is_file()):
                raise DistillError(f"{self.path} is a folder without encoder.onnx and decoder.onnx; give a model file "
                                   "or a `distill export --format onnx` folder")
            self.sam, self.kind = None, "onnx"
            self.predictor = SamOnnxPredictor(encoder, decoder)
            self.name = f"{self.path.name} (ONNX)"
        else:
            from segment_anything import SamPredictor

            from sam_distill.sam.model_file import load_model

            self.sam, info = load_model(self.path)
            self.sam.to(device).eval()
            self.kind, self.predictor = "sam", SamPredictor(self.sam)
            self.name = f"{self.path.name} ({info.student})"
        self.embeddings: dict[str, tuple] = {}
        self.everything_cache: dict[str, list[np.ndarray]] = {}
        self.current: str | None = None

    def _state(self) -> tuple:
        p = self.predictor
        if self.kind == "onnx":
            return (p.embeddings, p.original_hw)
        return (p.features, p.original_size, p.input_size)

    def _restore(self, state: tuple) -> None:
        p = self.predictor
        if self.kind == "onnx":
            p.set_embeddings(*state)
        else:
            p.features, p.original_size, p.input_size = state
            p.is_image_set = True

    def encode(self, image_id: str, image: np.ndarray) -> float | None:
        """Milliseconds spent encoding, or ``None`` when this image's embedding was kept from before."""
        if image_id in self.embeddings:
            if self.current != image_id:
                self._restore(self.embeddings[image_id])
                self.current = image_id
            return None
        started = time.perf_counter()
        with torch.no_grad():
            self.predictor.set_image(image)
        elapsed = _ms(started)
        self.embeddings[image_id], self.current = self._state(), image_id
        return elapsed

    def segment(self, image_id: str, image: np.ndarray, points: list, box: list | None) -> dict:
        """One mask for the prompts (SAM's best of three for a single point, as its demo does)."""
        encode_ms = self.encode(image_id, image)
        coords = np.array([p[:2] for p in points], np.float32) if points else None
        labels = np.array([p[2] for p in points], np.int64) if points else None
        started = time.perf_counter()
        with torch.no_grad():
            masks, scores, _ = self.predictor.predict(point_coords=coords, point_labels=labels,
                                                      box=np.array(box, np.float32) if box else None,
                                                      multimask_output=box is None and len(points) == 1)
        best = int(np.argmax(scores))
        return {"masks": [masks[best].astype(bool)], "labels": [None], "scores": [float(scores[best])],
                "encode_ms": encode_ms, "decode_ms": _ms(started)}

    def everything(self, image_id: str, image: np.ndarray) -> dict:
        if self.kind == "onnx":
            return {"message": "everything mode runs on PyTorch SAM files; this is an ONNX pair"}
        if image_id not in self.everything_cache:
            from segment_anything import SamAutomaticMaskGenerator

            started = time.perf_counter()
            generator = SamAutomaticMaskGenerator(self.sam, points_per_side=EVERYTHING_POINTS)
            with torch.no_grad():
                found = sorted(generator.generate(image), key=lambda m: -m["area"])
            self.everything_cache[image_id] = ([m["segmentation"] for m in found], _ms(started))
            self.current = None  # the generator re-encoded the image in the predictor it made
        masks, ms = self.everything_cache[image_id]
        return {"masks": masks, "labels": [None] * len(masks), "scores": [1.0] * len(masks), "encode_ms": None,
                "decode_ms": ms}


class AutomaticModel:
    """An instance model's own result on the image (class-aware), computed once per image."""

    prompts = False

    def __init__(self, path: Path, kind, device: torch.device):
        self.path, self.kind_info, self.device = Path(path), kind, device
        self.kind = kind.name
        self.name = f"{self.path.name} ({kind.name})"
        self.cache: dict[str, dict] = {}
        self.predict = kind.function("predict")

    def automatic(self, image_id: str, image_path: Path, min_score: float = 0.3) -> dict:
        if image_id not in self.cache:
            from pycocotools import mask as mask_utils

            started = time.perf_counter()
            predictions = self.predict(self.path, [image_path], self.device)
            names = {c["id"]: c["name"] for c in predictions.classes}
            kept = [r for r in predictions.results if r.get("score", 1.0) >= min_score]
            self.cache[image_id] = {
                "masks": [mask_utils.decode(r["segmentation"]).astype(bool) for r in kept],
                "labels": [names.get(r["category_id"]) for r in kept], "scores": [float(r["score"]) for r in kept],
                "encode_ms": None, "decode_ms": _ms(started)}
        return self.cache[image_id]


def open_model(path: Path, device: torch.device):
    """A demo model for a file or an ONNX export folder; a file of no kind the toolkit knows is one line."""
    from sam_distill.core.model_files import identify

    path = Path(path)
    if not path.exists():
        raise DistillError(f"model {path} does not exist")
    if path.is_dir():
        return PromptableModel(path, device)
    kind = identify(path)
    if kind.name == "sam":
        return PromptableModel(path, device)
    if kind.name == "onnx":
        raise DistillError(f"{path}: give the export folder that holds encoder.onnx and decoder.onnx, not one file")
    return AutomaticModel(path, kind, device)
