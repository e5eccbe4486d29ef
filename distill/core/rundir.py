"""One folder per run: config copy, log, metrics, checkpoints, final models and reports."""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path

from sam_distill.core.fileio import atomic_write_json, atomic_write_text, read_json


class RunDir:
    def __init__(self, path: Path | str, quiet: bool = False):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.quiet = quiet

    def sub(self, name: str) -> Path:
        folder = self.path / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def log(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        if not self.quiet:
            print(message, flush=True)
        with open(self.sub("logs") / "run.log", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def stage_done(self, stage: str) -> dict | None:
        marker = self.path / "stages" / f"{stage}.json"
        return read_json(marker) if marker.exists() else None

    def mark_done(self, stage: str, info: dict) -> None:
        atomic_write_json(self.sub("stages") / f"{stage}.json", info)


class MetricsWriter:
    """Metrics to CSV (and TensorBoard when installed). On resume, rows past the resumed step are dropped."""

    def __init__(self, path: Path, fields: list[str], resume_step: int = 0, tensorboard_dir: Path | None = None):
        self.path = Path(path)
        self.fields = fields
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.path.exists() and resume_step > 0:
            with open(self.path, newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["step"]) <= resume_step]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_text(self.path, buffer.getvalue())
        self.tensorboard = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(tensorboard_dir), purge_step=resume_step + 1 if resume_step else None)
            except ImportError:
                pass

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow({k: row.get(k, "") for k in self.fields})
        if self.tensorboard is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def read_metrics(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: float(v) if v not in ("", None) else None for k, v in row.items()} for row in csv.DictReader(f)]
