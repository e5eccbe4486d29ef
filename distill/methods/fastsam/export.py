"""The yolo_seg kind's exporters: ultralytics' own (``export_yolo``), at the image size the student was trained at.

ONNX files are checked against PyTorch on the raw outputs. ``--fp16`` converts that graph with onnxruntime's fp16
converter (the one ultralytics itself uses for a CPU fp16 ONNX export) and ``--int8`` with onnxruntime's dynamic
INT8 (``--int8-ops all`` by default: a convolutional network has no MatMul to quantise), each with its parity.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from sam_distill.export.onnx_export import onnx_file, to_fp16
from sam_distill.export.quantize import quantize_dynamic_file
from sam_distill.export.registry import Exported, ExportedFile, ExportOptions, ExportSource
from sam_distill.methods.fastsam.recipe import export_yolo, offline

# fp32 ONNX outputs may differ from PyTorch by this many times the embedding tolerance (the head's box decoding
# works in pixels, so its rounding is larger than an embedding's)
OUTPUT_TOLERANCE_FACTOR = 10


def _open(path: Path):
    offline()
    from ultralytics import YOLO

    yolo = YOLO(str(path))
    imgsz = int(yolo.model.args.get("imgsz", 640)) if isinstance(yolo.model.args, dict) else 640
    return yolo, imgsz


def _manifest(yolo, imgsz: int) -> dict:
    return {"source": {"model": f"ultralytics {yolo.task}", "image_size": imgsz},
            "preprocessing": {"resize": "letterbox", "image_size": imgsz, "scale": "pixels / 255, RGB"}}


def _flatten(value) -> list:
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _flatten(item)]
    return [value] if hasattr(value, "shape") else []


def _checked(path: Path, precision: str, image: torch.Tensor, reference: list, limit: float) -> ExportedFile:
    """The file described, with its largest raw-output difference from PyTorch (outputs matched by shape: the eval
    forward also returns training-only maps)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: image.numpy()})
    diffs = {}
    for meta, output in zip(session.get_outputs(), outputs):
        same_shape = [t for t in reference if tuple(t.shape) == output.shape]
        if same_shape:
            diffs[meta.name] = float(np.abs(output - same_shape[0].numpy()).max())
    worst = max(diffs.values()) if diffs else None
    file = onnx_file(path, "yolo-seg", precision, "ultralytics YOLO-seg graph: raw detections and mask prototypes")
    # per output too: the detections' pixel-scale box values can hide a small-valued output's (prototypes') error
    file.parity = {"output_max_abs": worst, "max_abs_per_output": diffs,
                   "within_tolerance": worst is not None and worst <= limit}
    return file


def export_onnx(source: ExportSource, options: ExportOptions, out: Path, log=print) -> Exported:
    yolo, imgsz = _open(source.path)
    log(f"exporting ultralytics {yolo.task} model at {imgsz} px ...")
    fp32 = Path(export_yolo(source.path, ["onnx"], out, imgsz)["onnx"])
    image = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = _flatten(yolo.model.float().eval()(image))
    limit = options.tolerance.embedding_max_abs * OUTPUT_TOLERANCE_FACTOR
    files = [_checked(fp32, "fp32", image, reference, limit)]
    if options.fp16:
        files.append(_checked(to_fp16(fp32, out / f"{fp32.stem}.fp16.onnx"), "fp16", image, reference, limit))
    if options.int8:
        target = quantize_dynamic_file(fp32, out / f"{fp32.stem}.int8-dynamic.onnx", options.int8_ops or "all")
        files.append(_checked(target, "int8-dynamic", image, reference, limit))
    worst = files[0].parity["output_max_abs"]
    failure = None if files[0].parity["within_tolerance"] else (
        f"{fp32}: ONNX outputs differ from PyTorch by {worst if worst is None else format(worst, '.3g')} "
        f"(limit {limit:g}; see {out / 'parity.json'})")
    return Exported(files, manifest=_manifest(yolo, imgsz), failure=failure)


def _export_as(fmt: str, source: ExportSource, out: Path, log) -> Exported:
    yolo, imgsz = _open(source.path)
    log(f"exporting ultralytics {yolo.task} model at {imgsz} px ...")
    written = Path(export_yolo(source.path, [fmt], out, imgsz)[fmt])
    return Exported([ExportedFile(written, fmt, "yolo-seg", "fp32", [], [], "ultralytics' own exporter")],
                    manifest=_manifest(yolo, imgsz))


def export_coreml(source: ExportSource, options: ExportOptions, out: Path, log=print) -> Exported:
    return _export_as("coreml", source, out, log)


def export_engine(source: ExportSource, options: ExportOptions, out: Path, log=print) -> Exported:
    return _export_as("engine", source, out, log)
