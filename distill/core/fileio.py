"""Atomic writes and hashing, so a killed job never leaves a half-written file behind."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from sam_distill.core.errors import DistillError


def _atomic_replace(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_replace(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def save_tagged_model(path: Path, tag: str, model: torch.nn.Module, **fields: Any) -> Path:
    """One of our model files: plain data (``{"format": tag, **fields, "state_dict": ...}``), so it loads
    with ``weights_only=True``; written atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_torch_save({"format": tag, **fields, "state_dict": state}, Path(path))
    return Path(path)


def load_tagged(path: Path, tag: str, what: str, how_to_make: str) -> dict:
    """The payload of one of our plain-data files whose ``format`` is ``tag``; anything else is one sentence."""
    from sam_distill.core.errors import DistillError

    path = Path(path)
    if not path.is_file():
        raise DistillError(f"{what} {path} does not exist")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != tag:
        raise DistillError(f"{path} is not a {what} of this toolkit ({how_to_make})")
    return payload


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def claim_identity(header: Path, identity: dict, description: str) -> None:
    """Stamp a folder with what its contents were made from, or refuse to mix in anything made otherwise."""
    if not Path(header).exists():
        atomic_write_json(header, identity)
        return
    existing = read_json(header)
    for key, value in identity.items():
        if existing.get(key) != value:
            raise DistillError(
                f"{description} was built with {key} {json.dumps(existing.get(key))}, not {json.dumps(value)}; "
                "use another folder or delete this one"
            )
