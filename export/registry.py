"""The exporter registry and what every exporter receives and returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sam_distill.core.registry import Registry

EXPORTERS: Registry = Registry("exporter")


@dataclass(frozen=True)
class Tolerance:
    """fp32 files must meet these; INT8 and fp16 files only report how far they are."""

    embedding_max_abs: float = 1e-3
    mask_iou: float = 0.99


@dataclass
class ExportOptions:
    int8: bool = False
    int8_ops: str = "matmul"  # dynamic INT8 of "matmul" only (faster here) or of "all" operators
    fp16: bool = False
    opset: int = 17
    static_shapes: bool = False
    static_points: int = 2  # a box, or one point plus SAM's padding point
    calibration: Path | None = None  # image folder or teacher cache folder, for static INT8
    calibration_count: int = 16
    parity_images: Path | None = None  # default: synthetic images
    parity_count: int = 3
    tolerance: Tolerance = field(default_factory=Tolerance)


@dataclass
class ExportedFile:
    """One file an exporter wrote, described for manifest.json (and its parity for parity.json)."""

    path: Path
    format: str
    role: str  # "encoder" or "decoder"
    precision: str  # "fp32", "fp16", "int8-dynamic", "int8-static"
    inputs: list[dict]
    outputs: list[dict]
    notes: str = ""
    parity: dict | None = None

    def manifest_entry(self, folder: Path) -> dict:
        entry = {"file": str(Path(self.path).relative_to(folder)), "format": self.format, "role": self.role,
                 "precision": self.precision, "inputs": self.inputs, "outputs": self.outputs}
        if self.notes:
            entry["notes"] = self.notes
        return entry
