"""Exporters: turn a SAM-style model into files an app runs (ONNX, CoreML, TensorRT), with parity reports.

``EXPORTERS`` maps a format name to ``exporter(model, info, options, out_dir) -> list[ExportedFile]``;
later issues register their own formats (heads, YOLO-seg students) the same way.
"""
from .registry import EXPORTERS, ExportedFile, ExportOptions, Tolerance  # noqa: F401
