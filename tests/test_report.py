"""distill bench / distill report: statistics, mIoU, COCO AP, report files, bad input, browser check."""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sam_distill.cli import main
from sam_distill.core.errors import DistillError
from sam_distill.eval.bench import (
    BenchModel,
    bench_many,
    bench_model,
    latency_stats,
    load_bench_model,
    measure_peak_memory_here,
    peak_memory,
    time_runs,
)
from sam_distill.eval.fidelity import mask_iou
from sam_distill.eval.reference import reference_rows
from sam_distill.eval.report import build_report, heavy_vs_light, mask_ap, pareto_front

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- statistics and harness


def test_latency_stats_on_given_samples():
    samples = [0.010, 0.020, 0.030, 0.040, 0.050, 0.060, 0.070, 0.080, 0.090, 0.100]
    stats = latency_stats(samples)
    assert stats["runs"] == 10
    assert stats["p50_ms"] == pytest.approx(55.0)
    assert stats["p90_ms"] == pytest.approx(91.0)  # linear interpolation between 90 and 100 ms
    assert stats["mean_ms"] == pytest.approx(55.0)
    with pytest.raises(ValueError):
        latency_stats([])


def test_time_runs_counts_warmup_and_orders_by_work():
    calls = []
    samples = time_runs(lambda: calls.append(1), runs=4, warmup=3)
    assert len(calls) == 7 and len(samples) == 4 and all(s >= 0 for s in samples)
    # More work takes longer: compare medians, not wall-clock thresholds.
    small = latency_stats(time_runs(lambda: sum(range(1_000)), 5, 1))["p50_ms"]
    large = latency_stats(time_runs(lambda: sum(range(300_000)), 5, 1))["p50_ms"]
    assert large > small


def test_bench_row_of_our_model_and_random_init_teacher(tiny_teacher_checkpoint):
    teacher = load_bench_model(str(tiny_teacher_checkpoint))
    assert (teacher.kind, teacher.role) == ("sam", "teacher")
    row = bench_model(teacher, runs=2, warmup=1)
    assert row["params"] == sum(p.numel() for p in teacher.sam.parameters())
    for phase in ("encoder", "decoder", "total"):
        assert row[f"{phase}_p90_ms"] >= row[f"{phase}_p50_ms"] > 0
    # ViT encoder FLOPs dominate the decoder's; both are counted, as is the file size.
    assert row["encoder_gflops"] > row["decoder_gflops"] > 0
    assert row["gflops"] == pytest.approx(row["encoder_gflops"] + row["decoder_gflops"])
    assert row["file_mb"] == pytest.approx(tiny_teacher_checkpoint.stat().st_size / 2**20)
    assert "RSS" in row["peak_mem_method"] and "fresh process" in row["peak_mem_method"]
    assert row["peak_mem_mb"] > row["params"] * 4 / 2**20  # the weights are in the figure (fp32: 4 bytes each)
    assert row["total_method"].startswith("derived")

    arch = load_bench_model("vit_tiny", random_init=True, image_size=256)
    assert arch.kind == "random-init" and "RANDOM" in arch.notes[0]
    assert arch.params == teacher.params


class Counted:
    """A phase that counts its calls and takes the time it is given."""

    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1


def _fake_model(encoder=None, decoder=None) -> BenchModel:
    return BenchModel(name="fake", kind="fake", format="onnx-fp32", role="student", path=None, params=1, image_size=8,
                      encoder=encoder, decoder=decoder)


def test_total_is_derived_run_by_run_from_the_phases(monkeypatch):
    timed = {"encoder": [0.010, 0.030, 0.020], "decoder": [0.005, 0.001, 0.003]}
    encoder, decoder = Counted(), Counted()
    phase_of = {id(encoder): "encoder", id(decoder): "decoder"}
    monkeypatch.setattr("sam_distill.eval.bench.time_runs", lambda fn, runs, warmup, device="cpu": timed[phase_of[id(fn)]])
    row = bench_model(_fake_model(encoder, decoder), runs=3, warmup=0, memory=False)
    # runs summed index by index: 15, 31, 23 ms -> p50 23 ms (not 20 + 3 from the two medians, nor a timed third pass)
    assert row["total_p50_ms"] == pytest.approx(23.0) and row["total_p90_ms"] == pytest.approx(29.4)
    assert row["encoder_p50_ms"] == pytest.approx(20.0) and row["decoder_p50_ms"] == pytest.approx(3.0)
    assert "summed" in row["total_method"] and encoder.calls == decoder.calls == 0  # nothing ran beyond time_runs


