"""What every exporter receives and returns.

Exporters are found through the model-file table (``core/model_files.py``): each kind's ``exporters`` maps a format
to ``exporter(source: ExportSource, options: ExportOptions, out: Path, log) -> Exported``, with the options it
applies. ``export/pipeline.py`` runs them and writes ``manifest.json`` and ``parity.json``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sam_distill.core.model_files import ModelKind, identify


@dataclass(frozen=True)
class Tolerance:
    """fp32 files must meet ``embedding_max_abs`` and ``mask_iou`` against PyTorch (the export fails otherwise); an
    fp16 or INT8 file passes its verdict when it loses at most ``max_mask_iou_loss`` of mask IoU against PyTorch
    beyond its format's fp32 pair (1 point by default)."""

    embedding_max_abs: float = 1e-3
    mask_iou: float = 0.99
    max_mask_iou_loss: float = 0.01


@dataclass
class ExportOptions:
    int8: bool = False
    int8_ops: str | None = None  # dynamic INT8 of "matmul" only or of "all" operators; None: the kind's default
    fp16: bool = False
    opset: int = 17
    static_shapes: bool = False
    static_points: int = 2  # a box, or one point plus SAM's padding point
    max_points: int = 6  # LiteRT decoder signatures points_1 … points_N (a box and 4 clicks)
    calibration: Path | None = None  # image folder or teacher cache folder, for static INT8
    calibration_count: int = 16
    parity_images: Path | None = None  # default: synthetic images
    parity_count: int = 3
    image_size: int | None = None  # another input size than the file's (ConvNet encoders only); None: the file's
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
        if self.parity and "verdict" in self.parity:
            entry["verdict"] = self.parity["verdict"]
        return entry


@dataclass
class ExportSource:
    """The model file being exported, at ``image_size`` when one is asked for (the exported graphs take that input
    size). Its kind's loader runs once, however many formats are asked for."""

    path: Path
    kind: ModelKind
    image_size: int | None = None
    _loaded: Any = field(default=None, repr=False)

    @classmethod
    def of(cls, path: Path | str, image_size: int | None = None) -> ExportSource:
        return cls(Path(path), identify(path), image_size)

    def load(self) -> Any:
        """What the kind's ``load`` entry returns (for a SAM: ``(Sam, ModelInfo)``)."""
        if self._loaded is None:
            self._loaded = self.kind.load_file(self.path, self.image_size)
        return self._loaded


@dataclass
class Exported:
    """What one exporter wrote: its files (with their parity figures), the manifest sections it adds (``source`` is
    merged into the manifest's own), parity.json entries that belong to no single file (e.g. a chain of graphs
    checked together, the images used), and an fp32 parity failure, raised once both reports are written."""

    files: list[ExportedFile]
    manifest: dict = field(default_factory=dict)
    parity: dict = field(default_factory=dict)
    parity_files: dict = field(default_factory=dict)
    failure: str | None = None
