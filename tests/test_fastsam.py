"""FastSAM-style recipe: pseudo-labels, YOLO-seg conversion, ultralytics training, prompts, mask AP, CLIP text."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from sam_distill.core.errors import DistillError
from sam_distill.data.yolo import convert_coco, is_val, mask_to_polygon, split_names
from sam_distill.eval.coco_ap import mask_ap, masks_to_results


def _rect(h, w, y1, y2, x1, x2):
    mask = np.zeros((h, w), bool)
    mask[y1:y2, x1:x2] = True
    return mask


def _gt(masks_per_image):
    images, annotations = [], []
    for image_id, masks in enumerate(masks_per_image, start=1):
        h, w = masks[0].shape
        images.append({"id": image_id, "file_name": f"img{image_id}.png", "width": w, "height": h})
        for mask in masks:
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "segmentation": rle,
                                "area": float(mask.sum()), "bbox": list(map(float, mask_utils.toBbox(rle))), "iscrowd": 0})
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}


def test_mask_ap_perfect_and_recall_limited():
    a, b = _rect(64, 64, 5, 25, 5, 25), _rect(64, 64, 35, 60, 30, 62)
    gt = _gt([[a, b]])
    assert mask_ap(gt, masks_to_results(1, np.stack([a, b]), [0.9, 0.8]))["stats"]["AP"] == pytest.approx(1.0)
    # One of two objects found, exactly: precision 1 up to recall 0.5, nothing after: 51 of COCO's 101 recall points.
    missed = mask_ap(gt, masks_to_results(1, a[None], [0.9]))
    assert missed["stats"]["AP50"] == pytest.approx(51 / 101, abs=1e-6)
    assert missed["stats"]["AR100"] == pytest.approx(0.5)
    assert mask_ap(gt, [])["stats"]["AP"] == 0.0
    with pytest.raises(DistillError, match="does not exist"):
        mask_ap(Path("/nonexistent/gt.json"), [])


def test_teacher_labels_are_scored_against_the_ground_truth_of_their_images(tmp_path):
    from sam_distill.methods.fastsam.recipe import score_labels

    a, b = _rect(64, 64, 5, 25, 5, 25), _rect(64, 64, 35, 60, 30, 62)
    gt = _gt([[a, b], [a]])
    annotations = tmp_path / "gt.json"
    annotations.write_text(json.dumps(gt))
    labels = tmp_path / "labels"
    (labels / "masks").mkdir(parents=True)
    (labels / "labels.json").write_text(json.dumps({"images": str(tmp_path / "images" / "..")}))

    def write(name, masks, scores):
        found = [{**r, "predicted_iou": r["score"]} for r in masks_to_results(0, np.stack(masks), scores)]
        (labels / "masks" / f"{name}.json").write_text(json.dumps({"image": {"file_name": name}, "annotations": found}))

    # img1: one of its two objects exactly, ranked above a background mask; img3 is not in the COCO file
    write("img1.png", [_rect(64, 64, 40, 44, 0, 4), a], [0.2, 0.9])
    write("img3.png", [b], [0.9])
    scored = score_labels(labels, annotations, tmp_path)
    assert scored["images"] == 1 and scored["ground_truth_instances"] == 2 and scored["detections"] == 2
    assert scored["stats"]["AP50"] == pytest.approx(51 / 101, abs=1e-6)  # img2 has no label file: not scored
    write("img2.png", [a], [0.5])
    assert score_labels(labels, annotations, tmp_path)["stats"]["AR100"] == pytest.approx(2 / 3)
    (labels / "masks" / "img1.png.json").unlink()
    (labels / "masks" / "img2.png.json").unlink()
    assert score_labels(labels, annotations, tmp_path) is None


def test_polygon_reasons_and_stable_split():
    assert mask_to_polygon(np.zeros((20, 20)), 4, 8) == (None, "empty")
    assert mask_to_polygon(_rect(20, 20, 2, 4, 2, 4), 16, 8)[1] == "tiny"
    speckle = np.zeros((20, 20), bool)
    speckle[::4, ::4] = True
    assert mask_to_polygon(speckle, 0, 8)[1] == "fragmented"
    polygon, reason = mask_to_polygon(_rect(20, 20, 5, 15, 2, 12), 4, 8)
    assert reason == "kept" and polygon.min(0).tolist() == [2, 5] and polygon.max(0).tolist() == [11, 14]
    names = [f"im{i}.png" for i in range(200)]
    val = split_names(names, 0.2)
    assert val == split_names(list(reversed(names)) + ["extra.png"], 0.2) - {"extra.png"}
    assert 20 < len(val) < 60 and all(is_val(n, 0.2) for n in val)
    assert len(split_names(["a.png", "b.png"], 0.01)) == 1  # ultralytics needs a val image
    # a dataset made from the training side of the instance recipes' split still gets its share of val images
    from sam_distill.data.coco import hash_split

    many = [f"{i:03d}.jpg" for i in range(1000)]
    training_side = [many[i] for i in hash_split(many, 0.2)[0]]
    assert 0.07 < len(split_names(training_side, 0.1)) / len(training_side) < 0.13


@pytest.fixture(scope="module")
def coco_dataset(tmp_path_factory):
    """Six 96-px images with two rectangles each (classes 'box' and 'bar') plus a crowd and a tiny object."""
    root = tmp_path_factory.mktemp("coco")
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for index in range(6):
        pixels = rng.integers(0, 60, (96, 96, 3)).astype(np.uint8)
        y, x = (int(v) for v in rng.integers(5, 40, 2))
        pixels[y:y + 30, x:x + 30] = (220, 40, 40)
        pixels[70:80, 10:90] = (40, 40, 220)
        Image.fromarray(pixels).save(root / f"scene{index}.png")
        images.append({"id": index + 10, "file_name": f"scene{index}.png", "width": 96, "height": 96})
        for category, (x1, y1, x2, y2), crowd in [(3, (x, y, x + 30, y + 30), 0), (7, (10, 70, 90, 80), 0),
                                                   (3, (0, 0, 2, 2), 0), (7, (50, 50, 60, 60), 1)]:
            annotations.append({"id": len(annotations) + 1, "image_id": index + 10, "category_id": category,
                                "iscrowd": crowd, "area": float((x2 - x1) * (y2 - y1)),
                                "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]]})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": 7, "name": "bar"}, {"id": 3, "name": "box"}]}
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


def test_convert_coco_layout(coco_dataset, tmp_path):
    summary = convert_coco(coco_dataset / "annotations.json", coco_dataset, tmp_path / "yd", val_fraction=0.3)
    assert summary["classes"] == ["box", "bar"]  # category id order: 3, 7
    assert summary["instances"] == 12 and summary["dropped"] == {"empty": 0, "tiny": 6, "fragmented": 0, "crowd": 6}
    assert summary["train_images"] + summary["val_images"] == 6 and summary["val_images"] >= 1
    bar_line = next(line for f in (tmp_path / "yd" / "labels").rglob("*.txt") for line in f.read_text().splitlines()
                    if line.startswith("1 "))
    coords = np.array(bar_line.split()[1:], float).reshape(-1, 2) * 96
    assert coords.min(0) == pytest.approx([10, 70], abs=1.01) and coords.max(0) == pytest.approx([90, 80], abs=1.01)
    val_gt = json.loads((tmp_path / "yd" / "val_coco.json").read_text())
    assert len(val_gt["images"]) == summary["val_images"] and len(val_gt["annotations"]) == 2 * summary["val_images"]
    # converted again into the same folder with another split: no image or label is left in both splits
    again = convert_coco(coco_dataset / "annotations.json", coco_dataset, tmp_path / "yd", val_fraction=0.7)
    assert again["val_images"] > summary["val_images"]
    for kind, pattern in (("images", "*.png"), ("labels", "*.txt")):
        train, val = ({p.stem for p in (tmp_path / "yd" / kind / split).glob(pattern)} for split in ("train", "val"))
        assert len(train) + len(val) == 6 and not train & val, (kind, train, val)
    with pytest.raises(DistillError, match="none of the images"):
        convert_coco(coco_dataset / "annotations.json", tmp_path, tmp_path / "yd2")


def test_pseudo_labels_resume_refusal_and_empty(tiny_teacher, image_folder, tmp_path):
    from sam_distill.data.everything import generator_settings, pseudo_label, read_label_set
    from sam_distill.data.yolo import convert_pseudo_labels

    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted(image_folder.glob("*.png"))[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.png").write_bytes(b"not an image")
    loose = generator_settings(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    counts = pseudo_label(tiny_teacher, folder, tmp_path / "labels", loose, log=lambda m: None)
    assert counts["labelled"] == 2 and counts["skipped"] == 1 and counts["masks"] >= 1
    header, records = read_label_set(tmp_path / "labels")
    assert header["teacher"]["checkpoint_sha256"] == tiny_teacher.checkpoint_sha256
    first = records[0]["annotations"][0]
    assert mask_utils.decode(first["segmentation"]).shape == (records[0]["image"]["height"], records[0]["image"]["width"])
    assert pseudo_label(tiny_teacher, folder, tmp_path / "labels", loose, log=lambda m: None)["labelled"] == 0
    # A list of files (data.max_images) is the same set: nothing new to label.
    subset = sorted(folder.glob("synthetic_*.png"))
    assert pseudo_label(tiny_teacher, subset, tmp_path / "labels", loose, log=lambda m: None)["labelled"] == 0
    with pytest.raises(DistillError, match="generator"):
        pseudo_label(tiny_teacher, folder, tmp_path / "labels", generator_settings(points_per_side=3), log=lambda m: None)
    # A teacher that finds nothing: empty label files, counted; conversion then says what to change.
    strict = generator_settings(points_per_side=2, pred_iou_thresh=1.0, stability_score_thresh=1.0)
    nothing = pseudo_label(tiny_teacher, folder, tmp_path / "empty", strict, log=lambda m: None)
    assert nothing["images_without_masks"] == 2 and nothing["masks"] == 0
    with pytest.raises(DistillError, match="no usable masks.*lower the pseudo-label thresholds"):
        convert_pseudo_labels(tmp_path / "empty", tmp_path / "yd")
    yolo = convert_pseudo_labels(tmp_path / "labels", tmp_path / "yd", max_components=10_000, min_area=0)
    assert yolo["classes"] == ["object"] and yolo["images"] == 2


def test_unknown_variant_is_one_line(tmp_path, capsys):
    from sam_distill.cli import main

    (tmp_path / "data.yaml").write_text("path: .\n")
    assert main(["yolo", "train", str(tmp_path / "data.yaml"), "--model", "yolov9-seg", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "yolov8n-seg" in err and "yolo11x-seg" in err


@pytest.fixture(scope="module")
def trained_student(coco_dataset, tmp_path_factory):
    from sam_distill.methods.fastsam.recipe import train_yolo

    out = tmp_path_factory.mktemp("yolo")
    data = convert_coco(coco_dataset / "annotations.json", coco_dataset, out / "data", val_fraction=0.3)
    summary = train_yolo(Path(data["data_yaml"]), "yolov8n-seg", out / "runs", epochs=1, imgsz=64, batch=2,
                         device="cpu", workers=0, log=lambda m: None)
    return Path(summary["best"]), out / "data", summary


def test_trained_pt_loads_in_ultralytics_and_resumes_finished(trained_student):
    from ultralytics import YOLO, FastSAM

    weights, data_dir, summary = trained_student
    assert summary["epochs"] == 1 and "metrics/mAP50(M)" in summary["final"]
    assert YOLO(str(weights)).task == "segment"
    result = FastSAM(str(weights))(np.zeros((64, 64, 3), np.uint8), imgsz=64, conf=0.001, verbose=False)[0]
    assert result.orig_shape == (64, 64)
    from sam_distill.methods.fastsam.recipe import train_yolo

    again = train_yolo(data_dir / "data.yaml", "yolov8n-seg", Path(summary["run"]).parent, epochs=1, log=lambda m: None)
    assert again["best"] == summary["best"]  # finished runs are not retrained


def test_prompt_modes_and_ap(trained_student, coco_dataset):
    from sam_distill.core.images import load_rgb
    from sam_distill.methods.fastsam.recipe import evaluate_yolo
    from sam_distill.methods.fastsam.student import YoloSegStudent

    weights, data_dir, _ = trained_student
    student = YoloSegStudent(weights, imgsz=64, conf=0.001)
    image = load_rgb(coco_dataset / "scene0.png")
    everything = student.everything(image)
    assert everything.masks.shape[1:] == (96, 96) and len(everything.masks) > 0
    box = (10, 70, 90, 80)
    chosen = student.box(image, box)
    assert len(chosen.masks) == 1
    inside = everything.masks[:, 70:80, 10:90].sum((1, 2))
    ious = inside / (80 * 10 + everything.masks.sum((1, 2)) - inside)
    assert chosen.masks[0].sum() == everything.masks[int(ious.argmax())].sum()
    ys, xs = np.nonzero(everything.masks[0])
    point = (int(xs[len(xs) // 2]), int(ys[len(ys) // 2]))
    picked = student.points(image, [point], [1])
    assert len(picked.masks) >= 1 and all(m[point[1], point[0]] for m in picked.masks)
    assert len(student.points(image, [point, point], [1, 0]).masks) == 0  # negative point vetoes
    with pytest.raises(DistillError, match="label"):
        student.points(image, [point], [1, 0])
    report = evaluate_yolo(weights, data_dir, 64, class_agnostic=False, conf=0.001)
    assert 0.0 <= report["stats"]["AP"] <= 1.0 and report["ground_truth_instances"] >= 2


def test_ground_truth_ap_on_the_validation_split_scores_only_unseen_images(trained_student, coco_dataset):
    """A student distilled from ``data.split: train`` is scored on the validation side of the same fixed split that
    ``eval miou`` and the instance recipes use: those images and their instances only, nothing from the training
    side."""
    from sam_distill.data.coco import load_coco, split_image_ids
    from sam_distill.methods.fastsam.recipe import evaluate_on_split, predict_coco

    weights, _, _ = trained_student
    annotations = coco_dataset / "annotations.json"
    coco = load_coco(annotations)
    val_ids = split_image_ids(coco, "val", 0.5, annotations)
    assert 0 < len(val_ids) < 6
    report = evaluate_on_split(weights, annotations, coco_dataset, 0.5, 64, class_agnostic=True, conf=0.001)
    assert report["images"] == len(val_ids) and report["split"] == "val"
    assert report["ground_truth_instances"] == len(coco.getAnnIds(imgIds=val_ids))
    every_image = predict_coco(weights, annotations, coco_dataset, 64, 0.001)
    by_hand = mask_ap(annotations, [r for r in every_image if r["image_id"] in val_ids], class_agnostic=True,
                      image_ids=val_ids)
    assert report["stats"] == by_hand["stats"] and report["detections"] == by_hand["detections"] > 0


def test_distill_predict_and_eval_ap_on_a_student(trained_student, coco_dataset, tmp_path, capsys):
    """`distill predict` gives the student's own masks for each prompt mode; `distill eval ap` maps its classes
    (box, bar) to the ground truth's category ids by name."""
    from sam_distill.cli import main
    from sam_distill.core.images import load_rgb
    from sam_distill.data.coco import load_coco
    from sam_distill.methods.fastsam.student import YoloSegStudent
    from sam_distill.methods.predict import read_predictions, to_ground_truth

    weights, _, _ = trained_student
    image = coco_dataset / "scene0.png"
    student = YoloSegStudent(weights, imgsz=64, conf=0.001)
    everything = student.everything(load_rgb(image))
    ys, xs = np.nonzero(everything.masks[0])
    point = (int(xs[len(xs) // 2]), int(ys[len(ys) // 2]))
    base = ["predict", str(weights), str(image), "--imgsz", "64", "--score-threshold", "0.001"]
    for name, prompt, expected in [
            ("everything", [], everything),
            ("box", ["--box", "10", "70", "90", "80"], student.box(load_rgb(image), (10, 70, 90, 80))),
            ("point", ["--point", f"{point[0]},{point[1]}"], student.points(load_rgb(image), [point], [1]))]:
        assert main([*base, "--out", str(tmp_path / name), *prompt]) == 0
        results = json.loads((tmp_path / name / "results.json").read_text())
        assert len(results) == len(expected.masks) > 0, name
        for result, mask, score, cls in zip(results, expected.masks, expected.scores, expected.classes):
            assert np.array_equal(mask_utils.decode(result["segmentation"]).astype(bool), mask), name
            assert result["score"] == pytest.approx(float(score)) and result["category_id"] == cls + 1
    categories = json.loads((tmp_path / "everything" / "images.json").read_text())["categories"]
    assert categories == [{"id": 1, "name": "box"}, {"id": 2, "name": "bar"}]
    mapped = to_ground_truth(read_predictions(tmp_path / "everything"), load_coco(coco_dataset / "annotations.json"),
                             class_agnostic=False)
    by_name = {1: 3, 2: 7}  # box is category 3 and bar 7 in the ground truth
    assert [r["category_id"] for r in mapped] == [by_name[c + 1] for c in everything.classes]
    assert {r["image_id"] for r in mapped} == {10}  # scene0.png's id there
    capsys.readouterr()
    assert main(["eval", "ap", str(weights), "--annotations", str(coco_dataset / "annotations.json"), "--images",
                 str(coco_dataset), "--imgsz", "64", "--score-threshold", "0.001"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["images"] == 6 and 0.0 <= scores["mask_AP"] <= 1.0
    assert main([*base, "--out", str(tmp_path / "x"), "--box", "1", "2", "3", "4", "--point", "5,5"]) == 2
    assert "one prompt at a time" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "x"), "--text", "a red box"]) == 2
    assert "local CLIP checkpoint" in capsys.readouterr().err


def test_export_goes_through_distill_export(trained_student, tmp_path):
    import onnxruntime

    from sam_distill.export.pipeline import export_model
    from sam_distill.export.registry import ExportOptions

    weights, _, _ = trained_student
    manifest = export_model(weights, ["onnx"], tmp_path, ExportOptions(), log=lambda m: None)
    assert manifest["source"]["model"] == "ultralytics segment" and manifest["files"][0]["format"] == "onnx"
    parity = json.loads((tmp_path / "parity.json").read_text())
    figures = next(iter(parity["files"].values()))
    assert figures["output_max_abs"] < 1e-3
    session = onnxruntime.InferenceSession(str(tmp_path / manifest["files"][0]["file"]))
    outputs = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, 64, 64), np.float32)})
    assert outputs[1].shape == (1, 32, 16, 16)  # mask prototypes at a quarter of the input
    assert weights.exists()  # the source .pt is left in place
    # `distill bench` / the run's report time the exported network as they time the .pt: one forward at its size
    from sam_distill.eval.bench import bench_model, load_bench_model

    timed = load_bench_model(str(tmp_path / manifest["files"][0]["file"]), threads=1, image_size=1024)
    assert (timed.kind, timed.format, timed.image_size) == ("onnx-yolo-seg", "onnx-fp32", 64)
    row = bench_model(timed, runs=2, warmup=1)
    assert row["encoder_p50_ms"] > 0 and "decoder_p50_ms" not in row


