"""`distill export` and `distill bench` through the model-file table: a file that is not a model is one line for
both; each kind either writes INT8 / fp16 files with their parity or refuses the option in one line."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from sam_distill.cli import main
from sam_distill.methods.rcnn.model import RCNN_FORMAT
from sam_distill.methods.sam_cls.model import SAM_CLS_FORMAT

QUANTISED = {"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear"}


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("distill: error: "), err
    return err[0]


def _op_types(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def _has_fp16_weights(path) -> bool:
    return any(t.data_type == onnx.TensorProto.FLOAT16 for t in onnx.load(str(path)).graph.initializer)


# ---------------------------------------------------------------- files that are not models


def _not_models(folder):
    (folder / "notes.txt").write_text("a text file")
    (folder / "empty.pt").write_bytes(b"")
    (folder / "random.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    (folder / "config.json").write_text(json.dumps({"format": "sam-distill/model"}))
    return {"notes.txt": "files ending .txt are not model files", "empty.pt": "it is empty (0 bytes)",
            "random.pth": "not a readable PyTorch file", "config.json": "files ending .json are not model files"}


@pytest.mark.parametrize("command", ["bench", "export"])
def test_a_file_that_is_not_a_model_is_one_line(tmp_path, capsys, command):
    for name, reason in _not_models(tmp_path).items():
        path = tmp_path / name
        assert main([command, str(path)]) == 2
        line = _one_error_line(capsys)
        assert f"{path} is not a model file" in line and reason in line, line
    assert not list(tmp_path.glob("*-export"))  # nothing was written


# ---------------------------------------------------------------- --int8 / --fp16 per kind


@pytest.mark.parametrize("flag", ["--int8", "--fp16"])
@pytest.mark.parametrize("kind, make", [
    ("a SAM-det or SAM-seg model", lambda path: torch.save({"format": RCNN_FORMAT}, path)),
    ("a SAM-cls model", lambda path: torch.save({"format": SAM_CLS_FORMAT}, path)),
    ("an ONNX graph", lambda path: path.write_bytes(b"onnx")),
])
def test_kinds_without_exporters_refuse_in_one_line(tmp_path, capsys, flag, kind, make):
    path = tmp_path / ("graph.onnx" if kind.startswith("an ONNX") else "model.pt")
    make(path)
    assert main(["export", str(path), flag, "--out", str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys)
    assert f"{kind} " in line and "has no exporters; `distill export` takes: " in line, line
    assert all(what in line for what in ("a SAM model", "an RSPrompter model", "a YOLO-seg student"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--format", "coreml", "--int8"], "--int8 does not apply to a SAM model"),
    (["--format", "engine", "--calibration", "x"], "--calibration is for static INT8 files; add --int8"),
    (["--int8-ops", "all"], "--int8-ops all chooses what --int8 quantises; add --int8"),
])
def test_sam_options_that_cannot_apply_are_refused_before_any_work(tiny_teacher_checkpoint, tmp_path, capsys, args,
                                                                   message):
    assert main(["export", str(tiny_teacher_checkpoint), "--out", str(tmp_path / "out"), *args]) == 2
    line = _one_error_line(capsys)
    assert message in line, line
    if "coreml" in args:  # the line names what each format of the kind applies
        assert ("onnx: --int8 --fp16 --static-shapes --calibration; ort: --int8 --fp16; tflite: --int8 --fp16; "
                "pte: --int8; coreml: --fp16") in line
    assert not (tmp_path / "out").exists()


def test_an_option_some_formats_skip_is_named(tiny_teacher_checkpoint, tmp_path, capsys):
    """SAM --int8 and --fp16 files with parity are covered in test_export_onnx; here: an option applied by one chosen
    format and not another is said, and recorded in the manifest."""
    out = tmp_path / "out"
    assert main(["export", str(tiny_teacher_checkpoint), "--format", "onnx", "engine", "--int8", "--parity-count", "1",
                 "--out", str(out)]) == 0
    said = "--int8 applies to onnx only; the engine files are written without it"
    assert said in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["not_applied"] == [said]
    assert manifest["source"]["kind"] == "sam" and manifest["source"]["model"] == "sam_vit_tiny"
    assert {f["file"] for f in manifest["files"]} == {"encoder.onnx", "decoder.onnx", "encoder.int8-dynamic.onnx",
                                                      "decoder.int8-dynamic.onnx", "decoder.static.onnx"}


def test_prompter_int8_and_fp16_chains_with_parity(tmp_path):
    from sam_distill.methods.prompter.model import build_prompter, save_prompter
    from sam_distill.methods.prompter.onnx import run_onnx

    torch.manual_seed(0)
    model = build_prompter({"encoder": "vit_tiny", "image_size": 128, "head": "query", "num_classes": 3, "width": 32,
                            "head_kwargs": {"num_queries": 4, "decoder_layers": 2, "pixel_decoder_layers": 1, "heads": 4}})
    path = save_prompter(model, tmp_path / "prompter.pt", [{"id": 1, "name": "a"}])
    out = tmp_path / "onnx"
    assert main(["export", str(path), "--int8", "--fp16", "--out", str(out)]) == 0
    parity = json.loads((out / "parity.json").read_text())["files"]
    fp32, int8, fp16 = parity["prompter"], parity["prompter.int8-dynamic"], parity["prompter.fp16"]
    assert fp32["within_tolerance"] and fp32["max_abs_logit_diff"] < 1e-4
    for figures in (int8, fp16):
        assert figures["detections_onnx"] == figures["detections_torch"] == 4
        assert 0.0 <= figures["mask_iou_min"] <= 1.0 and "within_tolerance" not in figures
        # the verdict: every class kept and at most 1 point of mask IoU lost against fp32
        kept = figures["class_agreement"] >= fp32["class_agreement"] and fp32["mask_iou_mean"] - figures["mask_iou_mean"] <= 0.01
        assert figures["verdict"] == ("pass" if kept else "fail") and ("verdict_reason" in figures) == (not kept)
        assert figures["max_abs_logit_diff"] > fp32["max_abs_logit_diff"]  # the precision costs something, reported
    assert QUANTISED & _op_types(out / "int8-dynamic" / "encoder.onnx")
    assert _has_fp16_weights(out / "fp16" / "encoder.onnx") and not _has_fp16_weights(out / "fp16" / "head.onnx")
    manifest = json.loads((out / "manifest.json").read_text())
    precision = {f["file"]: f["precision"] for f in manifest["files"]}
    assert precision["int8-dynamic/decoder.onnx"] == "int8-dynamic" and precision["fp16/head.onnx"] == "fp32"
    chain = run_onnx(out / "int8-dynamic", np.zeros((1, 3, 128, 128), np.float32))  # each folder runs as a chain
    assert chain["low_res_masks"].shape == (4, 32, 32)


@pytest.fixture(scope="module")
def yolo_file(tmp_path_factory):
    """An untrained YOLOv8n-seg in ultralytics' own .pt format."""
    from sam_distill.methods.fastsam.recipe import offline

    offline()
    from ultralytics import YOLO

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("yolo") / "yolo_seg.pt"
    YOLO("yolov8n-seg.yaml", task="segment").save(str(path))
    return path


