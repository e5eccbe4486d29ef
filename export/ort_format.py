"""SAM → ONNX Runtime Mobile: the ``.ort`` format with the reduced operator config that a minimal onnxruntime build
for Android/iOS is compiled from (``build.sh --minimal_build --include_ops_by_config required_operators.config``).
The files run in the full onnxruntime too, which is where their parity is checked.

Conversion is onnxruntime's own (``onnxruntime.tools.convert_onnx_models_to_ort``) at the "extended" graph
optimisation level: "all" adds x86 layout transforms (NCHWc) that an ARM phone's build does not have.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from pathlib import Path

from sam_distill.export.registry import Exported, ExportedFile, ExportOptions, ExportSource

OPTIMIZATION_LEVEL = "extended"
CONFIG = "required_operators.config"


def convert_folder(onnx_folder: Path, out: Path) -> dict[str, Path]:
    """Every ``.onnx`` in ``onnx_folder`` → ``out/NAME.ort`` plus one ``out/required_operators.config`` for all."""
    import onnxruntime
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    onnxruntime.set_default_logger_severity(3)  # constant-folding notes on every SAM decoder
    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
    previous = os.environ.get("ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL")
    os.environ["ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"] = OPTIMIZATION_LEVEL
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the tool prints a line per step
            convert_onnx_models_to_ort(onnx_folder, output_dir=out, optimization_styles=[OptimizationStyle.Fixed],
                                       target_platform="arm")
    finally:
        if previous is None:
            del os.environ["ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"]
        else:
            os.environ["ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"] = previous
    written = {}
    for converted in out.glob(f"*.{OPTIMIZATION_LEVEL}.ort"):
        target = converted.with_name(converted.name.replace(f".{OPTIMIZATION_LEVEL}.ort", ".ort"))
        converted.replace(target)
        written[target.stem] = target
    (out / f"required_operators.{OPTIMIZATION_LEVEL}.config").replace(out / CONFIG)
    return written


def export_ort(source: ExportSource, options: ExportOptions, out: Path, log=print) -> Exported:
    """``encoder.ort`` and ``decoder.ort`` (SAM's ONNX interface), ``.fp16`` and ``.int8-dynamic`` copies with the
    options, ``required_operators.config``; every file run in onnxruntime against PyTorch."""
    from sam_distill.export.onnx_export import (
        DECODER_NOTE,
        ENCODER_NOTE,
        check_opset,
        describe_onnx,
        export_decoder,
        export_encoder,
        to_fp16,
    )
    from sam_distill.export.parity import checked_export
    from sam_distill.export.quantize import quantize_dynamic_file

    sam, info = source.load()
    check_opset(options.opset)
    out.mkdir(parents=True, exist_ok=True)
    notes = {"encoder": ENCODER_NOTE, "decoder": DECODER_NOTE}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        graphs = {("encoder", "fp32"): export_encoder(sam, folder / "encoder.onnx", options.opset),
                  ("decoder", "fp32"): export_decoder(sam, folder / "decoder.onnx", options.opset)}
        for role in ("encoder", "decoder"):
            fp32 = graphs[(role, "fp32")]
            if options.fp16:
                graphs[(role, "fp16")] = to_fp16(fp32, folder / f"{role}.fp16.onnx")
            if options.int8:
                graphs[(role, "int8-dynamic")] = quantize_dynamic_file(fp32, folder / f"{role}.int8-dynamic.onnx",
                                                                       options.int8_ops or "matmul")
        inputs_outputs = {key: describe_onnx(path) for key, path in graphs.items()}
        log(f"converting to the ORT format (optimisation level {OPTIMIZATION_LEVEL}) ...")
        converted = convert_folder(folder, out)
    files = []
    for (role, precision), path in graphs.items():
        inputs, outputs = inputs_outputs[(role, precision)]
        files.append(ExportedFile(converted[path.stem], "ort", role, precision, inputs, outputs,
                                  f"ORT format ({OPTIMIZATION_LEVEL} optimisations); {notes[role]}"))
    ort_mobile = {"operator_config": CONFIG, "build": "onnxruntime's build.sh --minimal_build "
                  f"--include_ops_by_config {CONFIG} (or the prebuilt onnxruntime-android / onnxruntime-objc "
                  "packages, which run .ort files as they are)"}
    return checked_export(sam, info, files, options, out, "onnxruntime", log, {"ort_mobile": ort_mobile})