def test_clip_text_selection(tmp_path):
    import open_clip
    import torch

    from sam_distill.sam.text_prompts import load_clip, select_by_text

    config = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "tiny-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "tiny-clip.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("tiny-clip").state_dict(), tmp_path / "tiny_clip.pt")
    with pytest.raises(DistillError, match="local CLIP checkpoint"):
        load_clip(None, "tiny-clip")
    scorer = load_clip(tmp_path / "tiny_clip.pt", "tiny-clip")
    image = np.random.default_rng(0).integers(0, 255, (48, 48, 3)).astype(np.uint8)
    masks = np.stack([_rect(48, 48, 0, 20, 0, 20), _rect(48, 48, 25, 45, 20, 46), _rect(48, 48, 0, 2, 0, 2)])
    best, scores = select_by_text(scorer, image, masks, "a red car")
    assert best in (0, 1) and scores[2] == float("-inf")
    crop = (image[25:45, 20:46] * masks[1][25:45, 20:46, None])
    assert scores[1] == pytest.approx(float(scorer.similarity([crop], "a red car")[0]), abs=1e-5)


def test_fastsam_recipe_end_to_end_and_rerun(tmp_path, tiny_teacher_checkpoint):
    from sam_distill.methods.config import parse_config
    from sam_distill.runner import run

    config = parse_config({
        "recipe": "fastsam", "name": "fs", "run_dir": str(tmp_path / "run"), "device": "cpu",
        "teacher": {"name": "vit_tiny", "checkpoint": str(tiny_teacher_checkpoint)},
        "data": {"synthetic": {"count": 4, "size": 96}},
        "fastsam": {"pseudo_label": {"points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
                    "variant": "yolov8n-seg", "epochs": 1, "imgsz": 64, "batch": 2, "workers": 0,
                    "val_fraction": 0.25, "min_area": 0, "max_components": 10_000, "export": []}})
    run_dir = run(config).path
    report = json.loads((run_dir / "reports" / "mask_ap.json").read_text())
    assert set(report) == {"vs_teacher"} and 0.0 <= report["vs_teacher"]["stats"]["AP"] <= 1.0
    assert (run_dir / "model" / "fastsam.pt").is_file() and (run_dir / "reports" / "training_map.png").is_file()
    assert len(list((run_dir / "pseudo_labels" / "masks").glob("*.json"))) == 4
    log_lines = (run_dir / "logs" / "run.log").read_text().count("\n")
    run(config)  # a rerun resumes: nothing relabelled, training already finished
    rerun_log = (run_dir / "logs" / "run.log").read_text().splitlines()[log_lines:]
    assert any("0 to do" in line for line in rerun_log) and any("already finished" in line for line in rerun_log)
    # the rerun's report still describes the whole label set, not only what the rerun labelled (nothing)
    summary_line = next(line for line in (run_dir / "reports" / "fastsam.md").read_text().splitlines()
                        if line.startswith("- pseudo-labels:"))
    assert summary_line.startswith("- pseudo-labels: 4 images, ") and '"labelled": 0' in summary_line
