"""Phone and Jetson runtimes: ONNX Runtime Mobile (.ort + reduced operator config), ExecuTorch (.pte, XNNPACK) and
LiteRT (.tflite) pairs run in their own runtimes and match PyTorch's SamPredictor; every reduced-precision file
carries a verdict; the low-resolution post-processing equals SAM's; TensorRT's network flag per version."""
from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from sam_distill.core.errors import DistillError
from sam_distill.core.images import find_images, load_rgb
from sam_distill.export.parity import reduced_precision_failures, verdict_failures
from sam_distill.export.pipeline import export_model
from sam_distill.export.registry import ExportOptions, Tolerance
from sam_distill.export.runtime import postprocess_low_res


def _mask_iou(a, b) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _prompts(h: int, w: int) -> list[dict]:
    return [dict(point_coords=np.array([[w * 0.3, h * 0.6]]), point_labels=np.array([1]), multimask_output=True),
            dict(point_coords=np.array([[w * 0.5, h * 0.5], [w * 0.1, h * 0.2], [w * 0.8, h * 0.7]]),
                 point_labels=np.array([1, 0, 1]), multimask_output=False),
            dict(box=np.array([w * 0.1, h * 0.2, w * 0.7, h * 0.9]), multimask_output=False)]


def _matches_sam_predictor(runtime, sam, image, prompts) -> None:
    predictor = SamPredictor(sam)
    runtime.set_image(image)
    with torch.inference_mode():
        predictor.set_image(image)
    np.testing.assert_allclose(runtime.embeddings, predictor.features.numpy(), atol=1e-4)
    for prompt in prompts:
        with torch.inference_mode():
            torch_masks, torch_iou, _ = predictor.predict(**prompt)
        masks, iou, low = runtime.predict(**prompt)
        assert masks.shape == torch_masks.shape and low.shape[-1] == sam.image_encoder.img_size // 4
        assert all(_mask_iou(ours, theirs) >= 0.99 for ours, theirs in zip(masks, torch_masks))
        np.testing.assert_allclose(iou, torch_iou, atol=1e-3)


def test_low_res_postprocessing_is_sams(tiny_teacher):
    """The numpy upsampling that phone runtimes' apps use computes Sam.postprocess_masks, for wide and tall images."""
    generator = torch.Generator().manual_seed(0)
    low_res = torch.randn(1, 4, 64, 64, generator=generator)
    for original in ((150, 230), (230, 150), (256, 256), (600, 900)):
        input_size = tuple(int(s * 256 / max(original) + 0.5) for s in original)
        expected = tiny_teacher.model.postprocess_masks(low_res, input_size, original)[0].numpy()
        got = postprocess_low_res(low_res[0].numpy(), original, 256)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.fixture(scope="module")
def ort_export(tiny_onnx_export):
    out, exported = tiny_onnx_export
    manifest = dict(exported["manifest"], files=[f for f in exported["manifest"]["files"] if f["format"] == "ort"])
    return out, manifest, exported["log"]


def test_ort_files_run_in_onnxruntime_with_their_operator_config(ort_export, tiny_teacher, image_folder):
    from sam_distill.export.runtime import SamOnnxPredictor

    out, manifest, _ = ort_export
    assert {f["file"] for f in manifest["files"]} == {f"{role}{suffix}.ort" for role in ("encoder", "decoder")
                                                      for suffix in ("", ".fp16", ".int8-dynamic")}
    assert not list(out.glob("*.pre.onnx")) and len(list(out.glob("*.onnx"))) == 6  # ONNX's own files only
    config = (out / "required_operators.config").read_text()
    operators = {op for line in config.splitlines() if line.startswith("ai.onnx;")
                 for op in line.split(";")[2].split(",")}
    assert {"Conv", "MatMul", "Resize"} <= operators  # the encoder's and the decoder's operators, all files together
    assert manifest["ort_mobile"]["operator_config"] == "required_operators.config"
    image = load_rgb(find_images(image_folder)[0])
    h, w = image.shape[:2]
    _matches_sam_predictor(SamOnnxPredictor(out / "encoder.ort", out / "decoder.ort"), tiny_teacher.model, image,
                           _prompts(h, w))


def test_every_reduced_precision_file_has_a_verdict(ort_export):
    out, manifest, lines = ort_export
    parity = json.loads((out / "parity.json").read_text())
    tolerance = parity["tolerance"]["max_mask_iou_loss"]
    assert tolerance == 0.01
    fp32 = parity["files"]["encoder.ort"]
    assert fp32["within_tolerance"] and "verdict" not in fp32
    for entry in manifest["files"]:
        figures = parity["files"][entry["file"]]
        if entry["precision"] == "fp32":
            assert "verdict" not in entry
            continue
        lost = max(fp32[f"{k}_mask_iou"] - figures[f"{k}_mask_iou"] for k in ("point", "box"))  # the fp32 pair's
        assert entry["verdict"] == figures["verdict"] == ("pass" if lost <= tolerance else "fail")
        assert ("verdict_reason" in figures) == (figures["verdict"] == "fail")
    failed = [name for name, figures in parity["files"].items() if figures.get("verdict") == "fail"]
    said = [line for line in lines if "do not ship them" in line]
    assert bool(failed) == bool(said) and all(name in said[0] for name in failed)


