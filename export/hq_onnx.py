"""HQ-SAM → ONNX: the image encoder (``image`` → ``image_embeddings`` and ``interm_embeddings``, the early ViT
feature stacked N×1×H×W×C with N = 1) and the prompt encoder + HQ decoder through segment-anything-hq's own
``SamOnnxModel``, with the inputs and outputs of that project's ``scripts/export_onnx_model.py``: SAM's decoder
inputs with ``interm_embeddings`` second, ``masks`` at ``orig_im_size``, ``iou_predictions``, ``low_res_masks``.
Its script feeds all four global-attention blocks' features (N = 4) and the decoder reads the first, so N is a
dynamic axis here and either feed works.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from sam_distill.export.onnx_export import (
    DECODER_DYNAMIC_AXES,
    _export,
    check_opset,
    family_manifest,
    pair_files,
    traceable_mask_postprocessing,
)
from sam_distill.export.registry import Exported, ExportOptions, ExportSource

DECODER_INPUTS = ["image_embeddings", "interm_embeddings", "point_coords", "point_labels", "mask_input",
                  "has_mask_input", "orig_im_size"]
DECODER_OUTPUTS = ["masks", "iou_predictions", "low_res_masks"]
ENCODER_NOTE = ("input `image`: SAM's preprocessing (longest side to S, pixel_mean/pixel_std, zero-padded to S×S); "
                "outputs image_embeddings 1×256×S/16×S/16 and interm_embeddings 1×1×S/16×S/16×C (the early ViT "
                "feature the HQ decoder fuses; C the teacher ViT's width)")
DECODER_NOTE = ("segment-anything-hq's SamOnnxModel (multimask_output off, hq_token_only off: SAM's mask plus the "
                "HQ mask, one mask per prompt); SAM's point/box encoding (a box is two points labelled 2 and 3, "
                "without one add a point (0, 0) labelled -1); masks come back at orig_im_size")


class HqOnnxEncoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.image_encoder = model.image_encoder

    def forward(self, image: torch.Tensor):
        embeddings, interm = self.image_encoder(image)
        return embeddings, interm[0].unsqueeze(0)


def traceable_decoder(model: nn.Module) -> nn.Module:
    """segment-anything-hq's ``SamOnnxModel`` with the trace fix our SAM export applies (the crop to the
    pre-padding size sliced by tensors, so the example's size does not become a constant)."""
    from segment_anything_hq.utils.onnx import SamOnnxModel

    class TraceableHqOnnxModel(SamOnnxModel):
        mask_postprocessing = traceable_mask_postprocessing

    return TraceableHqOnnxModel(model, hq_token_only=False, multimask_output=False).eval()


def export_pair(model: nn.Module, out: Path, opset: int) -> tuple[Path, Path]:
    size = int(model.image_encoder.img_size)
    encoder = _export(HqOnnxEncoder(model).eval(), (torch.zeros(1, 3, size, size),), out / "encoder.onnx", ["image"],
                      ["image_embeddings", "interm_embeddings"], opset)
    grid = size // 16
    width = int(model.mask_decoder.compress_vit_feat[0].weight.shape[0])
    generator = torch.Generator().manual_seed(0)
    example = (torch.randn(1, 256, grid, grid, generator=generator),
               torch.randn(1, 1, grid, grid, width, generator=generator),
               torch.randint(0, size, (1, 5, 2), generator=generator).float(),
               torch.randint(0, 4, (1, 5), generator=generator).float(),
               torch.randn(1, 1, grid * 4, grid * 4, generator=generator), torch.tensor([1.0]),
               torch.tensor([1500.0, 2250.0]))
    axes = {**DECODER_DYNAMIC_AXES, "interm_embeddings": {0: "num_interm"}}
    decoder = _export(traceable_decoder(model), example, out / "decoder.onnx", DECODER_INPUTS, DECODER_OUTPUTS, opset,
                      axes)
    return encoder, decoder


class HqTorchReference:
    """segment-anything-hq's ``SamPredictor`` on the parity images: both encoder outputs, one mask per prompt
    (``multimask_output`` off, as the decoder is exported)."""

    def __init__(self, model: nn.Module, images: list[np.ndarray], prompts_per_image: int = 2):
        from segment_anything_hq import SamPredictor

        from sam_distill.export.parity import sample_prompts

        predictor = SamPredictor(model)
        self.images, self.embeddings, self.prompts, self.masks = images, [], [], []
        with torch.inference_mode():
            for index, image in enumerate(images):
                predictor.set_image(image)
                self.embeddings.append(np.concatenate([predictor.features.numpy().ravel(),
                                                       predictor.interm_features[0].numpy().ravel()]))
                prompts = sample_prompts(image.shape[:2], prompts_per_image, seed=index)
                self.prompts.append(prompts)
                self.masks.append([predictor.predict(**p, multimask_output=False)[0] for p in prompts])


def open_hq_pair(file_format: str, encoder: Path, decoder: Path):
    from sam_distill.export.runtime import HqOnnxPredictor

    return HqOnnxPredictor(encoder, decoder)


def export_hq_onnx(source: ExportSource, options: ExportOptions, out: Path, log=print) -> Exported:
    """fp32 pair; fp16 and dynamic INT8 copies on request; every file's parity against segment-anything-hq."""
    from sam_distill.export.parity import parity_checked

    model, arch = source.load()
    check_opset(options.opset)
    out.mkdir(parents=True, exist_ok=True)
    encoder, decoder = export_pair(model.eval(), out, options.opset)
    files = pair_files(encoder, decoder, out, options, {"encoder": ENCODER_NOTE, "decoder": DECODER_NOTE})
    size = int(model.image_encoder.img_size)
    preprocessing = {"resize": "longest_side", "pixel_mean": [123.675, 116.28, 103.53],
                     "pixel_std": [58.395, 57.12, 57.375]}
    return parity_checked(files, options, out, size, lambda images: HqTorchReference(model, images),
                          family_manifest(arch, size, "hq-sam", preprocessing, ENCODER_NOTE), log,
                          against="segment-anything-hq's SamPredictor", opener=open_hq_pair)
