"""Run an exported SAM encoder/decoder pair without PyTorch: numpy plus the format's own runtime (onnxruntime for
``.onnx`` and ``.ort``, the LiteRT interpreter for ``.tflite``). This file is what an app embeds; it imports no
other part of the toolkit.

Pre- and post-processing are SAM's (``ResizeLongestSide``, ``Sam.preprocess``, ``SamPredictor``), re-done in numpy.
The ONNX decoder has segment-anything's official ONNX interface, so any SAM decoder exported by
``scripts/export_onnx_model.py`` (with ``--return-single-mask`` off) works here too. Decoders for phone runtimes
(LiteRT, ExecuTorch, CoreML) return SAM's low-resolution masks instead, since those runtimes want static output
shapes: :func:`postprocess_low_res` upsamples them as ``SamPredictor.postprocess_masks`` does.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
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


def resize_bilinear(array: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """C×H×W float → C×h×w by bilinear interpolation with half-pixel centres and no antialiasing: what
    ``F.interpolate(mode="bilinear", align_corners=False)`` computes, so masks match PyTorch's at the pixel."""

    def axis(size_in: int, size_out: int):
        centres = np.clip((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0, None)
        low = np.minimum(np.floor(centres).astype(np.int64), size_in - 1)
        high = np.minimum(low + 1, size_in - 1)
        return low, high, (centres - low).astype(np.float32)

    y0, y1, wy = axis(array.shape[-2], out_hw[0])
    x0, x1, wx = axis(array.shape[-1], out_hw[1])
    rows = array[..., y0, :] * (1 - wy)[:, None] + array[..., y1, :] * wy[:, None]
    return rows[..., x0] * (1 - wx) + rows[..., x1] * wx


def postprocess_low_res(low_res: np.ndarray, original_hw: tuple[int, int], image_size: int) -> np.ndarray:
    """C×S/4×S/4 mask logits → C×H×W logits of the original image, as ``Sam.postprocess_masks`` does: upscale to
    S×S, crop the unpadded region, resize to the image."""
    full = resize_bilinear(np.asarray(low_res, np.float32), (image_size, image_size))
    height, width = preprocess_shape(*original_hw, image_size)
    return resize_bilinear(full[:, :height, :width], tuple(original_hw))


class PromptPredictor:
    """``SamPredictor``'s interface over an exported pair: ``set_image`` once, then ``predict`` per prompt. Subclasses
    say how their runtime runs the encoder (``_encode``) and the decoder (``_decode``)."""

    image_size: int
    fixed_points: int | None = None  # a decoder with a static point count takes exactly this many (padded with -1)
    max_points: int | None = None  # a decoder with one signature per point count takes up to this many

    def __init__(self):
        self.embeddings: np.ndarray | None = None
        self.original_hw: tuple[int, int] | None = None

    def _encode(self, image_input: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _decode(self, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(masks 1×4×H×W logits at the original size, iou_predictions 1×4, low_res_masks 1×4×S/4×S/4)."""
        raise NotImplementedError

    def set_image(self, image: np.ndarray) -> None:
        self.original_hw = tuple(image.shape[:2])
        self.embeddings = self._encode(preprocess(image, self.image_size))

    def set_embeddings(self, embeddings: np.ndarray, original_hw: tuple[int, int]) -> None:
        """Reuse embeddings computed earlier (or on another device) for an image of size ``original_hw``."""
        self.embeddings, self.original_hw = embeddings, tuple(original_hw)

    def decoder_inputs(self, point_coords=None, point_labels=None, box=None, mask_input=None) -> dict[str, np.ndarray]:
        """The decoder's feed for one prompt set, as SAM's ONNX example builds it.

        A box becomes two corner points labelled 2 and 3; without a box a padding point labelled -1 is added,
        as SAM's prompt encoder does. A decoder with a fixed point count gets more padding points (label -1).
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
        if self.max_points is not None and len(labels) > self.max_points:
            raise ValueError(f"this decoder takes up to {self.max_points} points (a box counts 2, points without a box "
                             f"count one more); the prompt has {len(labels)}: export with a larger --max-points")
        if self.fixed_points is not None:
            if len(labels) > self.fixed_points:
                raise ValueError(f"this decoder takes {self.fixed_points} points (a box counts 2, points without a box "
                                 f"count one more); the prompt has {len(labels)}: export with a larger --static-points")
            missing = self.fixed_points - len(labels)
            coords = np.concatenate([coords, np.zeros((missing, 2), np.float32)])
            labels = np.concatenate([labels, np.full(missing, -1, np.float32)])
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
        masks, iou, low_res = self._decode(self.decoder_inputs(point_coords, point_labels, box, mask_input))
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        masks, iou, low_res = masks[0, chosen], iou[0, chosen], low_res[0, chosen]
        return (masks if return_logits else masks > 0.0), iou, low_res


class SamOnnxPredictor(PromptPredictor):
    """An ``.onnx`` or ``.ort`` pair in onnxruntime; the decoder has SAM's official ONNX interface."""

    def __init__(self, encoder_path, decoder_path, providers: list[str] | None = None, session_options=None):
        import onnxruntime as ort

        super().__init__()
        providers = providers or ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(encoder_path), session_options, providers=providers)
        self.decoder = ort.InferenceSession(str(decoder_path), session_options, providers=providers)
        self.image_size = int(self.encoder.get_inputs()[0].shape[-1])
        inputs = self.decoder.get_inputs()  # a static-shape decoder takes exactly this many points
        fixed = inputs[1].shape[1] if len(inputs) > 1 and len(inputs[1].shape) > 1 else None
        self.fixed_points = fixed if isinstance(fixed, int) else None

    def _encode(self, image_input):
        return self.encoder.run(None, {"image": image_input})[0]

    def _decode(self, feed):
        masks, iou, low_res = self.decoder.run(None, feed)
        return masks, iou, low_res


class LowResPredictor(PromptPredictor):
    """A pair whose decoder takes SAM's ONNX inputs less ``orig_im_size`` and returns ``iou_predictions`` and
    ``low_res_masks``; the masks at the image's size are made here (:func:`postprocess_low_res`). ``encode`` and
    ``decode`` run the runtime: named arrays in, named arrays out."""

    def __init__(self, encode: Callable[[dict], dict], decode: Callable[[dict], dict], image_size: int,
                 max_points: int | None = None):
        super().__init__()
        self._run_encoder, self._run_decoder = encode, decode
        self.image_size, self.max_points = image_size, max_points

    def _encode(self, image_input):
        return self._run_encoder({"image": image_input})["image_embeddings"]

    def _decode(self, feed):
        outputs = self._run_decoder({name: feed[name] for name in LOW_RES_DECODER_INPUTS})
        low_res = outputs["low_res_masks"]
        masks = postprocess_low_res(low_res[0], self.original_hw, self.image_size)[None]
        return masks, outputs["iou_predictions"], low_res


LOW_RES_DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")


class LiteRTModel:
    """A ``.tflite`` file in the LiteRT interpreter (``ai-edge-litert``), called with and returning named arrays.
    A decoder file holds one signature per point count (``points_1`` …); the feed's point count picks it."""

    def __init__(self, path, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.runners = {name: self.interpreter.get_signature_runner(name)
                        for name in self.interpreter.get_signature_list()}
        self.inputs = next(iter(self.runners.values())).get_input_details()

    @property
    def max_points(self) -> int | None:
        counts = [int(name.removeprefix("points_")) for name in self.runners if name.startswith("points_")]
        return max(counts) if counts else None

    def __call__(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        name = f"points_{feed['point_coords'].shape[1]}" if "point_coords" in feed else next(iter(self.runners))
        return self.runners[name](**{key: np.ascontiguousarray(feed[key], np.float32) for key in self.inputs})


class SamLiteRTPredictor(LowResPredictor):
    """A LiteRT pair (``distill export --format tflite``); the decoder takes 1 … ``max_points`` points."""

    def __init__(self, encoder_path, decoder_path, threads: int | None = None):
        encoder, decoder = LiteRTModel(encoder_path, threads), LiteRTModel(decoder_path, threads)
        super().__init__(encoder, decoder, int(encoder.inputs["image"]["shape"][-1]), decoder.max_points)


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SAM2_DECODER_INPUTS = ("image_embed", "high_res_feats_0", "high_res_feats_1", "point_coords", "point_labels",
                       "mask_input", "has_mask_input")


def preprocess_square(image: np.ndarray, image_size: int) -> np.ndarray:
    """H×W×3 uint8 RGB → SAM 2's encoder input 1×3×S×S: the [0, 1] image stretched to S×S (PIL's bilinear resize of
    float images, which antialiases as ``SAM2Transforms``' torchvision ``Resize`` does), ImageNet-normalised."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H×W×3 uint8 RGB image, got {image.dtype} array of shape {image.shape}")
    channels = [np.asarray(Image.fromarray(image[..., c].astype(np.float32) / 255.0, mode="F")
                           .resize((image_size, image_size), Image.BILINEAR)) for c in range(3)]
    unit = np.stack(channels)
    return ((unit - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None])[None].astype(np.float32)


class Sam2OnnxPredictor:
    """A SAM 2 encoder/decoder pair in onnxruntime with the interface SAM 2 ONNX runners use (samexporter,
    AnyLabeling): the encoder returns ``high_res_feats_0``, ``high_res_feats_1``, ``image_embed``; the decoder takes
    them, ``point_coords`` (model-input pixels; a box is two corner points labelled 2 and 3), ``point_labels``,
    ``mask_input`` and ``has_mask_input`` and returns SAM 2's three multimask low-resolution logits and their IoU.
    ``predict`` returns masks at the image's size as ``SAM2ImagePredictor`` does; one mask asked for is the
    best-scoring of the three (what those runners show)."""

    def __init__(self, encoder_path, decoder_path, providers: list[str] | None = None, session_options=None):
        import onnxruntime as ort

        providers = providers or ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(encoder_path), session_options, providers=providers)
        self.decoder = ort.InferenceSession(str(decoder_path), session_options, providers=providers)
        self.image_size = int(self.encoder.get_inputs()[0].shape[-1])
        self.features: dict[str, np.ndarray] | None = None
        self.original_hw: tuple[int, int] | None = None

    @property
    def embeddings(self) -> np.ndarray:
        """Every encoder output, flattened and concatenated (what parity compares)."""
        return np.concatenate([self.features[name].ravel() for name in SAM2_DECODER_INPUTS[:3]])

    def set_image(self, image: np.ndarray) -> None:
        self.original_hw = tuple(image.shape[:2])
        outputs = self.encoder.run(None, {self.encoder.get_inputs()[0].name: preprocess_square(image, self.image_size)})
        self.features = dict(zip([o.name for o in self.encoder.get_outputs()], outputs))

    def set_embeddings(self, embeddings: np.ndarray, original_hw: tuple[int, int]) -> None:
        """The inverse of ``embeddings``: reuse every encoder output computed earlier."""
        shapes = {o.name: o.shape for o in self.encoder.get_outputs()}
        features, start = {}, 0
        for name in SAM2_DECODER_INPUTS[:3]:
            size = int(np.prod(shapes[name]))
            features[name] = embeddings[start:start + size].reshape(shapes[name])
            start += size
        self.features, self.original_hw = features, tuple(original_hw)

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True,
                return_logits=False):
        if self.features is None:
            raise RuntimeError("call set_image before predict")
        coords = np.zeros((0, 2), np.float32) if point_coords is None else \
            np.asarray(point_coords, np.float32).reshape(-1, 2)
        labels = np.zeros((0,), np.float32) if point_labels is None else \
            np.asarray(point_labels, np.float32).reshape(-1)
        if box is not None:  # SAM2ImagePredictor puts the box's corners before the clicks
            coords = np.concatenate([np.asarray(box, np.float32).reshape(2, 2), coords])
            labels = np.concatenate([np.array([2, 3], np.float32), labels])
        height, width = self.original_hw
        coords = coords * np.array([self.image_size / width, self.image_size / height], np.float32)
        low = self.image_size // 4
        has_mask = mask_input is not None
        feed = {**{name: self.features[name] for name in SAM2_DECODER_INPUTS[:3]},
                "point_coords": coords[None], "point_labels": labels[None],
                "mask_input": (np.asarray(mask_input, np.float32).reshape(1, 1, low, low) if has_mask
                               else np.zeros((1, 1, low, low), np.float32)),
                "has_mask_input": np.array([1.0 if has_mask else 0.0], np.float32)}
        low_res, iou = self.decoder.run(None, feed)
        if not multimask_output:
            best = int(iou[0].argmax())
            low_res, iou = low_res[:, best:best + 1], iou[:, best:best + 1]
        logits = resize_bilinear(low_res[0], self.original_hw)
        return (logits if return_logits else logits > 0.0), iou[0], low_res[0]


class HqOnnxPredictor(PromptPredictor):
    """An HQ-SAM pair in onnxruntime: the encoder returns ``image_embeddings`` and ``interm_embeddings`` (the early
    ViT feature, N×1×H×W×C with N = 1 here), the decoder is segment-anything-hq's ``SamOnnxModel`` (its export
    script's inputs: SAM's plus ``interm_embeddings`` second) and answers with one mask, SAM's plus the HQ mask.
    ``embeddings`` is both encoder outputs flattened (what parity compares and ``set_embeddings`` takes back)."""

    def __init__(self, encoder_path, decoder_path, providers: list[str] | None = None, session_options=None):
        import onnxruntime as ort

        self.image_embeddings: np.ndarray | None = None
        self.interm: np.ndarray | None = None
        super().__init__()
        providers = providers or ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(encoder_path), session_options, providers=providers)
        self.decoder = ort.InferenceSession(str(decoder_path), session_options, providers=providers)
        self.image_size = int(self.encoder.get_inputs()[0].shape[-1])

    @property
    def embeddings(self) -> np.ndarray | None:
        if self.image_embeddings is None:
            return None
        return np.concatenate([self.image_embeddings.ravel(), self.interm.ravel()])

    @embeddings.setter
    def embeddings(self, value: np.ndarray | None) -> None:
        if value is None or value.ndim == 4:  # the encoder's image embeddings (interm set beside them)
            self.image_embeddings = value
            return
        size = self.image_size // 16
        split = 256 * size * size
        self.image_embeddings = value[:split].reshape(1, 256, size, size)
        self.interm = value[split:].reshape(1, 1, size, size, -1)

    def _encode(self, image_input):
        embeddings, self.interm = self.encoder.run(None, {"image": image_input})
        return embeddings

    def decoder_inputs(self, point_coords=None, point_labels=None, box=None, mask_input=None) -> dict[str, np.ndarray]:
        feed = super().decoder_inputs(point_coords, point_labels, box, mask_input)
        return {**feed, "image_embeddings": self.image_embeddings, "interm_embeddings": self.interm}

    def _decode(self, feed):
        return self.decoder.run(None, feed)

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output: bool = False, return_logits: bool = False):
        """(masks 1×H×W, iou_predictions 1, low_res_logits 1×S/4×S/4); the decoder's mask choice was fixed at export."""
        masks, iou, low_res = self._decode(self.decoder_inputs(point_coords, point_labels, box, mask_input))
        return (masks[0] if return_logits else masks[0] > 0.0), iou[0], low_res[0]