def test_phases_run_warmup_plus_runs_times_and_can_be_chosen():
    encoder, decoder = Counted(), Counted()
    row = bench_model(_fake_model(encoder, decoder), runs=4, warmup=2, memory=False)
    assert (encoder.calls, decoder.calls) == (6, 6)
    assert row["total_p50_ms"] > 0
    encoder, decoder = Counted(), Counted()
    row = bench_model(_fake_model(encoder, decoder), runs=4, warmup=2, phases=("encoder",), memory=False)
    assert (encoder.calls, decoder.calls) == (6, 0)
    assert "decoder_p50_ms" not in row and "total_p50_ms" not in row  # a part of the model has no total
    only = bench_model(_fake_model(encoder=Counted()), runs=1, warmup=0, phases=("encoder", "decoder"), memory=False)
    assert "no decoder phase in this kind; not timed" in only["notes"] and "only one" in only["total_method"]


def test_a_sam_bench_runs_the_encoder_once_per_timed_call(tiny_teacher_checkpoint, monkeypatch, capsys):
    """``distill bench`` on a SAM: warm-up (FLOPs counted in the first) + runs encoder passes, and the memory probe one
    more (run here in-process so the pass can be counted; `distill bench` runs it in a fresh process)."""
    from segment_anything.modeling.image_encoder import ImageEncoderViT

    passes = []
    forward = ImageEncoderViT.forward
    monkeypatch.setattr(ImageEncoderViT, "forward", lambda self, x: passes.append(1) or forward(self, x))
    assert main(["bench", str(tiny_teacher_checkpoint), "--runs", "3", "--warmup", "1", "--no-memory"]) == 0
    assert len(passes) == 4
    assert "total: derived: encoder + decoder" in capsys.readouterr().out
    passes.clear()
    measure_peak_memory_here(str(tiny_teacher_checkpoint), False, 256, ["encoder", "decoder"], "cpu", 1)
    assert len(passes) == 1
    passes.clear()
    assert main(["bench", str(tiny_teacher_checkpoint), "--runs", "3", "--warmup", "1", "--no-memory",
                 "--phases", "decoder"]) == 0
    assert passes == []  # SAM's decoder is timed on a given embedding: no encoder pass at all
    assert main(["bench", str(tiny_teacher_checkpoint), "--phases", "encoder,mask"]) == 2
    assert "--phases 'encoder,mask': give one or both of encoder, decoder" in capsys.readouterr().err
    assert main(["bench", str(tiny_teacher_checkpoint), "--teacher", "heavy.pt"]) == 2
    assert "--teacher heavy.pt: not among the models to bench; name it there too" in capsys.readouterr().err


def test_peak_memory_holds_the_weights_of_each_model():
    """Two architectures in fresh processes: each figure is at least its fp32 weights, and the 14x larger model's
    figure is larger by at least most of the difference in weights."""
    from sam_distill.sam.build import build_sam

    figures = {}
    for arch in ("vit_tiny", "vit_b"):
        weights_mb = sum(p.numel() for p in build_sam(arch, 256).parameters()) * 4 / 2**20
        stub = _fake_model()
        stub.spec, stub.random_init, stub.image_size = arch, True, 256
        peak, method = peak_memory(stub, ["encoder", "decoder"])
        assert peak > weights_mb, (arch, peak, weights_mb, method)
        figures[arch] = (peak, weights_mb)
    (small, small_weights), (large, large_weights) = figures["vit_tiny"], figures["vit_b"]
    assert large - small > 0.8 * (large_weights - small_weights)
    assert peak_memory(_fake_model(Counted()), ["encoder"])[0] is None  # nothing to rebuild in a fresh process


def test_model_pt_and_its_mobilesam_copy_are_one_row(tmp_path, tiny_teacher, tiny_teacher_checkpoint):
    from sam_distill.core.model_files import same_weights
    from sam_distill.sam.model_file import assemble, save_mobilesam_layout, save_model
    from sam_distill.students import create_student

    torch.manual_seed(0)
    sam = assemble(create_student("tinyvit_5m", image_size=256), tiny_teacher.model)
    ours = save_model(sam, tmp_path / "model" / "model.pt", "tinyvit_5m")
    copy = save_mobilesam_layout(sam, tmp_path / "model" / "mobile_sam.pt")
    assert same_weights(ours, copy) and not same_weights(ours, tiny_teacher_checkpoint)
    with torch.no_grad():
        next(iter(sam.parameters())).add_(1e-3)
    assert not same_weights(ours, save_mobilesam_layout(sam, tmp_path / "changed.pt"))  # same names, other values

    lines = []
    result = bench_many([str(tiny_teacher_checkpoint), str(ours), str(copy)], runs=1, warmup=0, memory=False,
                        log=lines.append)
    assert [r["path"] for r in result["rows"]] == [str(tiny_teacher_checkpoint), str(ours)]
    assert result["rows"][1]["same_weights"] == [str(copy)]
    assert "mobile_sam.pt holds the same weights (another layout); not benched again" in result["rows"][1]["notes"]
    assert any("one row" in line for line in lines)

    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "bench.json").write_text(json.dumps(result))
    (reports / "metrics_mobile.json").write_text(json.dumps({"model": "mobile_sam", "metrics": {"mask_AP": 12.5}}))
    results = build_report([tmp_path], reports, log=lambda m: None)
    rows = results["rows"]
    assert len(rows) == 2 and rows[1]["mask_AP"] == 12.5  # accuracy named after the copy lands on its row
    assert "| tinyvit_5m (model.pt) (same weights: mobile_sam.pt) | sam-distill |" in (reports / "report.md").read_text()
    assert "total p50/p90: derived: encoder + decoder of the same run index, summed (not timed again)" in results["notes"]

    # a SAM trained here and saved as model.pt is a student unless `--teacher` names it
    out = tmp_path / "as_teacher.json"
    assert main(["bench", str(ours), "--teacher", str(ours), "--runs", "1", "--warmup", "0", "--no-memory",
                 "--phases", "decoder", "--out", str(out)]) == 0
    assert [r["role"] for r in json.loads(out.read_text())["rows"]] == ["teacher"]


