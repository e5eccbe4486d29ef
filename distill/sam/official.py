"""The official SAM checkpoints by name (SAM, MobileSAM, SAM 2, SAM 2.1 and HQ-SAM): downloaded once into the cache,
checked against the published digest, through a ``.part`` file; offline, one sentence names the URL and where to
put the file."""
from __future__ import annotations

import hashlib
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
    """``arch`` names the architecture the file must hold; the digest is sha256 where the authors or their hub
    publish one, else the MD5 that public download tools check the file against (SAM 2's release lists none)."""

    arch: str
    url: str
    sha256: str = ""
    md5: str = ""

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

# SAM 2 (July 2024) and SAM 2.1 (September 2024) image models, through the ``sam2`` package.
_SAM2_RELEASES = {"sam2": "https://dl.fbaipublicfiles.com/segment_anything_2/072824/",
                  "sam2.1": "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"}
for _release, _size, _short, _md5 in (
    ("sam2", "tiny", "t", "99eacccce4ada0b35153d4fd7af05297"),
    ("sam2", "small", "s", "7f320dbeb497330a2472da5a16c7324d"),
    ("sam2", "base_plus", "b+", "09dc5a3d7719f64aaea1d37341ef26f2"),
    ("sam2", "large", "l", "08083462423be3260cd6a5eef94dc01c"),
    ("sam2.1", "tiny", "t", "6aa6761c9da74fbaa74b4c790a0a2007"),
    ("sam2.1", "small", "s", "51713b3d1994696d27f35f9c6de6f5ef"),
    ("sam2.1", "base_plus", "b+", "ec7bd7d23d280d5e3cfa45984c02eda5"),
    ("sam2.1", "large", "l", "2b30654b6112c42a115563c638d238d9"),
):
    TEACHERS.register(f"{_release}_hiera_{_size}")(OfficialCheckpoint(
        f"{_release}_hiera_{_short}", f"{_SAM2_RELEASES[_release]}{_release}_hiera_{_size}.pt", md5=_md5))


# HQ-SAM (SysCV), through the segment-anything-hq package: its ViT-B/L/H checkpoints on the authors' hub.
for _size, _md5 in (("b", "c6b8953247bcfdc8bb8ef91e36a6cacc"), ("l", "08947267966e4264fb39523eccc33f86"),
                    ("h", "3560f6b6a5a6edacd814a1325c39640a")):
    TEACHERS.register(f"sam_hq_vit_{_size}")(OfficialCheckpoint(
        f"hq_vit_{_size}", f"https://huggingface.co/lkeab/hq-sam/resolve/main/sam_hq_vit_{_size}.pth", md5=_md5))


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
    download(spec.url, target, spec.sha256, spec.md5)
    return target


def download(url: str, target: Path, sha256: str, md5: str = "") -> None:
    """Download to ``target`` through a ``.part`` file; verify the digest before it takes the name."""
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
    algorithm, expected = ("sha256", sha256) if sha256 else ("md5", md5)
    digest = sha256_file(part) if algorithm == "sha256" else md5_file(part)
    if digest != expected:
        part.unlink(missing_ok=True)
        raise DistillError(f"download of {url} has {algorithm} {digest}, expected {expected}; it was deleted, "
                           "try again")
    os.replace(part, target)


def md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
