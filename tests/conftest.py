"""Shared fixtures: a small random-initialised SAM of the real architecture (256 px input), generated
images and a teacher cache built from them, and a small SAM trained here on generated shapes (the frozen encoder
the instance heads learn on). Nothing is downloaded."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")
# One torch thread a test process: pyproject runs the suite on two xdist workers (two cores here), and a test's
# numbers must not depend on how many workers run it (a training test's result depends on the float reduction order).
TEST_THREADS = 1
torch.set_num_threads(TEST_THREADS)
# ultralytics' log handler keeps the sys.stdout of whoever imports it first: imported here, that is pytest's
# session-long capture, not one test's capture stream that closes when the test ends.
import ultralytics.utils  # noqa: E402,F401

SHARED_NWPU = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nwpu_vhr10"
TINY_SIZE = 256


@pytest.fixture(autouse=True)
def _same_start_for_every_test():
    """Every test starts with the same torch threads and random states, whichever worker runs it and whatever ran
    before it there: a call that changed them must not change the numbers of the tests after it."""
    torch.set_num_threads(TEST_THREADS)
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


@pytest.fixture(autouse=True)
def _offline_home(tmp_path_factory, monkeypatch):
    """Never touch the user's checkpoint cache or the network from a test."""
    monkeypatch.setenv("SAM_DISTILL_HOME", str(tmp_path_factory.getbasetemp() / "home"))
    monkeypatch.setenv("SAM_DISTILL_OFFLINE", "1")


def built_once(tmp_path_factory, name: str, build: Callable[[Path], dict]) -> tuple[Path, dict]:
    """pytest-xdist's recipe for an expensive session fixture: the first worker that asks builds it into a folder
    every worker of the run sees; the others wait for it and read what ``build(folder)`` returned (JSON)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    folder, result = root / name, root / f"{name}.json"
    with FileLock(root / f"{name}.lock"):
        if not result.exists():
            folder.mkdir(parents=True, exist_ok=True)
            result.write_text(json.dumps(build(folder)))
    return folder, json.loads(result.read_text())


@pytest.fixture(scope="session")
def tiny_teacher_checkpoint(tmp_path_factory) -> Path:
    """A vit_tiny SAM (SAM's ViT encoder, 4 blocks) at 256 px, saved as a plain SAM state dict."""
    from sam_distill.sam.teachers import load_teacher

    teacher = load_teacher("vit_tiny", random_init=True, image_size=TINY_SIZE, seed=0)
    path = tmp_path_factory.mktemp("teacher") / "vit_tiny.pth"
    torch.save(teacher.model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def convnet_sam_file(tmp_path_factory) -> Path:
    """A SAM around a timm ConvNet encoder (one that takes any input size) at 128 px, random weights, saved as our
    model.pt: what `--image-size` runs at another size."""
    from sam_distill.sam.build import sam_with_encoder
    from sam_distill.sam.model_file import save_model
    from sam_distill.students import create_student

    torch.manual_seed(0)
    model = sam_with_encoder(create_student("timm_test_efficientnet", image_size=128), 128)
    return save_model(model, tmp_path_factory.mktemp("convnet_sam") / "model.pt", "timm_test_efficientnet")


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
    """The tiny teacher (the same random weights in every worker: seed 0) exported once for the whole run."""
    from sam_distill.export.pipeline import export_model
    from sam_distill.export.registry import ExportOptions

    def build(out: Path) -> dict:
        lines: list[str] = []
        manifest = export_model(checkpoint, formats, out, ExportOptions(**options), log=lines.append)
        return {"manifest": manifest, "log": lines}

    return built_once(tmp_path_factory, "export_" + "_".join(formats), build)


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


SHAPES_SIZE = 128


@pytest.fixture(scope="session")
def shapes_sam(tmp_path_factory):
    """A SAM that knows something, made the way users make one (``recipe: finetune``'s objective: jittered boxes and
    clicks, SAM's focal : dice = 20 : 1): SAM's 4-block ViT at 128 px trained from random weights for 600 steps on
    four generated images with 1-3 large known instances each (about 2 minutes on one core, once a run). The
    finetune test checks what it learned; RSPrompter's heads and SAM-seg learn on its FROZEN encoder, as in the
    paper.
    Returns a namespace: path (its model.pt), annotations, images, before/after (ground-truth mIoU summaries),
    metrics (the training's metrics.csv rows)."""
    from types import SimpleNamespace

    from sam_distill.core.rundir import read_metrics
    from sam_distill.data.coco import CocoInstances, make_synthetic_coco
    from sam_distill.eval.miou import ground_truth_miou
    from sam_distill.methods.finetune.objective import FineTuneObjective, LossWeights, PromptableSam, PromptSampling
    from sam_distill.sam.build import build_sam
    from sam_distill.sam.model_file import save_model
    from sam_distill.train.loop import Schedule, train

    def build(folder: Path) -> dict:
        annotations = make_synthetic_coco(folder, 4, SHAPES_SIZE, seed=0, objects=(1, 3), radius_range=(0.15, 0.28))
        images = folder / "images"
        torch.manual_seed(0)
        model = PromptableSam(build_sam("vit_tiny", SHAPES_SIZE), "full")
        before = ground_truth_miou(model.sam, annotations, images, max_clicks=1, progress=False)["summary"]
        objective = FineTuneObjective(model, PromptSampling(masks_per_image=4, box_probability=0.5,
                                                            correction_rounds=0), LossWeights(20.0, 1.0), seed=0)
        schedule = Schedule(epochs=10_000, batch_size=2, grad_accum=1, lr=3e-4, min_lr=1.5e-5, weight_decay=0.0,
                            warmup_steps=10, checkpoint_every=10_000, log_every=50, max_steps=600, amp=False)
        train(objective, CocoInstances(annotations, images, SHAPES_SIZE, augment=True), schedule, folder / "run",
              log=lambda message: None)
        after = ground_truth_miou(model.sam, annotations, images, max_clicks=1, progress=False)["summary"]
        save_model(model.sam.eval(), folder / "model.pt", "vit_tiny")
        return {"annotations": str(annotations), "before": before, "after": after}

    folder, built = built_once(tmp_path_factory, "shapes_sam", build)
    return SimpleNamespace(path=folder / "model.pt", annotations=Path(built["annotations"]), images=folder / "images",
                           before=built["before"], after=built["after"],
                           metrics=read_metrics(folder / "run" / "metrics.csv"))


@pytest.fixture
def run_quickstart_small(tmp_path):
    """``distill run`` on a quickstart config made test-sized: the given data, one epoch, one step of the
    prompt-in-the-loop stage, fidelity with 2 points; ``teacher`` updates that section. Returns the run folder."""
    import yaml

    from sam_distill.cli import main

    def run(config_file: str, data: dict, teacher: dict | None = None) -> Path:
        config = yaml.safe_load((Path(__file__).resolve().parents[1] / config_file).read_text())
        config.update(run_dir=str(tmp_path / "run"), data=data)
        config["teacher"].update(teacher or {})
        config["train"].update(epochs=1, checkpoint_every=1)
        config["fidelity"] = {"points_per_image": 2}
        config["prompt_stage"] = {"enabled": True, "max_steps": 1, "batch_size": 1, "prompts_per_image": 2}
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        assert main(["run", str(path)]) == 0
        return tmp_path / "run"

    return run