def test_onnx_encoder_is_detected_and_timed(tmp_path, tiny_teacher):
    path = tmp_path / "encoder.onnx"
    torch.onnx.export(tiny_teacher.model.image_encoder, torch.randn(1, 3, 256, 256), str(path),
                      input_names=["image"], output_names=["embedding"], dynamo=False)
    model = load_bench_model(str(path), threads=1, image_size=256)
    assert (model.kind, model.format) == ("onnx-encoder", "onnx-fp32")
    assert model.params == pytest.approx(sum(p.numel() for p in tiny_teacher.model.image_encoder.parameters()), rel=0.02)
    row = bench_model(model, runs=2, warmup=1)
    assert row["encoder_p50_ms"] > 0 and "decoder_p50_ms" not in row and "gflops" not in row
    from sam_distill.export.onnx_export import to_fp16

    half = load_bench_model(str(to_fp16(path, tmp_path / "encoder.fp16.onnx")), threads=1, image_size=256)
    assert (half.kind, half.format) == ("onnx-encoder", "onnx-fp16")  # not labelled fp32 in the table


def test_unknown_kinds_become_one_skipped_line(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    lines = []
    result = bench_many([str(text), str(junk), str(tmp_path / "missing.pt")], runs=1, warmup=0, log=lines.append)
    assert result["rows"] == [] and len(result["skipped"]) == 3
    assert "notes.txt is not a model file" in result["skipped"][0]["reason"]
    assert "files ending .txt are not model files" in result["skipped"][0]["reason"]
    assert "junk.pt" in result["skipped"][1]["reason"] and "not a readable PyTorch file" in result["skipped"][1]["reason"]
    assert "does not exist" in result["skipped"][2]["reason"]
    assert all("\n" not in line for line in lines)


# ---------------------------------------------------------------- accuracy figures


def test_mask_iou_hand_checked():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :2] = True  # 4 pixels
    b[:2, :3] = True  # 6 pixels, 4 shared
    assert mask_iou(a, b) == pytest.approx(4 / 6)
    assert mask_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _tiny_coco(tmp_path: Path) -> tuple[Path, list[dict]]:
    """Two 10x10 square objects; one detection is exact, the other covers 63 of its object's 100 pixels."""
    h = w = 20
    gt_a = np.zeros((h, w), bool)
    gt_a[0:10, 0:10] = True
    gt_b = np.zeros((h, w), bool)
    gt_b[10:20, 10:20] = True
    partial = np.zeros((h, w), bool)
    partial[11:20, 10:17] = True  # 9 x 7 = 63 pixels, all inside gt_b: IoU 0.63
    gt = {"images": [{"id": 1, "width": w, "height": h, "file_name": "a.png"}],
          "categories": [{"id": 1, "name": "thing"}],
          "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "segmentation": _rle(m), "area": float(m.sum()),
                           "bbox": [0, 0, 10, 10], "iscrowd": 0} for i, m in enumerate((gt_a, gt_b))]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    detections = [{"image_id": 1, "category_id": 1, "segmentation": _rle(gt_a), "score": 0.9},
                  {"image_id": 1, "category_id": 1, "segmentation": _rle(partial), "score": 0.8}]
    return path, detections


