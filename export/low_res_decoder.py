"""The prompt encoder + mask decoder as phone runtimes take it (CoreML, LiteRT, ExecuTorch): segment-anything's ONNX
inputs less ``orig_im_size``, returning the IoU predictions and SAM's low-resolution masks. Resizing to the image
(``Sam.postprocess_masks``) depends on the image's size, which those runtimes want fixed; the app does it
(``export.runtime.postprocess_low_res``)."""
from __future__ import annotations

import torch
import torch.nn as nn
from segment_anything.modeling import Sam
from segment_anything.utils.onnx import SamOnnxModel

from sam_distill.export.onnx_export import decoder_example
from sam_distill.export.runtime import LOW_RES_DECODER_INPUTS

INPUTS = LOW_RES_DECODER_INPUTS
OUTPUTS = ("iou_predictions", "low_res_masks")
NOTE = ("inputs as segment-anything's ONNX decoder less orig_im_size (point_coords in the model-input frame; a box is "
        "two corners labelled 2 and 3; without a box add a point labelled -1); returns iou_predictions (1×4) and "
        "low_res_masks (1×4×S/4×S/4 logits: SAM's single mask, then its three multimask outputs): upscale to S×S, "
        "crop the unpadded region and resize to the image as SamPredictor.postprocess_masks does")


class LowResDecoder(nn.Module):
    """segment-anything's ONNX wrapper without the data-dependent resize to ``orig_im_size``."""

    def __init__(self, sam: Sam):
        super().__init__()
        self.wrapper = SamOnnxModel(sam, return_single_mask=False)

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        sam = self.wrapper.model
        masks, scores = sam.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=self.wrapper._embed_points(point_coords, point_labels),
            dense_prompt_embeddings=self.wrapper._embed_masks(mask_input, has_mask_input),
        )
        return scores, masks


def describe_outputs(image_size: int) -> list[dict]:
    """The manifest's description of :class:`LowResDecoder`'s outputs at input size ``image_size``."""
    low = image_size // 4
    return [{"name": "iou_predictions", "shape": [1, 4], "dtype": "float32"},
            {"name": "low_res_masks", "shape": [1, 4, low, low], "dtype": "float32"}]


def low_res_example(sam: Sam, points: int) -> dict[str, torch.Tensor]:
    """Example inputs of :class:`LowResDecoder` with ``points`` points (box corners or padding included)."""
    return {name: value for name, value in decoder_example(sam, points).items() if name in INPUTS}
