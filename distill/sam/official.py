"""The official SAM checkpoints by name: downloaded once into the cache, sha256-checked, through a
``.part`` file; offline, one sentence names the URL and where to put the file."""
from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from sam_distill.core.errors import DistillError
from sam_distill.core.fileio import sha256_file
from sam_distill.core.registry import Registry

DOWNLOAD_TIMEOUT_S = 20


@dataclass(frozen=True)
class OfficialCheckpoint:
    arch: str
    url: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


TEACHERS: Registry[OfficialCheckpoint] = Registry("teacher")
for _name, _ckpt in {
    "sam_vit_h": OfficialCheckpoint(
        "vit_h",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
    "sam_vit_l": OfficialCheckpoint(
        "vit_l",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "sam_vit_b": OfficialCheckpoint(
        "vit_b",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    ),
    "mobile_sam": OfficialCheckpoint(
        "tinyvit_5m",
        "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
    ),
}.items():
    TEACHERS.register(_name)(_ckpt)


def checkpoint_cache_dir() -> Path:
    """Where official checkpoints live: ``$SAM_DISTILL_HOME/checkpoints`` (default ``~/.cache/sam-distill``)."""
    home = os.environ.get("SAM_DISTILL_HOME") or Path.home() / ".cache" / "sam-distill"
    return Path(home) / "checkpoints"


def resolve_official(name: str) -> Path:
    """The local path of an official checkpoint, downloading it (once, sha256-checked) if needed."""
    spec = TEACHERS.get(name)
    target = checkpoint_cache_dir() / spec.filename
    if target.is_file():
        return target
    if os.environ.get("SAM_DISTILL_OFFLINE"):
        raise DistillError(f"{name} is not in the cache and SAM_DISTILL_OFFLINE is set; download {spec.url} and put it at {target}")
    download(spec.url, target, spec.sha256)
    return target


def download(url: str, target: Path, sha256: str) -> None:
    """Download to ``target`` through a ``.part`` file; verify the sha256 before it takes the name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    offline = (
        f"could not download {url}; download it by hand and put it at {target} "
        "(or give the file's path as the teacher checkpoint)"
    )
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {target.name}") as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as err:
        part.unlink(missing_ok=True)
        reason = getattr(err, "reason", err)
        raise DistillError(f"{offline} ({reason})") from None
    digest = sha256_file(part)
    if digest != sha256:
        part.unlink(missing_ok=True)
        raise DistillError(f"download of {url} has sha256 {digest}, expected {sha256}; it was deleted, try again")
    os.replace(part, target)
