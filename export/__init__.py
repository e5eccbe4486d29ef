"""Exporters: turn a model file into files an app runs (ONNX, CoreML, TensorRT), with parity reports.

Which exporter serves which model file is the model-file table's answer (``core/model_files.py``: each kind's
``exporters`` keyed by format); an exporter takes an ``ExportSource`` and returns an ``Exported``. This package
imports nothing heavy, so ``sam_distill.export.runtime`` stays usable without PyTorch.
"""
from sam_distill.export.registry import Exported, ExportedFile, ExportOptions, ExportSource, Tolerance  # noqa: F401