def test_mask_ap_on_a_hand_checked_case(tmp_path):
    gt, detections = _tiny_coco(tmp_path)
    ap = mask_ap(gt, detections)
    # IoU thresholds 0.50..0.95: the exact mask matches at all 10; the IoU-0.63 mask at 0.50, 0.55, 0.60.
    # Precision is 1 wherever both match; where only the first matches, recall tops out at 0.5, so AP at
    # a threshold is 1.0 (both) or 0.5 (one, 101-point interpolation gives 51/101).
    one = 51 / 101
    assert ap["mask_AP50"] == pytest.approx(100.0)
    assert ap["mask_AP75"] == pytest.approx(100 * one, abs=0.01)
    assert ap["mask_AP"] == pytest.approx(100 * (3 * 1.0 + 7 * one) / 10, abs=0.01)


def test_mask_ap_without_ground_truth_is_one_line(tmp_path):
    path = tmp_path / "unlabelled.json"
    path.write_text(json.dumps({"images": [{"id": 1, "width": 4, "height": 4}], "categories": []}))
    with pytest.raises(DistillError, match="has no ground-truth annotations"):
        mask_ap(path, [])


# ---------------------------------------------------------------- report


def test_pareto_front_on_known_points():
    points = [(10.0, 0.5), (20.0, 0.7), (15.0, 0.4), (40.0, 0.9), (50.0, 0.85), (20.0, 0.6)]
    assert pareto_front(points) == [0, 1, 3]


def _row(model, role, total, encoder, params, **extra):
    return {"model": model, "kind": "sam" if role == "teacher" else "sam-distill", "format": "pytorch", "role": role,
            "source": "measured", "params": params, "total_p50_ms": total, "total_p90_ms": total * 1.1,
            "encoder_p50_ms": encoder, "encoder_p90_ms": encoder * 1.1, "notes": [], **extra}


def _fabricated_run(root: Path) -> Path:
    run = root / "runs" / "demo"
    reports = run / "reports"
    reports.mkdir(parents=True)
    bench = {"machine": "test CPU", "rows": [_row("sam_vit_b (t.pth)", "teacher", 400.0, 390.0, 90e6),
                                             _row("tinyvit_5m (model.pt)", "student", 40.0, 30.0, 10e6, path="x/model.pt"),
                                             _row("model.int8 (model.int8.onnx)", "student", 20.0, 20.0, 10e6,
                                                  format="onnx-int8", kind="onnx-encoder", path="x/model.int8.onnx")],
             "skipped": [{"model": "weird.bin", "reason": "model weird.bin is of an unknown kind"}]}
    (reports / "bench.json").write_text(json.dumps(bench))
    (reports / "fidelity.json").write_text(json.dumps(
        {"summary": {"point_miou": 0.8, "box_miou": 0.9, "embedding_mse": 0.1, "embedding_cosine": 0.95}, "images": 3}))
    (reports / "metrics_int8.json").write_text(json.dumps({"model": "model.int8", "metrics": {"point_miou": 0.6}}))
    (reports / "metrics_broken.json").write_text('{"model": "x", "metr')  # half-written
    return run


