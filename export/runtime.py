"""Run an exported SAM encoder/decoder pair with numpy + onnxruntime only: what a Jetson or desktop app embeds.

Pre- and post-processing are SAM's (``ResizeLongestSide``, ``Sam.preprocess``, ``SamPredictor``), re-done in numpy
so no PyTorch is needed. The decoder has segment-anything's official ONNX interface, so any SAM decoder exported by
``scripts/export_onnx_model.py`` (with ``--return-single-mask`` off) works here too.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
from PIL import Image

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


def preprocess_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """Size after resizing the longest side to ``long_side`` (``ResizeLongestSide.get_preprocess_shape``)."""
    scale = long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def preprocess(image: np.ndarray, image_size: int) -> np.ndarray:
    """H×W×3 uint8 RGB → the encoder's ``image`` input: 1×3×S×S float32, resized, normalised, padded bottom-right."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H×W×3 uint8 RGB image, got {image.dtype} array of shape {image.shape}")
    height, width = preprocess_shape(*image.shape[:2], image_size)
    resized = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR), dtype=np.float32)
    padded = np.zeros((image_size, image_size, 3), dtype=np.float32)
    padded[:height, :width] = (resized - PIXEL_MEAN) / PIXEL_STD
    return padded.transpose(2, 0, 1)[None]


def apply_coords(coords: np.ndarray, original_hw: tuple[int, int], image_size: int) -> np.ndarray:
    """Pixel (x, y) coordinates of the original image → the model-input frame (``ResizeLongestSide.apply_coords``)."""
    height, width = original_hw
    new_h, new_w = preprocess_shape(height, width, image_size)
    coords = np.array(coords, dtype=np.float32, copy=True)
    coords[..., 0] *= new_w / width
    coords[..., 1] *= new_h / height
    return coords


class SamOnnxPredictor:
    """``SamPredictor`` over ONNX files: ``set_image`` once, then ``predict`` per prompt."""

    def __init__(self, encoder_path, decoder_path, providers: list[str] | None = None,
                 session_options: ort.SessionOptions | None = None):
        providers = providers or ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(encoder_path), session_options, providers=providers)
        self.decoder = ort.InferenceSession(str(decoder_path), session_options, providers=providers)
        self.image_size = int(self.encoder.get_inputs()[0].shape[-1])
        self.embeddings: np.ndarray | None = None
        self.original_hw: tuple[int, int] | None = None

    def set_image(self, image: np.ndarray) -> None:
        self.original_hw = tuple(image.shape[:2])
        self.embeddings = self.encoder.run(None, {"image": preprocess(image, self.image_size)})[0]

    def set_embeddings(self, embeddings: np.ndarray, original_hw: tuple[int, int]) -> None:
        """Reuse embeddings computed earlier (or on another device) for an image of size ``original_hw``."""
        self.embeddings, self.original_hw = embeddings, tuple(original_hw)

    def decoder_inputs(self, point_coords=None, point_labels=None, box=None, mask_input=None) -> dict[str, np.ndarray]:
        """The decoder's feed for one prompt set, as SAM's ONNX example builds it.

        A box becomes two corner points labelled 2 and 3; without a box a padding point labelled -1 is added,
        as SAM's prompt encoder does.
        """
        if self.embeddings is None:
            raise RuntimeError("call set_image before predict")
        coords = np.zeros((0, 2), np.float32) if point_coords is None else np.asarray(point_coords, np.float32).reshape(-1, 2)
        labels = np.zeros((0,), np.float32) if point_labels is None else np.asarray(point_labels, np.float32).reshape(-1)
        if box is not None:
            coords = np.concatenate([coords, np.asarray(box, np.float32).reshape(2, 2)])
            labels = np.concatenate([labels, np.array([2, 3], np.float32)])
        else:
            coords = np.concatenate([coords, np.zeros((1, 2), np.float32)])
            labels = np.concatenate([labels, np.array([-1], np.float32)])
        fixed = self.decoder.get_inputs()[1].shape[1]  # a static-shape decoder takes exactly this many points
        if isinstance(fixed, int) and fixed > len(labels):
            coords = np.concatenate([coords, np.zeros((fixed - len(labels), 2), np.float32)])
            labels = np.concatenate([labels, np.full(fixed - len(labels), -1, np.float32)])
        low_res = self.image_size // 4
        has_mask = mask_input is not None
        mask = np.asarray(mask_input, np.float32).reshape(1, 1, low_res, low_res) if has_mask \
            else np.zeros((1, 1, low_res, low_res), np.float32)
        return {
            "image_embeddings": self.embeddings,
            "point_coords": apply_coords(coords, self.original_hw, self.image_size)[None],
            "point_labels": labels[None],
            "mask_input": mask,
            "has_mask_input": np.array([float(has_mask)], np.float32),
            "orig_im_size": np.array(self.original_hw, np.float32),
        }

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output: bool = True, return_logits: bool = False):
        """(masks C×H×W, iou_predictions C, low_res_logits C×S/4×S/4) as ``SamPredictor.predict`` returns them."""
        masks, iou, low_res = self.decoder.run(None, self.decoder_inputs(point_coords, point_labels, box, mask_input))
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        masks, iou, low_res = masks[0, chosen], iou[0, chosen], low_res[0, chosen]
        return (masks if return_logits else masks > 0.0), iou, low_res
