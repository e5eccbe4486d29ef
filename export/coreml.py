"""SAM → CoreML ML Programs (``.mlpackage``), converted from traced PyTorch; works on Linux, predicts on macOS only.

The decoder package takes a fixed number of points and returns the low-resolution masks and IoU scores: resizing
to the original image (SAM's ``postprocess_masks``) is left to the app, as CoreML needs static output shapes.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from segment_anything.modeling import Sam
from segment_anything.utils.onnx import SamOnnxModel

from sam_distill.export.registry import Exported, ExportedFile, ExportOptions, ExportSource

PRECISIONS = {"fp32": "FLOAT32", "fp16": "FLOAT16"}


def _patch_int_cast() -> None:
    """coremltools 9.0 converts ``aten::Int`` of a folded length-1 constant with ``int(ndarray)``, which NumPy 2
    rejects ("only 0-dimensional arrays can be converted"); TinyViT's ``len(x)``/shape arithmetic produces exactly
    that. Override the ``int`` op to take the element first and defer everything else to coremltools."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch import ops, register_torch_op

    @register_torch_op(torch_alias=["int"], override=True)
    def int_of_length_one_constant(context, node):
        value = context[node.inputs[0]]
        if value.can_be_folded_to_const() and np.ndim(value.val) > 0 and np.size(value.val) == 1:
            context.add(mb.const(val=np.int32(np.asarray(value.val).item()), name=node.name))
        else:
            ops._int(context, node)


class DecoderForCoreML(nn.Module):
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


def convert(module: nn.Module, example: dict[str, torch.Tensor], outputs: list[str], precision: str, path: Path) -> Path:
    import coremltools as ct

    _patch_int_cast()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        traced = torch.jit.trace(module.eval(), tuple(example.values()))
        model = ct.convert(traced, inputs=[ct.TensorType(name=k, shape=tuple(v.shape)) for k, v in example.items()],
                           outputs=[ct.TensorType(name=n) for n in outputs], convert_to="mlprogram",
                           compute_precision=getattr(ct.precision, PRECISIONS[precision]),
                           minimum_deployment_target=ct.target.iOS16)
    model.save(str(path))
    return path


def describe_mlpackage(path: Path) -> tuple[list[dict], list[dict]]:
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))

    def describe(features):
        return [{"name": f.name, "shape": list(f.type.multiArrayType.shape),
                 "dtype": {65568: "float32", 65552: "float16"}.get(f.type.multiArrayType.dataType, "other")}
                for f in features]

    return describe(spec.description.input), describe(spec.description.output)


def export_coreml(source: ExportSource, options: ExportOptions, out: Path, log=print) -> Exported:
    """Encoder and decoder ``.mlpackage`` in fp32, and fp16 with ``--fp16``."""
    from sam_distill.export.onnx_export import ENCODER_NOTE, decoder_example, sam_manifest

    sam, info = source.load()
    out.mkdir(parents=True, exist_ok=True)
    size = int(sam.image_encoder.img_size)
    decoder_inputs = {k: v for k, v in decoder_example(sam, options.static_points).items() if k != "orig_im_size"}
    decoder_note = (f"exactly {options.static_points} points (a box is two corners labelled 2, 3; pad with label -1); "
                    "returns low-resolution masks: upscale and crop as SamPredictor does")
    files = []
    for precision in ["fp32"] + (["fp16"] if options.fp16 else []):
        suffix = "" if precision == "fp32" else f".{precision}"
        encoder = convert(sam.image_encoder, {"image": torch.zeros(1, 3, size, size)}, ["image_embeddings"],
                          precision, out / f"encoder{suffix}.mlpackage")
        decoder = convert(DecoderForCoreML(sam), decoder_inputs, ["iou_predictions", "low_res_masks"],
                          precision, out / f"decoder{suffix}.mlpackage")
        for role, path, note in (("encoder", encoder, ENCODER_NOTE), ("decoder", decoder, decoder_note)):
            inputs, outputs = describe_mlpackage(path)
            parity = None if sys.platform == "darwin" else {"skipped": "CoreML prediction runs only on macOS"}
            files.append(ExportedFile(path, "coreml", role, precision, inputs, outputs, note, parity))
    return Exported(files, manifest=sam_manifest(sam, info, out))