def test_report_from_a_fabricated_run(tmp_path):
    run = _fabricated_run(tmp_path)
    lines = []
    results = build_report([run, tmp_path / "runs" / "missing"], run / "reports", log=lines.append)
    out = run / "reports"
    for name in ("report.md", "report.html", "results.json", "pareto.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    encoded = page.split('src="data:image/png;base64,')[1].split('"')[0]
    assert base64.b64decode(encoded) == (out / "pareto.png").read_bytes()
    assert "<script" not in page and "http" not in page.split("<body>")[1].split("QUOTED")[0]

    assert results["accuracy_metric"] == "point_miou"
    by_model = {r["model"]: r for r in results["rows"]}
    assert by_model["tinyvit_5m (model.pt)"]["point_miou"] == 0.8
    assert by_model["model.int8 (model.int8.onnx)"]["point_miou"] == 0.6  # matched by file stem
    assert by_model["sam_vit_b (t.pth)"]["point_miou"] == 1.0
    hv = {e["model"]: e for e in results["heavy_vs_light"]}
    assert hv["tinyvit_5m (model.pt)"]["total_speedup"] == pytest.approx(10.0)
    assert hv["tinyvit_5m (model.pt)"]["encoder_speedup"] == pytest.approx(13.0)
    assert hv["model.int8 (model.int8.onnx)"]["accuracy_kept"] == pytest.approx(0.6)
    assert all(r["source"] == "quoted" for r in results["reference"])

    notes = "\n".join(results["notes"])
    assert "metrics_broken.json: half-written" in notes
    assert "missing: does not exist" in notes
    assert "weird.bin was not benchmarked" in notes
    md = (out / "report.md").read_text()
    assert "QUOTED, NOT MEASURED HERE" in md and "| demo | tinyvit_5m (model.pt) | pytorch | sam_vit_b (t.pth) | 13.0x | 10.0x" in md


def test_reference_rows_are_cited_quoted_and_consistent():
    rows = reference_rows()
    for row in rows:
        assert row["source"] == "quoted" and row["citation"] and row["hardware"], row
        assert row.get("params", 1) > 0 and row.get("total_p50_ms", 1) > 0, row
        if row.get("mask_AP") is not None:  # AP protocols differ between sources, so each row names its own
            assert "COCO" in row["note"], row
        fps = re.match(r"([0-9.]+) FPS", row["note"])
        if fps:  # published FPS converted as 1000/FPS
            assert row["total_p50_ms"] == pytest.approx(1000 / float(fps.group(1)))
    fastsam_s = [r for r in rows if r["model"].startswith("FastSAM-s")]
    assert len(fastsam_s) == 1 and "CPU" in fastsam_s[0]["hardware"] and "mask_AP" not in fastsam_s[0]
    efficientsam = [r for r in rows if r["model"] == "EfficientSAM-Ti"]
    assert len(efficientsam) == 1
    assert efficientsam[0]["total_p50_ms"] == pytest.approx(efficientsam[0]["encoder_p50_ms"] + efficientsam[0]["decoder_p50_ms"])


def test_heavy_vs_light_without_teacher_is_a_note():
    entries, notes = heavy_vs_light([{**_row("s", "student", 1, 1, 1), "run": "r"}], "point_miou")
    assert entries == [] and notes == ["r: no teacher row, so no speed-up (bench the teacher too, or pair the run "
                                       "with its heavy counterpart: --against r=TEACHER_RUN)"]


def _instance_run(root: Path, name: str, total: float, encoder: float, params: float, ap: float) -> Path:
    """A run folder as an instance recipe leaves it: one benched model (no teacher row) and its mask AP."""
    reports = root / name / "reports"
    reports.mkdir(parents=True)
    row = _row("SAM-det (sam_det.pt)", "student", total, encoder, params, path=f"{root / name}/sam_det.pt")
    (reports / "bench.json").write_text(json.dumps({"machine": "test CPU", "rows": [row]}))
    (reports / "metrics_sam_det.json").write_text(json.dumps({"model": "sam_det.pt", "metrics": {"mask_AP": ap}}))
    return root / name


def test_against_pairs_a_run_with_the_same_method_on_the_heavy_encoder(tmp_path, capsys):
    light = _instance_run(tmp_path, "det_student", 400.0, 25.0, 23e6, 7.6)
    heavy = _instance_run(tmp_path, "det_teacher", 600.0, 170.0, 43e6, 13.1)
    other = _instance_run(tmp_path, "seg_student", 450.0, 28.0, 21e6, 8.3)
    results = build_report([heavy, light, other], tmp_path / "out", teacher_runs={"det_student": "det_teacher"})
    (entry,) = results["heavy_vs_light"]
    assert entry["run"] == "det_student" and entry["teacher"] == "det_teacher: SAM-det (sam_det.pt)"
    assert entry["total_speedup"] == pytest.approx(1.5) and entry["encoder_speedup"] == pytest.approx(6.8)
    assert entry["size_ratio"] == pytest.approx(43 / 23)
    assert entry["accuracy_metric"] == "mask_AP" and entry["accuracy_kept"] == pytest.approx(7.6 / 13.1)
    # the paired runs need no teacher of their own; an unpaired run still says how to get one
    notes = [n for n in results["notes"] if "no teacher row" in n]
    assert len(notes) == 1 and notes[0].startswith("seg_student:") and "--against seg_student=TEACHER_RUN" in notes[0]
    assert "| det_student | SAM-det (sam_det.pt) | pytorch | det_teacher: SAM-det (sam_det.pt) | 6.8x | 1.5x" in (
        tmp_path / "out" / "report.md").read_text()

    # through the CLI, and one line naming the flag and the runs when a name is wrong or the pair malformed
    assert main(["report", str(heavy), str(light), "--out", str(tmp_path / "cli"),
                 "--against", "det_student=det_teacher"]) == 0
    assert json.loads((tmp_path / "cli" / "results.json").read_text())["heavy_vs_light"][0]["teacher"].startswith(
        "det_teacher:")
    capsys.readouterr()
    for pair, expected in (("det_student=det_techer", "no run named det_techer among the reported runs "
                                                      "(det_teacher, det_student)"),
                           ("det_student", "expected RUN=TEACHER_RUN")):
        assert main(["report", str(heavy), str(light), "--out", str(tmp_path / "bad"), "--against", pair]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--against" in err and expected in err
    assert not (tmp_path / "bad").exists()


def test_report_of_an_empty_run_still_renders(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    (run / "config.yaml").write_text("recipe: mobilesam\n")  # a run that measured nothing yet
    assert main(["report", str(run), str(tmp_path / "missing")]) == 0
    results = json.loads((run / "reports" / "results.json").read_text())
    assert results["rows"] == [] and any("no reports/bench.json" in n for n in results["notes"])
    assert f"{tmp_path / 'missing'}: does not exist; skipped" in results["notes"]


def test_report_of_folders_without_a_run_is_one_line(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    assert main(["report", str(tmp_path / "photos"), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "photos" in err and "no run to report" in err and "distill run" in err
    assert not (tmp_path / "photos" / "reports").exists()


def test_bench_command_end_to_end(tmp_path, tiny_teacher_checkpoint, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", str(tiny_teacher_checkpoint), str(tmp_path / "nope.onnx"), "--runs", "1", "--warmup", "0",
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "skipped" in printed and "does not exist" in printed
    assert json.loads(out.read_text())["rows"][0]["role"] == "teacher"
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.html").exists()


# ---------------------------------------------------------------- headless browser


@pytest.mark.skipif(not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")),
                    reason="no chromium binary installed")
def test_report_html_in_headless_chromium(tmp_path):
    run = _fabricated_run(tmp_path)
    build_report([run], run / "reports", log=lambda m: None)
    shot = tmp_path / "shot.png"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "check_report_html.py"),
                           str(run / "reports" / "report.html"), "--screenshot", str(shot)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert shot.stat().st_size > 0 and "plot visible" in proc.stdout


def test_ground_truth_miou_columns_appear_for_the_models_that_have_them(tmp_path):
    """A finetune run's metrics_finetune.json (SAM's ground-truth protocols) becomes columns of its row and the
    accuracy axis; rows without those figures show '-'."""
    run = tmp_path / "runs" / "ft"
    (run / "reports").mkdir(parents=True)
    bench = {"machine": "test CPU", "rows": [_row("vit_tiny (model.pt)", "student", 40.0, 30.0, 7e6, path="x/model.pt"),
                                             _row("sam_vit_b (t.pth)", "teacher", 400.0, 390.0, 90e6)]}
    (run / "reports" / "bench.json").write_text(json.dumps(bench))
    (run / "reports" / "metrics_finetune.json").write_text(json.dumps({"model": "model.pt", "metrics": {
        "gt_box_miou": 0.612, "gt_point_miou": 0.45, "gt_noc85": 3.5, "gt_box_as_mask_miou": 0.57}}))
    results = build_report([run], run / "reports", log=lambda m: None)
    assert results["accuracy_metric"] == "gt_box_miou"
    md = (run / "reports" / "report.md").read_text()
    assert "| GT box mIoU | GT 1-click mIoU | NoC@85 | box as mask |" in md
    assert "| 0.612 | 0.450 | 3.50 | 0.570 |" in md
    assert "| - | - | - | - |" in md  # the teacher has no ground-truth figures


def test_eval_miou_output_becomes_the_ground_truth_columns_of_its_model(tmp_path):
    """`distill eval miou MODEL --out RUN/reports/miou_NAME.json` gives MODEL's row (matched by file name, an exported
    pair by its encoder) the ground-truth columns; a file of another shape is one note, not a crash."""
    run = tmp_path / "runs" / "chain"
    (run / "reports").mkdir(parents=True)
    bench = {"machine": "test CPU", "rows": [_row("resnet34 (teacher.pt)", "teacher", 180.0, 170.0, 26e6,
                                                  path="stored/teacher.pt"),
                                             _row("mobilenet (student.pt)", "student", 40.0, 27.0, 6e6,
                                                  path="stored/student.pt")]}
    (run / "reports" / "bench.json").write_text(json.dumps(bench))

    def miou(model: str, box: float) -> dict:
        summary = {"objects": 5, "box_miou": box, "point_miou": box - 0.1, "box_as_mask_miou": 0.6, "noc85": 2.5,
                   "noc90": 2.9, "clicks_1_miou": box - 0.1, "clicks_2_miou": box - 0.05}
        return {"summary": summary, "max_clicks": 2, "model": model, "per_class": {}}

    (run / "reports" / "miou_teacher.json").write_text(json.dumps(miou("/abs/stored/teacher.pt", 0.568)))
    (run / "reports" / "miou_student.json").write_text(json.dumps(miou("x/student.pt + x/decoder.onnx", 0.449)))
    (run / "reports" / "miou_broken.json").write_text(json.dumps({"model": "a.pt", "rows": []}))
    results = build_report([run], run / "reports", log=lambda m: None)
    rows = {r["model"]: r for r in results["rows"]}
    assert rows["resnet34 (teacher.pt)"]["gt_box_miou"] == 0.568
    assert rows["mobilenet (student.pt)"]["gt_box_miou"] == 0.449
    assert rows["mobilenet (student.pt)"]["gt_clicks_2_miou"] == pytest.approx(0.399)
    assert results["accuracy_metric"] == "gt_box_miou"
    md = (run / "reports" / "report.md").read_text()
    assert "| 0.568 | 0.468 | 2.50 | 0.600 |" in md and "| 0.449 | 0.349 | 2.50 | 0.600 |" in md
    assert any("miou_broken.json: not a `distill eval miou --out` file" in n for n in results["notes"])

    # beside an instance method's run the report's axis is mask AP, which the SAMs lack: the share the student
    # kept is then of the first figure both have, and says which
    method = tmp_path / "runs" / "anchor"
    (method / "reports").mkdir(parents=True)
    (method / "reports" / "bench.json").write_text(json.dumps({"machine": "test CPU", "rows": [
        _row("prompter (model.pt)", "student", 250.0, 170.0, 30e6, path="anchor/model.pt")]}))
    (method / "reports" / "metrics_anchor.json").write_text(json.dumps({"model": "model.pt",
                                                                         "metrics": {"mask_AP": 1.3}}))
    results = build_report([run, method], tmp_path / "both", log=lambda m: None)
    assert results["accuracy_metric"] == "mask_AP"
    (kept,) = results["heavy_vs_light"]
    assert kept["accuracy_metric"] == "gt_box_miou" and kept["accuracy_kept"] == pytest.approx(0.449 / 0.568)
    assert "| 79.0% (box mIoU vs ground truth) |" in (tmp_path / "both" / "report.md").read_text()


def test_overlay_column_titles_are_wrapped_to_their_column():
    """A run name beside a model file name ran into the next column's title (the NWPU chain's report): titles wrap
    at spaces to the column's width, inside a name only when one name alone is wider, and nothing is lost."""
    from sam_distill.eval.gallery import TITLE_WIDTH, column_title

    title = column_title("chain_f_final: student_mobilenetv3s_512_long2_iou.pt", "sam")
    assert title.split("\n") == ["chain_f_final:", "student_mobilenetv3s_512_long2_iou.pt", "(GT boxes as prompts)"]
    assert column_title("ground truth", None) == "ground truth"
    long_name = "x" * (2 * TITLE_WIDTH + 1)
    assert column_title(long_name, "yolo").split("\n") == ["x" * TITLE_WIDTH, "x" * TITLE_WIDTH, "x"]


def test_overlays_show_every_model_beside_the_ground_truth(tmp_path):
    """`distill report --coco --images` adds overlays.png: the ground truth's instances, a promptable SAM's mask for
    each ground-truth box (the same mask SamPredictor gives for that box), and a column with the reason for a model
    that cannot predict; the picture is embedded in report.md and report.html."""
    from segment_anything import SamPredictor

    from sam_distill.core.images import load_rgb
    from sam_distill.data.coco import load_coco, make_synthetic_coco
    from sam_distill.eval.gallery import _box_prompted, build_gallery
    from sam_distill.sam.build import build_sam
    from sam_distill.sam.model_file import save_model

    annotations = make_synthetic_coco(tmp_path / "coco", count=2, size=96, seed=3)
    images = annotations.parent / "images"
    coco = load_coco(annotations)
    torch.manual_seed(0)
    sam = build_sam("vit_tiny", 128)
    model = save_model(sam, tmp_path / "model.pt", "vit_tiny")
    broken = tmp_path / "broken.pt"
    torch.save({"format": "sam-distill/model", "student": "vit_tiny", "image_size": 128, "state_dict": {}}, broken)
    ids = sorted(coco.getImgIds())
    result = build_gallery([("tiny", model), ("broken", broken)], annotations, images, ids, tmp_path / "g.png",
                           min_score=0.3, log=lambda m: None)
    counts = [len(coco.getAnnIds(imgIds=i, iscrowd=False)) for i in ids]
    truth, tiny, bad = result["columns"]
    assert truth["instances"] == counts == tiny["instances"] and tiny["kind"] == "sam" and sum(counts) >= 4
    assert "does not fit student" in bad["error"] and "instances" not in bad
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    image = load_rgb(images / coco.imgs[ids[0]]["file_name"])
    x, y, w, h = coco.loadAnns(coco.getAnnIds(imgIds=ids[0]))[0]["bbox"]
    box = np.array([[x, y, x + w, y + h]], np.float32)
    batched = _box_prompted(model, [image], [box], "cpu")[0][0]
    predictor = SamPredictor(sam.eval())
    predictor.set_image(image)
    single = predictor.predict(box=box[0], multimask_output=False)[0][0]
    assert mask_iou(batched, single) > 0.99

    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"rows": [{"model": "tiny (model.pt)", "path": str(model), "kind": "sam-distill"}]}))
    build_report([bench], tmp_path / "report", log=lambda m: None,
                 overlays={"annotations": annotations, "images": images, "image_ids": ids[:1]})
    assert "![masks of every model](overlays.png)" in (tmp_path / "report" / "report.md").read_text()
    page = (tmp_path / "report" / "report.html").read_text()
    encoded = page.split('id="overlays" alt="masks of every model" src="data:image/png;base64,')[1].split('"')[0]
    assert base64.b64decode(encoded) == (tmp_path / "report" / "overlays.png").read_bytes()


def test_a_runs_teacher_saved_as_our_model_pt_is_benched_as_the_teacher(tmp_path, tiny_teacher):
    """The NWPU chain's teacher is a SAM fine-tuned here, saved in our own format like any student; the run's bench
    must still treat it as the teacher, or the report has no speed-up to show."""
    from sam_distill.eval.report import report_run
    from sam_distill.methods.config import load_config
    from sam_distill.sam.model_file import assemble, save_model
    from sam_distill.students import create_student

    torch.manual_seed(0)
    teacher = save_model(tiny_teacher.model, tmp_path / "teacher" / "model.pt", "vit_tiny")
    run = tmp_path / "run"
    save_model(assemble(create_student("tinyvit_5m", image_size=256), tiny_teacher.model), run / "model" / "model.pt",
               "tinyvit_5m")
    (run / "config.yaml").write_text(f"recipe: mobilesam\nteacher:\n  name: vit_tiny\n  checkpoint: {teacher}\n")
    results = report_run(run, load_config(run / "config.yaml"), runs=1, log=lambda line: None)

    roles = {Path(r["path"]): r["role"] for r in json.loads((run / "reports" / "bench.json").read_text())["rows"]}
    assert roles == {teacher: "teacher", run / "model" / "model.pt": "student"}
    assert len(results["heavy_vs_light"]) == 1 and not any("no teacher row" in n for n in results["notes"])


def test_overlay_score_chooses_which_detections_are_drawn(tmp_path, monkeypatch, capsys):
    """An instance model's detections are drawn at or above --overlay-score (0.3 unless given), and the caption says
    which; an out-of-range score is one line."""
    from types import SimpleNamespace

    from pycocotools import mask as mask_utils

    import sam_distill.eval.gallery as gallery
    from sam_distill.data.coco import load_coco, make_synthetic_coco
    from sam_distill.eval.report import OVERLAY_MIN_SCORE

    annotations = make_synthetic_coco(tmp_path / "coco", count=1, size=64, seed=1)
    (image_id,) = load_coco(annotations).getImgIds()
    square = np.zeros((64, 64), np.uint8, order="F")
    square[8:24, 8:24] = 1
    rle = mask_utils.encode(square)
    scores = [0.9, 0.3, 0.2, 0.05]
    predictions = SimpleNamespace(classes=[{"id": 1, "name": "square"}], images=[{"id": image_id}],
                                  results=[{"image_id": image_id, "category_id": 1, "score": s, "segmentation": rle}
                                           for s in scores])
    detector = SimpleNamespace(name="sam_det", function=lambda name: lambda path, images, device: predictions)
    monkeypatch.setattr(gallery, "identify", lambda path: detector)
    model = tmp_path / "sam_det.pt"
    model.write_bytes(b"")
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"rows": [{"model": "SAM-det (sam_det.pt)", "path": str(model), "kind": "sam_det"}]}))

    real_build_gallery, galleries = gallery.build_gallery, []
    monkeypatch.setattr(gallery, "build_gallery",
                        lambda *a, **k: galleries.append(real_build_gallery(*a, **k)) or galleries[-1])
    for args, drawn in (([], 2), (["--overlay-score", "0.1"], 3), (["--overlay-score", "0"], 4)):
        out = tmp_path / f"report{len(args)}{drawn}"
        assert main(["report", str(bench), "--out", str(out), "--coco", str(annotations), "--images",
                     str(annotations.parent / "images"), "--overlays", "1", "--split", "all", *args]) == 0
        md = (out / "report.md").read_text()
        threshold = float(args[1]) if args else OVERLAY_MIN_SCORE
        assert f"own detections (score at least {threshold:g})" in md
        column = galleries[-1]["columns"][1]
        assert column["label"].endswith("sam_det.pt") and column["instances"] == [drawn]

    capsys.readouterr()
    assert main(["report", str(bench), "--out", str(tmp_path / "bad"), "--overlay-score", "30"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--overlay-score 30" in err and "between 0 and 1" in err
    parser_help = subprocess.run([sys.executable, "-m", "sam_distill", "report", "--help"], capture_output=True,
                                 text=True, check=True).stdout
    assert f"default {OVERLAY_MIN_SCORE:g};" in " ".join(parser_help.split())
