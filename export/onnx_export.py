"""SAM → ONNX: the image encoder (``image`` → ``image_embeddings``) and the prompt encoder + mask decoder through
segment-anything's own ``SamOnnxModel``, with the inputs, outputs and dynamic axes of its
``scripts/export_onnx_model.py``, so existing SAM ONNX clients take our files unchanged.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.utils.onnx import SamOnnxModel

from sam_distill.core.errors import DistillError
from sam_distill.core.fileio import atomic_write_bytes
from sam_distill.core.images import Preprocessing
from sam_distill.export.registry import Exported, ExportedFile, ExportOptions, ExportSource

DECODER_INPUTS = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"]
DECODER_OUTPUTS = ["masks", "iou_predictions", "low_res_masks"]
DECODER_DYNAMIC_AXES = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
MIN_OPSET, MAX_OPSET = 11, 21
ENCODER_NOTE = ("input `image`: SAM's preprocessed image (Sam.preprocess): RGB resized so the longest side is S, "
                "normalised with pixel_mean/pixel_std, zero-padded bottom-right to S×S")
DECODER_NOTE = ("segment-anything's official decoder interface (scripts/export_onnx_model.py, return_single_mask off): "
                "point_coords in the model-input frame (ResizeLongestSide.apply_coords); a box is two corner points "
                "labelled 2 and 3; without a box add a point (0, 0) labelled -1; masks come back at orig_im_size")


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise DistillError(f"--opset {opset} is not supported; choose {MIN_OPSET}..{MAX_OPSET} (17 is the default)")


def _export(module: torch.nn.Module, args: tuple, path: Path, input_names, output_names, opset: int,
            dynamic_axes=None) -> Path:
    """TorchScript-based exporter: fp32 parity ≈ 5e-6 here, like the dynamo one, and it keeps SAM's dynamic axes."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")  # tracer warnings about Python ints are expected for SAM's modules
        torch.onnx.export(module, args, buffer, input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True, dynamo=False)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def export_encoder(sam: Sam, path: Path, opset: int) -> Path:
    """Fixed shapes in and out (1×3×S×S → 1×256×S/16×S/16), written into the graph so clients and TensorRT see them."""
    size = int(sam.image_encoder.img_size)
    _export(sam.image_encoder.eval(), (torch.zeros(1, 3, size, size),), path, ["image"], ["image_embeddings"], opset)
    model = onnx.load(str(path))
    embedding = [1, sam.prompt_encoder.embed_dim, *sam.prompt_encoder.image_embedding_size]
    for dim, value in zip(model.graph.output[0].type.tensor_type.shape.dim, embedding):
        dim.Clear()
        dim.dim_value = value
    atomic_write_bytes(path, model.SerializeToString())
    return path


def decoder_example(sam: Sam, num_points: int = 5) -> dict[str, torch.Tensor]:
    """Example decoder inputs with the dtypes and shapes of segment-anything's export script."""
    embed_size = sam.prompt_encoder.image_embedding_size
    low_res = [4 * x for x in embed_size]
    generator = torch.Generator().manual_seed(0)
    return {
        "image_embeddings": torch.randn(1, sam.prompt_encoder.embed_dim, *embed_size, generator=generator),
        "point_coords": torch.randint(0, int(sam.image_encoder.img_size), (1, num_points, 2), generator=generator).float(),
        "point_labels": torch.randint(0, 4, (1, num_points), generator=generator).float(),
        "mask_input": torch.randn(1, 1, *low_res, generator=generator),
        "has_mask_input": torch.tensor([1], dtype=torch.float),
        "orig_im_size": torch.tensor([1500, 2250], dtype=torch.float),
    }


