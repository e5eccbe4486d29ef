"""SAM → CoreML ML Programs (``.mlpackage``), converted from traced PyTorch; works on Linux, predicts on macOS only.

The decoder package takes 1 … ``MAX_POINTS`` points (a flexible input shape) and returns the low-resolution masks
and IoU scores: resizing to the original image (SAM's ``postprocess_masks``) is left to the app
(``export.runtime.postprocess_low_res``), as EdgeSAM's CoreML decoder does. On macOS both packages are run with
coremltools against PyTorch; elsewhere ``parity.json`` says they were not checked.
"""
from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from sam_distill.export.low_res_decoder import NOTE as DECODER_NOTE
from sam_distill.export.low_res_decoder import OUTPUTS as DECODER_OUTPUTS
from sam_distill.export.low_res_decoder import LowResDecoder, describe_outputs, low_res_example
from sam_distill.export.registry import Exported, ExportedFile, ExportOptions, ExportSource
from sam_distill.export.runtime import LowResPredictor

PRECISIONS = {"fp32": "FLOAT32", "fp16": "FLOAT16"}
MAX_POINTS = 16
NOT_CHECKED = "not checked (needs macOS): CoreML prediction runs only there; docs/export.md has the commands"


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


@contextlib.contextmanager
def one_prompt_set_per_image():
    """SAM's mask decoder repeats the image embedding once per prompt set (``torch.repeat_interleave(x,
    tokens.shape[0])``); an exported decoder takes one set, so the repeat is the identity, and with a flexible
    point count coremltools 9.0 cannot convert it ("Cannot add const [None, 1, 1, 1]"). While tracing, a repeat
    of 1 returns its input; any other call is torch's."""
    original = torch.repeat_interleave

    def repeat_interleave(input, repeats=None, dim=None, **kwargs):
        if isinstance(repeats, (int, torch.Tensor)) and int(repeats) == 1:  # under tracing a size is a tensor
            return input
        return original(input, repeats, dim, **kwargs)

    torch.repeat_interleave = repeat_interleave
    try:
        yield
    finally:
        torch.repeat_interleave = original


def input_types(example: dict[str, torch.Tensor], flexible_points: bool) -> list:
    """CoreML inputs of ``example``'s names and shapes; the point inputs' second axis may range 1 … MAX_POINTS."""
    import coremltools as ct

    types = []
    for name, value in example.items():
        shape = list(value.shape)
        if flexible_points and name in ("point_coords", "point_labels"):
            shape[1] = ct.RangeDim(lower_bound=1, upper_bound=MAX_POINTS, default=shape[1])
        types.append(ct.TensorType(name=name, shape=tuple(shape)))
    return types


def convert(module: nn.Module, example: dict[str, torch.Tensor], outputs: tuple[str, ...], precision: str, path: Path,
            flexible_points: bool = False) -> Path:
    import coremltools as ct

    _patch_int_cast()
    with torch.no_grad(), warnings.catch_warnings(), one_prompt_set_per_image():
        warnings.filterwarnings("ignore")
        traced = torch.jit.trace(module.eval(), tuple(example.values()))
        model = ct.convert(traced, inputs=input_types(example, flexible_points),
                           outputs=[ct.TensorType(name=n) for n in outputs], convert_to="mlprogram",
                           compute_precision=getattr(ct.precision, PRECISIONS[precision]),
                           minimum_deployment_target=ct.target.iOS16)
    model.save(str(path))
    return path


def describe_mlpackage(path: Path) -> tuple[list[dict], list[dict]]:
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))

    def shape(array) -> list:
        ranges = array.shapeRange.sizeRanges
        if not ranges:
            return list(array.shape)
        return [r.lowerBound if r.lowerBound == r.upperBound else f"{r.lowerBound}..{r.upperBound}" for r in ranges]

    def describe(features):
        return [{"name": f.name, "shape": shape(f.type.multiArrayType),
                 "dtype": {65568: "float32", 65552: "float16"}.get(f.type.multiArrayType.dataType, "other")}
                for f in features]

    return describe(spec.description.input), describe(spec.description.output)


class CoreMLModel:
    """An ``.mlpackage`` in coremltools (macOS), called with and returning named arrays."""

    def __init__(self, path: Path):
        import coremltools as ct

        self.model = ct.models.MLModel(str(path))

    def __call__(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: np.asarray(value, np.float32) for name, value in self.model.predict(
            {name: np.asarray(value, np.float32) for name, value in feed.items()}).items()}


class SamCoreMLPredictor(LowResPredictor):
    """A CoreML pair (``distill export --format coreml``) on macOS."""

    def __init__(self, encoder_path, decoder_path):
        encoder, decoder = CoreMLModel(encoder_path), CoreMLModel(decoder_path)
        size = int(encoder.model.get_spec().description.input[0].type.multiArrayType.shape[-1])
        super().__init__(encoder, decoder, size)


def export_coreml(source: ExportSource, options: ExportOptions, out: Path, log=print) -> Exported:
    """Encoder and decoder ``.mlpackage`` in fp32, and fp16 with ``--fp16``; compared with PyTorch on macOS."""
    from sam_distill.export.onnx_export import ENCODER_NOTE, sam_manifest
    from sam_distill.export.parity import checked_export

    sam, info = source.load()
    out.mkdir(parents=True, exist_ok=True)
    size = int(sam.image_encoder.img_size)
    decoder_note = f"1 to {MAX_POINTS} points; {DECODER_NOTE}"
    files = []
    for precision in ["fp32"] + (["fp16"] if options.fp16 else []):
        suffix = "" if precision == "fp32" else f".{precision}"
        encoder = convert(sam.image_encoder, {"image": torch.zeros(1, 3, size, size)}, ("image_embeddings",),
                          precision, out / f"encoder{suffix}.mlpackage")
        decoder = convert(LowResDecoder(sam), low_res_example(sam, 2), DECODER_OUTPUTS, precision,
                          out / f"decoder{suffix}.mlpackage", flexible_points=True)
        known = {output["name"]: output["shape"] for output in describe_outputs(size)}
        for role, path, note in (("encoder", encoder, ENCODER_NOTE), ("decoder", decoder, decoder_note)):
            inputs, outputs = describe_mlpackage(path)
            for output in outputs:  # a package with flexible inputs stores no output shapes
                output["shape"] = output["shape"] or known.get(output["name"], [])
            files.append(ExportedFile(path, "coreml", role, precision, inputs, outputs, note))
    if sys.platform == "darwin":
        return checked_export(sam, info, files, options, out, "CoreML", log)
    for file in files:
        file.parity = {"skipped": NOT_CHECKED}
    return Exported(files, manifest=sam_manifest(sam, info, out))