def test_verdict_rule():
    fp32 = {"point_mask_iou": 0.998, "box_mask_iou": 1.0}
    tolerance = Tolerance(max_mask_iou_loss=0.01)
    assert reduced_precision_failures({"point_mask_iou": 0.990, "box_mask_iou": 0.995}, fp32, tolerance) == []
    problems = reduced_precision_failures({"point_mask_iou": 0.990, "box_mask_iou": 0.97}, fp32, tolerance)
    assert problems == ["box mask IoU 0.970 against fp32's 1.000: 0.030 lost > 0.01"]
    files = {"encoder.fp16.tflite": {"verdict": "fail", "verdict_reason": problems[0]},
             "decoder.fp16.tflite": {"verdict": "pass"}, "encoder.tflite": {"within_tolerance": True}}
    assert verdict_failures(files) == [f"encoder.fp16.tflite ({problems[0]})"]


def test_executorch_pair_runs_in_executorch_like_sam_predictor(tiny_pte_export, tiny_teacher, image_folder):
    from sam_distill.export.executorch import MAX_POINTS, SamExecuTorchPredictor

    tmp_path, exported = tiny_pte_export
    manifest = exported["manifest"]
    assert [(f["file"], f["format"], f["precision"]) for f in manifest["files"]] == [
        ("encoder.pte", "pte", "fp32"), ("decoder.pte", "pte", "fp32")]
    decoder = manifest["files"][1]
    assert [i["shape"] for i in decoder["inputs"][1:3]] == [[1, "num_points", 2], [1, "num_points"]]
    parity = json.loads((tmp_path / "parity.json").read_text())["files"]
    assert parity["encoder.pte"]["within_tolerance"] and parity["encoder.pte"]["embedding_max_abs"] < 1e-3
    image = load_rgb(find_images(image_folder)[1])
    h, w = image.shape[:2]
    runtime = SamExecuTorchPredictor(tmp_path / "encoder.pte", tmp_path / "decoder.pte")
    assert runtime.image_size == 256 and runtime.fixed_points is None and MAX_POINTS >= 16
    _matches_sam_predictor(runtime, tiny_teacher.model, image, _prompts(h, w))  # 2, 4 and 2 points: one file


def test_litert_pair_runs_in_the_litert_interpreter(tiny_tflite_export, tiny_teacher, image_folder):
    from sam_distill.export.runtime import SamLiteRTPredictor

    tmp_path, exported = tiny_tflite_export
    manifest = exported["manifest"]
    entries = {f["file"]: f for f in manifest["files"]}
    assert set(entries) == {"encoder.tflite", "decoder.tflite", "encoder.fp16.tflite", "decoder.fp16.tflite"}
    decoder = entries["decoder.tflite"]
    assert [(i["name"], i["shape"]) for i in decoder["inputs"][1:3]] == [("point_coords", [1, "num_points", 2]),
                                                                         ("point_labels", [1, "num_points"])]
    assert [o["name"] for o in decoder["outputs"]] == ["iou_predictions", "low_res_masks"]
    assert entries["encoder.fp16.tflite"]["verdict"] in ("pass", "fail")
    assert (tmp_path / "encoder.fp16.tflite").stat().st_size < 0.6 * (tmp_path / "encoder.tflite").stat().st_size
    parity = json.loads((tmp_path / "parity.json").read_text())["files"]
    assert parity["encoder.tflite"]["within_tolerance"] and parity["decoder.tflite"]["within_tolerance"]
    image = load_rgb(find_images(image_folder)[2])
    h, w = image.shape[:2]
    runtime = SamLiteRTPredictor(tmp_path / "encoder.tflite", tmp_path / "decoder.tflite")
    assert runtime.max_points == 4 and runtime.fixed_points is None
    _matches_sam_predictor(runtime, tiny_teacher.model, image, _prompts(h, w))  # signatures points_2 and points_4
    with pytest.raises(ValueError, match="takes up to 4 points .* has 5: export with a larger --max-points"):
        runtime.predict(point_coords=np.ones((4, 2)), point_labels=np.ones(4))


def test_a_missing_runtime_names_its_extra(tiny_teacher_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    monkeypatch.setitem(sys.modules, "executorch.runtime", None)
    with pytest.raises(DistillError, match=r'pip install "sam-distill\[litert\]"'):
        export_model(tiny_teacher_checkpoint, ["tflite"], tmp_path, ExportOptions(), log=lambda m: None)
    with pytest.raises(DistillError, match=r'pip install "sam-distill\[executorch\]"'):
        export_model(tiny_teacher_checkpoint, ["pte"], tmp_path, ExportOptions(), log=lambda m: None)


@pytest.mark.parametrize("version, has_flag, expected", [("8.6.1", True, 1), ("10.3.0", True, 0), ("10.7.0", False, 0)])
def test_tensorrt_network_is_explicit_batch_where_the_version_needs_it(version, has_flag, expected):
    from sam_distill.export.tensorrt import network_flags

    flags = types.SimpleNamespace(**({"EXPLICIT_BATCH": 0} if has_flag else {}))
    fake = types.SimpleNamespace(__version__=version, NetworkDefinitionCreationFlag=flags)
    assert network_flags(fake) == expected
