"""Shared fixtures: a small random-initialised SAM of the real architecture (256 px input), generated
images and a teacher cache built from them. Nothing is downloaded."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")
torch.set_num_threads(2)
# ultralytics' log handler keeps the sys.stdout of whoever imports it first: imported here, that is pytest's
# session-long capture, not one test's capture stream that closes when the test ends.
import ultralytics.utils  # noqa: E402,F401

SHARED_NWPU = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nwpu_vhr10"
TINY_SIZE = 256


@pytest.fixture(autouse=True)
def _same_threads_for_every_test():
    """Every test starts with 2 torch threads: a call that changed them must not change the numbers of the tests
    after it (a training test's result depends on the float reduction order)."""
    torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _offline_home(tmp_path_factory, monkeypatch):
    """Never touch the user's checkpoint cache or the network from a test."""
    monkeypatch.setenv("SAM_DISTILL_HOME", str(tmp_path_factory.getbasetemp() / "home"))
    monkeypatch.setenv("SAM_DISTILL_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_teacher_checkpoint(tmp_path_factory) -> Path:
    """A vit_tiny SAM (SAM's ViT encoder, 4 blocks) at 256 px, saved as a plain SAM state dict."""
    from sam_distill.sam.teachers import load_teacher

    teacher = load_teacher("vit_tiny", random_init=True, image_size=TINY_SIZE, seed=0)
    path = tmp_path_factory.mktemp("teacher") / "vit_tiny.pth"
    torch.save(teacher.model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_teacher(tiny_teacher_checkpoint):
    from sam_distill.sam.teachers import load_teacher

    return load_teacher("vit_tiny", tiny_teacher_checkpoint)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    from sam_distill.core.images import make_synthetic_images

    folder = tmp_path_factory.mktemp("images")
    make_synthetic_images(folder, 6, size=160, seed=1)
    return folder


@pytest.fixture(scope="session")
def tiny_cache(tiny_teacher, image_folder, tmp_path_factory) -> Path:
    from sam_distill.core.device import DistContext
    from sam_distill.data.cache import build_cache

    cache_dir = tmp_path_factory.mktemp("cache")
    build_cache(tiny_teacher, image_folder, cache_dir, shard_size=4, context=DistContext(), log=lambda m: None)
    return cache_dir


def _export_once(checkpoint: Path, tmp_path_factory, formats: list[str], **options) -> tuple[Path, dict]:
    from sam_distill.export.pipeline import export_model
    from sam_distill.export.registry import ExportOptions

    out = tmp_path_factory.mktemp("_".join(formats))
    lines: list[str] = []
    manifest = export_model(checkpoint, formats, out, ExportOptions(**options), log=lines.append)
    return out, {"manifest": manifest, "log": lines}


@pytest.fixture(scope="session")
def tiny_onnx_export(tiny_teacher_checkpoint, tmp_path_factory):
    """The tiny teacher as ONNX and ONNX Runtime Mobile files with fp16 and INT8 copies, exported once for the export
    tests and the docs' snippets: (folder, {"manifest", "log"})."""
    return _export_once(tiny_teacher_checkpoint, tmp_path_factory, ["onnx", "ort"], int8=True, fp16=True,
                        parity_count=2)


@pytest.fixture(scope="session")
def tiny_pte_export(tiny_teacher_checkpoint, tmp_path_factory):
    """The tiny teacher as an ExecuTorch pair (about a minute and a half to lower here), exported once."""
    pytest.importorskip("executorch.runtime")
    return _export_once(tiny_teacher_checkpoint, tmp_path_factory, ["pte"], parity_count=1)


@pytest.fixture(scope="session")
def tiny_tflite_export(tiny_teacher_checkpoint, tmp_path_factory):
    """The tiny teacher as a LiteRT pair with fp16 copies and decoder signatures for 1–4 points."""
    pytest.importorskip("litert_torch", reason="LiteRT export needs the litert extra (not in `all`: docs/export.md)")
    pytest.importorskip("ai_edge_litert")
    return _export_once(tiny_teacher_checkpoint, tmp_path_factory, ["tflite"], fp16=True, max_points=4,
                        parity_count=1)


needs_nwpu = pytest.mark.skipif(not SHARED_NWPU.exists(), reason="../shared/data/nwpu_vhr10 is not present")
