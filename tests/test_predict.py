"""`distill predict` and `distill eval ap` on SAM files, and what every command taking a model file says about files
that are not one. The other kinds' predict tests sit beside their own fixtures (test_prompter, test_baselines,
test_sam_cls, test_fastsam)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from sam_distill.cli import main

EVERYTHING = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]


def _one_line_error(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("distill: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _decode(result):
    return mask_utils.decode(result["segmentation"]).astype(bool)


@pytest.fixture(scope="module")
def predictor_image(tiny_teacher_checkpoint, image_folder):
    from segment_anything import SamPredictor

    from sam_distill.core.images import load_rgb
    from sam_distill.sam.model_file import load_model

    path = min(image_folder.glob("*.png"))
    predictor = SamPredictor(load_model(tiny_teacher_checkpoint)[0])
    predictor.set_image(load_rgb(path))
    return predictor, path


@pytest.mark.parametrize("prompt, multimask", [(["--point", "70,60"], True),
                                               (["--box", "20", "30", "120", "110", "--point", "60,60,0"], False)])
def test_predict_sam_prompts_match_segment_anythings_predictor(tiny_teacher_checkpoint, predictor_image, tmp_path,
                                                               prompt, multimask):
    """The result is SamPredictor's own mask for the prompt (its best of three for one point), scored by its IoU."""
    predictor, image = predictor_image
    assert main(["predict", str(tiny_teacher_checkpoint), str(image), "--out", str(tmp_path), *prompt]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    written = json.loads((tmp_path / "images.json").read_text())
    assert written["categories"] == [{"id": 1, "name": "object"}] and written["images"][0]["file_name"] == image.name
    if multimask:
        masks, scores, _ = predictor.predict(point_coords=np.array([[70.0, 60.0]]), point_labels=np.array([1]),
                                             multimask_output=True)
    else:
        masks, scores, _ = predictor.predict(point_coords=np.array([[60.0, 60.0]]), point_labels=np.array([0]),
                                             box=np.array([20.0, 30.0, 120.0, 110.0]), multimask_output=False)
    best = int(scores.argmax())
    assert masks[best].any(), "the tiny teacher gives an empty mask here: pick another prompt"
    assert len(results) == 1 and results[0]["image_id"] == 1
    assert np.array_equal(_decode(results[0]), masks[best])
    assert results[0]["score"] == pytest.approx(float(scores[best]), abs=1e-5)
    assert (tmp_path / "overlays" / image.name).is_file()


def test_predict_sam_everything_then_eval_ap_of_folder_and_model(tiny_teacher_checkpoint, image_folder, tmp_path,
                                                                 capsys):
    """Everything mode writes the generator's masks; scored against themselves as ground truth, both the
    predictions folder and the model file itself give AP 1 (image ids mapped back by file name)."""
    images = sorted(image_folder.glob("*.png"))[:2]
    source = tmp_path / "images"
    source.mkdir()
    for path in images:
        (source / path.name).write_bytes(path.read_bytes())
    assert main(["predict", str(tiny_teacher_checkpoint), str(source), "--out", str(tmp_path / "pred"), *EVERYTHING]) == 0
    results = json.loads((tmp_path / "pred" / "results.json").read_text())
    entries = json.loads((tmp_path / "pred" / "images.json").read_text())["images"]
    assert len(results) >= 2 and {r["image_id"] for r in results} <= {1, 2}

    # ground truth: the predicted masks, under other image ids and in reverse file order
    gt_ids = {entry["id"]: 40 - entry["id"] for entry in entries}
    annotations = [{"id": i + 1, "image_id": gt_ids[r["image_id"]], "category_id": 5, "segmentation": r["segmentation"],
                    "area": float(mask_utils.area(r["segmentation"])), "bbox": r["bbox"], "iscrowd": 0}
                   for i, r in enumerate(results)]
    gt = {"images": [{**{k: e[k] for k in ("file_name", "height", "width")}, "id": gt_ids[e["id"]]}
                     for e in reversed(entries)],
          "annotations": annotations, "categories": [{"id": 5, "name": "shape"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    capsys.readouterr()
    base = ["--annotations", str(tmp_path / "gt.json"), "--class-agnostic"]
    assert main(["eval", "ap", str(tmp_path / "pred"), *base, "--out", str(tmp_path / "ap.json")]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["images"] == 2 and scores["mask_AP"] == pytest.approx(1.0) and scores["box_AP50"] == pytest.approx(1.0)
    assert json.loads((tmp_path / "ap.json").read_text()) == scores
    assert main(["eval", "ap", str(tiny_teacher_checkpoint), *base, "--images", str(source), *EVERYTHING]) == 0
    assert json.loads(capsys.readouterr().out)["mask_AP"] == pytest.approx(1.0)
    # class-aware, SAM's one class "object" is not the ground truth's "shape": one line saying what to do
    _one_line_error(capsys, ["eval", "ap", str(tmp_path / "pred"), "--annotations", str(tmp_path / "gt.json")],
                    "['object']", "['shape']", "--class-agnostic")


def test_predict_refuses_what_does_not_apply_and_outputs_that_are_files(tiny_teacher_checkpoint, image_folder,
                                                                        tmp_path, capsys):
    model, images = str(tiny_teacher_checkpoint), str(image_folder)
    out = ["--out", str(tmp_path / "pred")]
    _one_line_error(capsys, ["predict", model, images, *out, "--text", "a cat"],
                    "--text does not apply to", "a SAM model", "it takes --point, --box")
    _one_line_error(capsys, ["predict", model, images, *out, "--score-threshold", "0.5"], "--score-threshold does not apply")
    _one_line_error(capsys, ["predict", model, images, *out, "--box", "0", "0", "9", "9", *EVERYTHING],
                    "apply without prompts")
    _one_line_error(capsys, ["predict", model, images, "--out", str(tmp_path / "seg.png"), "--box", "0", "0", "9", "9"],
                    "seg.png", "a folder")
    (tmp_path / "taken").write_text("x")
    _one_line_error(capsys, ["predict", model, images, "--out", str(tmp_path / "taken")], "taken", "existing file")
    _one_line_error(capsys, ["eval", "ap", str(tmp_path / "pred.json"), "--annotations", "gt.json", "--score-threshold",
                             "0.1"], "--score-threshold go with a model file")
    assert not (tmp_path / "pred").exists()  # nothing was written


def test_predict_runs_a_convnet_sam_at_another_input_size(convnet_sam_file, tiny_teacher_checkpoint, image_folder,
                                                          tmp_path, capsys):
    """`--image-size` gives SamPredictor's answer of the same weights at that size; a ViT says it cannot."""
    from segment_anything import SamPredictor

    from sam_distill.core.images import load_rgb
    from sam_distill.sam.model_file import load_model

    model = convnet_sam_file
    image = min(image_folder.glob("*.png"))
    assert main(["predict", str(model), str(image), "--out", str(tmp_path / "pred"), "--box", "20", "30", "120", "110",
                 "--image-size", "192"]) == 0
    result = json.loads((tmp_path / "pred" / "results.json").read_text())[0]
    predictor = SamPredictor(load_model(model, 192)[0])
    predictor.set_image(load_rgb(image))
    masks, scores, _ = predictor.predict(box=np.array([20.0, 30.0, 120.0, 110.0]), multimask_output=False)
    assert np.array_equal(_decode(result), masks[0]) and result["score"] == pytest.approx(float(scores[0]), abs=1e-5)
    predictor = SamPredictor(load_model(model)[0])  # at its own 128 px the answer differs: the size was applied
    predictor.set_image(load_rgb(image))
    assert not np.array_equal(predictor.predict(box=np.array([20.0, 30.0, 120.0, 110.0]), multimask_output=False)[0][0],
                              masks[0])
    _one_line_error(capsys, ["predict", str(tiny_teacher_checkpoint), str(image), "--out", str(tmp_path / "vit"),
                             "--box", "20", "30", "120", "110", "--image-size", "512"], "runs at 256 px only")


NOT_MODELS = {"notes.txt": b"some notes\n", "empty.pt": b"", "noise.pt": bytes(range(256)) * 8,
              "config.json": b'{"recipe": "prompter"}', "config.pt": b'{"recipe": "prompter"}'}


@pytest.mark.parametrize("name", sorted(NOT_MODELS))
def test_files_that_are_not_models_get_one_line_naming_them(name, image_folder, tmp_path, capsys):
    path = tmp_path / name
    path.write_bytes(NOT_MODELS[name])
    commands = [["predict", str(path), str(image_folder), "--out", str(tmp_path / "out")],
                ["eval", "ap", str(path), "--annotations", str(tmp_path / "gt.json"), "--images", str(image_folder)],
                ["eval", "fidelity", str(path), "--cache", str(tmp_path / "cache")]]
    for argv in commands:
        line = _one_line_error(capsys, argv, str(path))
        assert "not a model file" in line or "not a COCO results list" in line, line
    assert not (tmp_path / "out").exists()


def test_old_spellings_name_their_replacement(capsys):
    _one_line_error(capsys, ["segment", "m.pt", "i.png", "--box", "1", "2", "3", "4"], "`distill predict MODEL IMAGES")
    _one_line_error(capsys, ["prompter", "eval", "m.pt"], "`distill eval ap MODEL", "`distill run CONFIG`")
    _one_line_error(capsys, ["sam-cls", "predict"], "`distill predict")
    _one_line_error(capsys, ["mask-ap", "gt.json", "r.json"], "`distill eval ap RESULTS")


def test_encoder_init_must_be_a_sam_file(tmp_path):
    from sam_distill.core.errors import DistillError
    from sam_distill.methods.mobilesam.stages import init_student

    (tmp_path / "notes.pt").write_text("not weights")
    with pytest.raises(DistillError, match="notes.pt is not a model file"):
        init_student("timm_test_efficientnet", 256, tmp_path / "notes.pt")
    torch.save({"format": "sam-distill/prompter", "config": {}}, tmp_path / "prompter.pt")
    with pytest.raises(DistillError, match="is an RSPrompter model .* takes a SAM model"):
        init_student("timm_test_efficientnet", 256, tmp_path / "prompter.pt")


def test_eval_fidelity_of_the_teacher_to_itself(tiny_teacher_checkpoint, tiny_cache, tmp_path, capsys):
    """`distill eval fidelity` takes a SAM file: the teacher against its own cached (fp16) embeddings is ~exact."""
    out = tmp_path / "fidelity.json"
    assert main(["eval", "fidelity", str(tiny_teacher_checkpoint), "--cache", str(tiny_cache), "--teacher", "vit_tiny",
                 "--checkpoint", str(tiny_teacher_checkpoint), "--all", "--max-images", "2", "--points", "2",
                 "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["images"] == 2 and result["summary"]["embedding_cosine"] > 0.999
    assert result["summary"]["embedding_mse"] < 1e-4 and "embedding cosine" in capsys.readouterr().out


def test_an_overlay_says_how_many_detections_it_draws(tmp_path):
    """Early in training every score is low and an overlay at the usual threshold is the bare image: its caption
    says how many detections reached the threshold and the best score, so a blank picture is not read as a model
    that finds nothing; the run's overlays take their threshold from `instances.eval.overlay_score`."""
    from PIL import Image

    from sam_distill.methods.instance_predict import save_overlay
    from sam_distill.methods.sections import InstanceEvalConfig

    image = np.full((64, 96, 3), 100, np.uint8)
    square = np.zeros((64, 96), np.uint8, order="F")
    square[30:60, 40:90] = 1
    result = {"image_id": 1, "category_id": 1, "score": 0.2, "segmentation": mask_utils.encode(square),
              "bbox": [40, 30, 50, 30]}
    for min_score, drawn in ((0.3, 0), (0.1, 1)):
        path = tmp_path / f"{min_score}.png"
        assert save_overlay(image, [result], [{"id": 1, "name": "square"}], path, min_score) == drawn
        picture = np.asarray(Image.open(path))
        assert (picture[50:58, 60:85] != 100).any() == bool(drawn)  # the mask's inside, below its label
        assert (picture[4:12, 4:60] != 100).any()  # the caption
    assert InstanceEvalConfig().overlay_score == 0.3
    assert InstanceEvalConfig(overlay_score=0.05).overlay_score == 0.05


def test_an_instance_run_says_when_its_overlays_show_no_detection(tmp_path):
    """Ground-truth masks given as detections that all score 0.2: AP is perfect, yet at the usual overlay threshold
    (0.3) every overlay is the bare image, and the run log says so, with the best score and the key to lower."""
    from sam_distill.core.rundir import RunDir
    from sam_distill.data.coco import CocoInstances, make_synthetic_coco
    from sam_distill.methods.instances import write_instance_reports
    from sam_distill.methods.sections import InstanceEvalConfig

    make_synthetic_coco(tmp_path / "coco", 3, 64, seed=0)
    val_set = CocoInstances(tmp_path / "coco" / "annotations.json", tmp_path / "coco" / "images", 64)
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.2,
                "segmentation": mask_utils.encode(np.asfortranarray(val_set.coco.annToMask(a)))}
               for a in val_set.coco.dataset["annotations"]]
    for threshold, silent in ((0.3, False), (0.1, True)):
        run = RunDir(tmp_path / f"run{threshold}", quiet=True)
        scores = write_instance_reports(run, "probe", "m.pt", val_set, results, "encoder",
                                        InstanceEvalConfig(overlays=2, overlay_score=threshold))
        assert scores["mask_AP"] == pytest.approx(1.0)
        assert len(list((run.path / "reports" / "overlays").glob("*.png"))) == 2
        log = (run.path / "logs" / "run.log").read_text()
        assert ("the overlays show no detection" in log) != silent
        if not silent:
            assert "none on those 2 images scored 0.3 or more (best 0.20); lower instances.eval.overlay_score" in log
