"""Exporters: turn a SAM-style model into files an app runs (ONNX, CoreML, TensorRT), with parity reports.

``EXPORTERS`` maps a format name to ``exporter(model, info, options, out_dir) -> list[ExportedFile]``; later issues
register their own formats (heads, YOLO-seg students) the same way and import their module in ``pipeline.py``.
This package imports nothing heavy, so ``sam_distill.export.runtime`` stays usable without PyTorch; the built-in
exporters register when ``sam_distill.export.pipeline`` (``distill export``) is imported.
"""
from sam_distill.export.registry import EXPORTERS, ExportedFile, ExportOptions, Tolerance  # noqa: F401
