"""SAM → LiteRT (``.tflite``, the Android/iOS runtime formerly TensorFlow Lite) with Google's ``litert-torch``
converter, checked in the LiteRT interpreter (``ai-edge-litert``) on this machine.

Why litert-torch: it converts the PyTorch modules directly (torch.export → StableHLO → TFLite), so no ONNX→TF
detour changes the graph; fp32 files match PyTorch to ~1e-5. Its reduced-precision variants come from Google's
``ai-edge-quantizer`` on the fp32 file: fp16 weights (``float_casting``) and dynamic INT8 (``dynamic_wi8_afp32``,
per-channel INT8 weights, activations quantised at run time).

The decoder file has one signature per point count, ``points_1`` … ``points_N`` (``--max-points``, weights shared):
litert-torch 0.10 refuses a symbolic point count, XNNPACK cannot re-plan a resized one, and padding a fixed count
with label -1 points is not what SAM computes (SAM adds exactly one padding point; on the test model four points
where two are padding gave masks of IoU 0.76 against SamPredictor's). The runtime picks the exact signature.
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from sam_distill.core.errors import DistillError
from sam_distill.export.low_res_decoder import INPUTS as DECODER_INPUTS
from sam_distill.export.low_res_decoder import NOTE as DECODER_NOTE
from sam_distill.export.low_res_decoder import LowResDecoder, low_res_example
from sam_distill.export.registry import Exported, ExportedFile, ExportOptions, ExportSource

INSTALL = ("LiteRT export needs litert-torch and ai-edge-litert: pip install \"sam-distill[litert]\" "
           "(in its own environment: docs/export.md says why)")
# ai-edge-quantizer recipes: fp16 weights with fp32 compute; INT8 per-channel weights with dynamic activations
FP16_RECIPE = [{"regex": ".*", "operation": "*", "algorithm_key": "float_casting",
                "op_config": {"weight_tensor_config": {"num_bits": 16, "dtype": "FLOAT", "granularity": "TENSORWISE"},
                              "compute_precision": "FLOAT", "explicit_dequantize": True}}]


class NamedOutputs(nn.Module):
    """Keyword inputs in, a dict out: LiteRT keeps both as the signature's names, so apps feed by name."""

    def __init__(self, module: nn.Module, outputs: tuple[str, ...]):
        super().__init__()
        self.module, self.outputs = module, outputs

    def forward(self, **inputs):
        result = self.module(*inputs.values())
        result = (result,) if isinstance(result, torch.Tensor) else result
        return dict(zip(self.outputs, result))


def require_litert() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the converter's C++ logging, before it is imported
    try:
        import ai_edge_litert  # noqa: F401
        import litert_torch  # noqa: F401
    except ImportError:
        raise DistillError(INSTALL) from None


def convert(module: nn.Module, signatures: dict[str, dict[str, torch.Tensor]], outputs: tuple[str, ...],
            path: Path) -> Path:
    """One ``.tflite`` with a signature per example (name → keyword inputs), sharing the module's weights."""
    import litert_torch

    named = NamedOutputs(module, outputs).eval()
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # progress lines
        warnings.filterwarnings("ignore")
        converter = litert_torch
        for name, example in signatures.items():
            converter = converter.signature(name, named, sample_kwargs=example)
        converter.convert().export(str(path))
    return path


def decoder_signatures(sam, max_points: int) -> dict[str, dict[str, torch.Tensor]]:
    return {f"points_{count}": low_res_example(sam, count) for count in range(1, max_points + 1)}


def quantize(source: Path, target: Path, precision: str) -> Path:
    from ai_edge_quantizer import quantizer, recipe

    chosen = FP16_RECIPE if precision == "fp16" else recipe.dynamic_wi8_afp32()
    tool = quantizer.Quantizer(str(source))
    tool.load_quantization_recipe(chosen)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its size report
        tool.quantize().export_model(str(target), overwrite=True)
    return target


def describe_tflite(path: Path) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs of the file's signatures; a shape that differs between signatures (the point count)
    reads ``"num_points"``."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    runners = [interpreter.get_signature_runner(name) for name in interpreter.get_signature_list()]

    def describe(kind: str) -> list[dict]:
        described = []
        for name, detail in getattr(runners[0], f"get_{kind}_details")().items():
            shapes = [getattr(r, f"get_{kind}_details")()[name]["shape"] for r in runners]
            shape = [int(d) if all(s[i] == d for s in shapes) else "num_points" for i, d in enumerate(shapes[0])]
            described.append({"name": name, "shape": shape, "dtype": str(detail["dtype"].__name__)})
        return sorted(described, key=lambda d: ORDER.get(d["name"], len(ORDER)))

    return describe("input"), describe("output")


ORDER = {name: index for index, name in enumerate(("image", *DECODER_INPUTS))}


def export_litert(source: ExportSource, options: ExportOptions, out: Path, log=print) -> Exported:
    """``encoder.tflite`` and ``decoder.tflite`` in fp32; ``.fp16`` and ``.int8-dynamic`` copies with the options;
    every file run in the LiteRT interpreter against PyTorch."""
    from sam_distill.export.onnx_export import ENCODER_NOTE
    from sam_distill.export.parity import checked_export

    if options.max_points < 1:
        raise DistillError(f"--max-points {options.max_points}: the decoder needs at least 1 point signature")
    require_litert()
    sam, info = source.load()
    out.mkdir(parents=True, exist_ok=True)
    size = int(sam.image_encoder.img_size)
    log("converting the encoder with litert-torch ...")
    encoder = convert(sam.image_encoder, {"serving_default": {"image": torch.zeros(1, 3, size, size)}},
                      ("image_embeddings",), out / "encoder.tflite")
    log(f"converting the decoder with litert-torch (signatures points_1 … points_{options.max_points}) ...")
    decoder = convert(LowResDecoder(sam), decoder_signatures(sam, options.max_points),
                      ("iou_predictions", "low_res_masks"), out / "decoder.tflite")
    decoder_note = (f"signatures points_1 … points_{options.max_points}: call the one with exactly as many points as "
                    f"the prompt has (box corners and SAM's one padding point included); {DECODER_NOTE}")
    notes = {"encoder": ENCODER_NOTE, "decoder": decoder_note}
    written = [("encoder", "fp32", encoder), ("decoder", "fp32", decoder)]
    for precision, wanted in (("fp16", options.fp16), ("int8-dynamic", options.int8)):
        if wanted:
            written += [(role, precision, quantize(path, out / f"{role}.{precision}.tflite", precision))
                        for role, path in (("encoder", encoder), ("decoder", decoder))]
    files = []
    for role, precision, path in written:
        inputs, outputs = describe_tflite(path)
        files.append(ExportedFile(path, "tflite", role, precision, inputs, outputs, notes[role]))
    return checked_export(sam, info, files, options, out, "the LiteRT interpreter", log)