def traceable_mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
    """``SamOnnxModel.mask_postprocessing`` with one trace fix, for segment-anything's and segment-anything-hq's
    ``SamOnnxModel`` alike: their crop ``masks[..., :int(h), :int(w)]`` turns the example's ``orig_im_size`` into
    constants under torch 2.x tracing, so every other aspect ratio got wrong masks. Slicing by the tensors
    themselves keeps the crop in the graph; everything else is theirs."""
    masks = F.interpolate(masks, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
    prepadded_size = self.resize_longest_image_size(orig_im_size, self.img_size)
    masks = masks[..., : prepadded_size[0], : prepadded_size[1]]
    original = orig_im_size.to(torch.int64)
    return F.interpolate(masks, size=(original[0], original[1]), mode="bilinear", align_corners=False)


class TraceableSamOnnxModel(SamOnnxModel):
    """segment-anything's ``SamOnnxModel`` with the trace fix of :func:`traceable_mask_postprocessing`."""

    mask_postprocessing = traceable_mask_postprocessing


def export_decoder(sam: Sam, path: Path, opset: int, static_points: int | None = None) -> Path:
    """``static_points`` fixes the number of points (TensorRT); otherwise it is the dynamic axis ``num_points``."""
    wrapper = TraceableSamOnnxModel(sam, return_single_mask=False).eval()
    example = decoder_example(sam, static_points or 5)
    dynamic_axes = None if static_points else DECODER_DYNAMIC_AXES
    return _export(wrapper, tuple(example.values()), path, DECODER_INPUTS, DECODER_OUTPUTS, opset, dynamic_axes)


_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32", onnx.TensorProto.UINT8: "uint8"}


def describe_onnx(path: Path) -> tuple[list[dict], list[dict]]:
    """Names, shapes (ints or symbolic names) and dtypes of a model's graph inputs and outputs."""
    graph = onnx.load(str(path), load_external_data=False).graph

    def describe(values):
        result = []
        for value in values:
            tensor = value.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
            result.append({"name": value.name, "shape": shape,
                           "dtype": _ONNX_DTYPES.get(tensor.elem_type, onnx.TensorProto.DataType.Name(tensor.elem_type))})
        return result

    return describe(graph.input), describe(graph.output)


def onnx_file(path: Path, role: str, precision: str, notes: str) -> ExportedFile:
    inputs, outputs = describe_onnx(path)
    return ExportedFile(path, "onnx", role, precision, inputs, outputs, notes)


def to_fp16(source: Path, target: Path) -> Path:
    """fp16 weights and compute with fp32 inputs/outputs (onnxruntime's own converter)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    atomic_write_bytes(target, model.SerializeToString())
    return target


def sam_manifest(sam: Sam, info, out: Path) -> dict:
    """The manifest sections every SAM export shares: the model, its preprocessing, the TensorRT commands."""
    from sam_distill.export.tensorrt import trtexec_commands

    size = int(sam.image_encoder.img_size)
    return {"source": {"model": info.student, "image_size": size},
            "preprocessing": {**Preprocessing(size).as_dict(), "encoder_input": ENCODER_NOTE,
                              "layout": f"1x3x{size}x{size} float32 RGB (NCHW)"},
            "tensorrt": {"commands": trtexec_commands(out),
                         "note": "build on the target board from the static-shape ONNX pair (--static-shapes)"}}


def pair_files(encoder: Path, decoder: Path, out: Path, options: ExportOptions, notes: dict[str, str]
               ) -> list[ExportedFile]:
    """An exported fp32 encoder/decoder pair and, as the options ask, its fp16 and dynamic-INT8 copies, described
    (``notes`` per role); what every family's ONNX export writes before its own extras."""
    from sam_distill.export.quantize import quantize_dynamic_file

    pair = (("encoder", encoder), ("decoder", decoder))
    files = [onnx_file(path, role, "fp32", notes[role]) for role, path in pair]
    if options.fp16:
        files += [onnx_file(to_fp16(path, out / f"{role}.fp16.onnx"), role, "fp16", notes[role]) for role, path in pair]
    if options.int8:
        int8_ops = options.int8_ops or "matmul"
        ops = f"dynamic INT8 of {'MatMul only' if int8_ops == 'matmul' else 'every operator'}"
        files += [onnx_file(quantize_dynamic_file(path, out / f"{role}.int8-dynamic.onnx", int8_ops), role,
                            "int8-dynamic", f"{ops}; {notes[role]}") for role, path in pair]
    return files


def family_manifest(arch: str, size: int, family: str, preprocessing: dict, encoder_note: str) -> dict:
    """The manifest sections of a SAM 2 or HQ-SAM export: the model and its encoder's input."""
    return {"source": {"model": arch, "image_size": size, "family": family},
            "preprocessing": {**preprocessing, "image_size": size, "encoder_input": encoder_note,
                              "layout": f"1x3x{size}x{size} float32 RGB (NCHW)"}}


def export_onnx(source: ExportSource, options: ExportOptions, out: Path, log=print) -> Exported:
    """fp32 encoder and decoder; with options, fp16, INT8 (dynamic and calibrated static) and static-shape variants;
    every file's parity against PyTorch (``SamPredictor``) on the parity images."""
    from sam_distill.export.parity import checked_export
    from sam_distill.export.quantize import quantize_static_files

    sam, info = source.load()
    check_opset(options.opset)
    out.mkdir(parents=True, exist_ok=True)
    encoder = export_encoder(sam, out / "encoder.onnx", options.opset)
    decoder = export_decoder(sam, out / "decoder.onnx", options.opset)
    files = pair_files(encoder, decoder, out, options, {"encoder": ENCODER_NOTE, "decoder": DECODER_NOTE})
    if options.int8 and options.calibration is not None:
        written = quantize_static_files(sam, encoder, decoder, out, options)
        files += [onnx_file(written[role], role, "int8-static", f"static QDQ INT8 calibrated on {options.calibration}; {note}")
                  for role, note in (("encoder", ENCODER_NOTE), ("decoder", DECODER_NOTE))]
    if options.static_shapes:
        files += export_static(sam, out, options)
    return checked_export(sam, info, files, options, out, "onnxruntime", log)


def export_static(sam: Sam, out: Path, options: ExportOptions) -> list[ExportedFile]:
    """A decoder with batch 1 and a fixed number of points: with encoder.onnx (already fixed at 1×3×S×S) the pair
    TensorRT (Jetson) builds engines from."""
    decoder = export_decoder(sam, out / "decoder.static.onnx", options.opset, options.static_points)
    note = f"static shapes: batch 1, exactly {options.static_points} points (pad with label -1)"
    return [onnx_file(decoder, "decoder", "fp32-static", f"{note}; {DECODER_NOTE}")]