def test_yolo_int8_and_fp16_onnx_with_parity(yolo_file, tmp_path):
    out = tmp_path / "out"
    assert main(["export", str(yolo_file), "--int8", "--fp16", "--out", str(out)]) == 0
    parity = json.loads((out / "parity.json").read_text())["files"]
    fp32, fp16, int8 = (parity[f"yolo_seg{suffix}.onnx"] for suffix in ("", ".fp16", ".int8-dynamic"))
    assert fp32["within_tolerance"] and fp32["output_max_abs"] < 1e-2
    prototypes = "output1"  # 1x32xS/4xS/4 mask prototypes: the precision's cost shows there, and is reported
    assert fp32["max_abs_per_output"][prototypes] < fp16["max_abs_per_output"][prototypes]
    assert fp32["max_abs_per_output"][prototypes] < int8["max_abs_per_output"][prototypes]
    assert fp16["output_max_abs"] >= fp16["max_abs_per_output"][prototypes]
    assert "ConvInteger" in _op_types(out / "yolo_seg.int8-dynamic.onnx")  # every Conv quantised by default
    assert _has_fp16_weights(out / "yolo_seg.fp16.onnx")
    assert {f["precision"] for f in json.loads((out / "manifest.json").read_text())["files"]} == {
        "fp32", "fp16", "int8-dynamic"}


def test_yolo_refuses_what_does_not_apply(yolo_file, tmp_path, capsys):
    assert main(["export", str(yolo_file), "--format", "coreml", "--fp16", "--out", str(tmp_path / "a")]) == 2
    line = _one_error_line(capsys)
    assert "--fp16 does not apply to a YOLO-seg student (an ultralytics .pt) exported to coreml" in line
    assert "onnx: --int8 --fp16" in line
    assert main(["export", str(yolo_file), "--int8", "--int8-ops", "matmul", "--out", str(tmp_path / "b")]) == 2
    line = _one_error_line(capsys)
    assert "--int8-ops matmul quantises nothing in yolo_seg.onnx (it has no MatMul operators); use --int8-ops all" in line
    assert not (tmp_path / "b" / "yolo_seg.int8-dynamic.onnx").exists()
