"""SAM-det and SAM-seg (the RSPrompter paper's detector baselines): pyramid shapes, learning on generated
instances, SAM's masks for the detected boxes, given COCO detections as prompts, file round trip, bench,
and the ``distill run`` recipes into the shared report."""
from __future__ import annotations

import json

import pytest
import torch

from sam_distill.core.errors import DistillError
from sam_distill.data.coco import CocoInstances, make_synthetic_coco
from sam_distill.eval.coco_ap import instance_ap
from sam_distill.methods.instance_predict import predict_dataset
from sam_distill.methods.instances import InstanceObjective
from sam_distill.methods.rcnn.model import build_rcnn, load_rcnn, save_rcnn
from sam_distill.students.heads.pyramid import SimpleFeaturePyramid
from sam_distill.train.loop import Schedule, train

SIZE = 128


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rcnn_shapes")
    make_synthetic_coco(folder, 6, SIZE, seed=0)
    return folder / "annotations.json", folder / "images"


def tiny_rcnn(method: str, **overrides):
    torch.manual_seed(0)
    config = {"method": method, "encoder": "vit_tiny", "image_size": SIZE, "num_classes": 3, "width": 32}
    return build_rcnn({**config, **overrides})


def test_simple_feature_pyramid_levels():
    levels = SimpleFeaturePyramid(256, 64)(torch.randn(2, 256, 8, 8))
    assert list(levels) == ["0", "1", "2", "3", "pool"]
    assert [tuple(v.shape) for v in levels.values()] == [(2, 64, 32, 32), (2, 64, 16, 16), (2, 64, 8, 8),
                                                         (2, 64, 4, 4), (2, 64, 2, 2)]


def _train(model, shapes, tmp_path, steps=60):
    dataset = CocoInstances(*shapes, SIZE)
    schedule = Schedule(epochs=100, batch_size=2, grad_accum=1, lr=5e-3, min_lr=1e-4, weight_decay=0.0,
                        warmup_steps=5, checkpoint_every=steps, log_every=10, max_steps=steps, amp=False)
    train(InstanceObjective(model, model.config["method"]), dataset, schedule, tmp_path, log=lambda m: None)
    return dataset


MASK2FORMER = {"head": "mask2former",
               "mask2former": {"num_queries": 8, "decoder_layers": 3, "pixel_decoder_layers": 2, "heads": 4}}


@pytest.mark.parametrize("method,overrides,metric",
                         [("sam_seg", {}, "mask_AP50"), ("sam_seg", MASK2FORMER, "mask_AP50"),
                          ("sam_det", {}, "box_AP50")],
                         ids=["sam_seg", "sam_seg_m2f", "sam_det"])
def test_detector_baselines_learn_generated_instances(shapes, tmp_path, method, overrides, metric):
    """Overfit check on a frozen random encoder: the pyramid + R-CNN (or Mask2Former) heads learn to find (and,
    for SAM-seg, segment) the shapes. SAM-det's masks come from SAM, which is random here, so its box AP is the
    check. Measured: SAM-seg with Mask2Former mask AP50 0.000 → 0.389 in these 60 steps."""
    model = tiny_rcnn(method, **overrides)
    dataset = CocoInstances(*shapes, SIZE)
    before = instance_ap(dataset.coco, predict_dataset(model, dataset, dataset.classes, torch.device("cpu"),
                                                       progress=False))[metric]
    _train(model, shapes, tmp_path)
    after = instance_ap(dataset.coco, predict_dataset(model, dataset, dataset.classes, torch.device("cpu"),
                                                      progress=False))[metric]
    assert after >= 0.25 and after > before + 0.2, (before, after)


def test_sam_det_masks_are_sams_answers_to_the_detected_boxes(shapes):
    model = tiny_rcnn("sam_det").eval()
    images = torch.stack([CocoInstances(*shapes, SIZE)[0]["image"]])
    prediction = model.predict(images, score_threshold=0.0)[0]
    assert len(prediction["boxes"]) > 0
    with torch.no_grad():
        sparse, dense = model.sam.prompt_encoder(points=None, boxes=prediction["boxes"], masks=None)
        expected = model.sam.mask_decoder(image_embeddings=model.sam.image_encoder(images),
                                          image_pe=model.sam.prompt_encoder.get_dense_pe(),
                                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                          multimask_output=False)[0][:, 0]
    assert prediction["masks"].shape == (len(prediction["boxes"]), 4 * SIZE // 16, 4 * SIZE // 16)
    torch.testing.assert_close(prediction["masks"], expected)


def test_sam_det_decoder_fine_tuning_lowers_the_mask_loss(shapes):
    model = tiny_rcnn("sam_det", train_decoder=True)
    assert all(p.requires_grad for p in model.sam.mask_decoder.parameters())
    assert not any(p.requires_grad for p in model.sam.image_encoder.parameters())
    dataset = CocoInstances(*shapes, SIZE)
    items = [dataset[i] for i in range(2)]
    images = torch.stack([item["image"] for item in items])
    optimizer = torch.optim.AdamW(model.sam.mask_decoder.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(30):
        loss = model.losses(images, items)
        losses.append((loss["mask_bce"] + loss["mask_dice"]).item())
        optimizer.zero_grad()
        (loss["mask_bce"] + loss["mask_dice"]).backward()
        optimizer.step()
    assert losses[-1] < 0.5 * losses[0], losses


def test_rcnn_file_round_trip_and_bench(tmp_path):
    from sam_distill.eval.bench import bench_many

    model = tiny_rcnn("sam_seg").eval()
    path = save_rcnn(model, tmp_path / "sam_seg.pt", [{"id": 1, "name": "a"}, {"id": 2, "name": "b"},
                                                      {"id": 3, "name": "c"}])
    loaded, classes = load_rcnn(path)
    images = torch.randn(1, 3, SIZE, SIZE)
    first, second = model.predict(images, 0.0)[0], loaded.predict(images, 0.0)[0]
    torch.testing.assert_close(first["boxes"], second["boxes"])
    assert [c["name"] for c in classes] == ["a", "b", "c"] and "prompt_encoder" not in str(list(loaded.state_dict()))
    row = bench_many([str(path)], runs=1, warmup=0, log=lambda m: None)["rows"][0]
    assert row["kind"] == "sam_seg" and row["model"] == "SAM-seg (sam_seg.pt)" and row["encoder_p50_ms"] > 0 and row["decoder_p50_ms"] > 0
    assert row["params"] == sum(p.numel() for p in loaded.parameters())
    with pytest.raises(DistillError, match="is not a SAM-det/SAM-seg model"):
        load_rcnn(_not_rcnn(tmp_path))


@pytest.mark.parametrize("head", ["maskrcnn", "mask2former"])
def test_rcnn_bench_masks_a_fixed_load_whatever_the_scores(tmp_path, head):
    """A detector that scores everything as background (as a trained one may score the bench's noise) still has its
    masks timed at its cap (Mask2Former: every query), so two models compare at one load."""
    from sam_distill.methods.rcnn.bench import bench_rcnn

    overrides = {"detections_per_image": 5} if head == "maskrcnn" else {"mask2former": {
        "num_queries": 4, "decoder_layers": 1, "pixel_decoder_layers": 1, "heads": 2}}
    model = tiny_rcnn("sam_seg", head=head, **overrides).eval()
    with torch.no_grad():
        if head == "maskrcnn":
            model.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([20.0, 0.0, 0.0, 0.0]))
        else:
            model.mask2former.class_head[-1].bias.copy_(torch.tensor([0.0, 0.0, 0.0, 20.0]))
    path = save_rcnn(model, tmp_path / "m.pt", [{"id": i, "name": n} for i, n in enumerate("abc", 1)])
    assert len(load_rcnn(path)[0].predict(torch.randn(1, 3, SIZE, SIZE))[0]["scores"]) == 0
    bench = bench_rcnn(path)
    bench.encoder()
    assert len(bench.decoder()[0]["masks"]) == (5 if head == "maskrcnn" else 4)
    assert ("cap of 5 (score threshold 0)" if head == "maskrcnn" else "all 4 queries") in bench.notes[0]


def _not_rcnn(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, path)
    return path


def test_sam_det_prompts_sam_with_given_coco_detections(shapes):
    from sam_distill.methods.rcnn.recipe import prompt_with_detections, read_detections
    from sam_distill.sam.build import build_sam
    from sam_distill.sam.families import SamParts

    dataset = CocoInstances(*shapes, SIZE)
    ground_truth = dataset.coco.dataset["annotations"]
    detections = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
                  for a in ground_truth]
    grouped = read_detections(_write(shapes[0].parent / "dets.json", detections), dataset.coco)
    torch.manual_seed(0)
    results = prompt_with_detections(SamParts(build_sam("vit_tiny", SIZE)), dataset, grouped, torch.device("cpu"))
    assert results, "SAM gave every box an empty mask"
    by_box = {(r["image_id"], tuple(round(v, 3) for v in r["bbox"])): r for r in results}
    for det in detections:  # class, score and box travel through; the mask is SAM's
        result = by_box.get((det["image_id"], tuple(round(v, 3) for v in det["bbox"])))
        if result is not None:
            assert result["category_id"] == det["category_id"] and result["score"] == pytest.approx(0.9)
    assert len(by_box) == len(results)
    with pytest.raises(DistillError, match="image ids \\[999\\]"):
        read_detections(_write(shapes[0].parent / "bad.json", [{**detections[0], "image_id": 999}]), dataset.coco)
    with pytest.raises(DistillError, match="every entry needs image_id"):
        read_detections(_write(shapes[0].parent / "bad2.json", [{"bbox": [0, 0, 1, 1]}]), dataset.coco)


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_distill_run_sam_seg_and_sam_det_into_one_report(tmp_path, monkeypatch, capsys):
    from sam_distill.cli import main

    monkeypatch.chdir(tmp_path)
    base = ("train: {max_steps: 2, batch_size: 2, warmup_steps: 1, checkpoint_every: 1, log_every: 1, num_workers: 0}\n"
            f"encoder: {{name: vit_tiny, image_size: {SIZE}}}\n"
            "instances: {synthetic: {count: 8, size: 128}, val_fraction: 0.4, eval: {every: 2, overlays: 1}}\n")
    (tmp_path / "seg.yaml").write_text(f"recipe: sam_seg\nname: seg\n{base}sam_seg: {{width: 32}}\n")
    assert main(["run", "seg.yaml"]) == 0
    run = tmp_path / "runs" / "seg"
    metrics = json.loads((run / "reports" / "metrics_sam_seg.json").read_text())
    assert metrics["model"] == "sam_seg.pt" and set(metrics["metrics"]) == {"mask_AP", "mask_AP50", "mask_AP75"}
    results = json.loads((run / "reports" / "results.json").read_text())
    row = next(r for r in results["rows"] if r["model"] == "SAM-seg (sam_seg.pt)")
    assert row["total_p50_ms"] > 0 and "mask_AP" in row  # latency and accuracy side by side
    data = run / "data" / "synthetic_coco"
    capsys.readouterr()
    assert main(["eval", "ap", str(run / "model" / "sam_seg.pt"), "--annotations", str(data / "annotations.json"),
                 "--images", str(data / "images"), "--split", "val", "--val-fraction", "0.4"]) == 0
    scores = json.loads(capsys.readouterr().out)  # the run's own validation AP, from the model file alone
    recorded = json.loads((run / "reports" / "ap.json").read_text())
    assert scores["images"] == recorded["val_images"]
    assert {k: round(v, 6) for k, v in scores.items() if "_AP" in k} == \
        {k: round(v, 6) for k, v in recorded.items() if "_AP" in k}
    assert main(["predict", str(run / "model" / "sam_seg.pt"), str(data / "images"), "--out", "pred",
                 "--score-threshold", "0"]) == 0  # every instance model answers the same commands
    results = json.loads((tmp_path / "pred" / "results.json").read_text())
    assert results and {r["category_id"] for r in results} <= {1, 2, 3}
    assert len(json.loads((tmp_path / "pred" / "images.json").read_text())["images"]) == 8
    assert main(["export", str(run / "model" / "sam_seg.pt"), "--format", "onnx", "--out", "exported"]) == 2
    assert ("a SAM-det or SAM-seg model (sam_det.pt, sam_seg.pt) has no exporters; `distill export` takes: "
            in capsys.readouterr().err)

    (tmp_path / "det.yaml").write_text(f"recipe: sam_det\nname: det\n{base}"
                                       "sam_det: {detector: coco_results, detections: missing.json}\n")
    assert main(["run", "det.yaml"]) == 2
    assert "detections file missing.json does not exist" in capsys.readouterr().err
    (tmp_path / "det.yaml").write_text(f"recipe: sam_det\nname: det2\n{base}sam_det: {{detectr: yolo}}\n")
    assert main(["run", "det.yaml"]) == 2
    assert "unknown key 'sam_det.detectr'" in capsys.readouterr().err


def test_baselines_run_on_the_teacher_or_a_distilled_student(tmp_path, tiny_teacher_checkpoint):
    """encoder.checkpoint: an official-format SAM file (the teacher) or a sam-distill student model file."""
    from sam_distill.sam.build import sam_with_encoder
    from sam_distill.sam.model_file import save_model
    from sam_distill.students import create_student

    teacher_state = torch.load(tiny_teacher_checkpoint, weights_only=True)
    on_teacher = build_rcnn({"method": "sam_det", "encoder": "vit_tiny", "image_size": 256, "num_classes": 2,
                             "width": 32}, tiny_teacher_checkpoint)
    key = "patch_embed.proj.weight"
    torch.testing.assert_close(on_teacher.sam.image_encoder.state_dict()[key], teacher_state[f"image_encoder.{key}"])
    torch.testing.assert_close(on_teacher.sam.mask_decoder.state_dict()["iou_token.weight"],
                               teacher_state["mask_decoder.iou_token.weight"])

    student = sam_with_encoder(create_student("timm_resnet18", image_size=256), 256)
    path = save_model(student, tmp_path / "model.pt", "timm_resnet18")
    on_student = build_rcnn({"method": "sam_seg", "encoder": "timm_resnet18", "image_size": 256, "num_classes": 2,
                             "width": 32}, path)
    torch.testing.assert_close(on_student.sam.image_encoder.state_dict(), student.image_encoder.state_dict())
    assert len(on_student.eval().predict(torch.randn(1, 3, 256, 256))) == 1
    with pytest.raises(DistillError, match="holds a timm_resnet18 encoder but the encoder is named 'tinyvit_5m'"):
        build_rcnn({"method": "sam_seg", "encoder": "tinyvit_5m", "image_size": 256, "num_classes": 2}, path)


def test_sam_seg_mask2former_file_round_trip_bench_and_recipe_config(tmp_path):
    """SAM-seg's Mask2Former head: saved and loaded, it predicts the same masks; bench times it; the recipe's
    config section turns into its settings."""
    from sam_distill.eval.bench import bench_many
    from sam_distill.methods.config import parse_config
    from sam_distill.methods.rcnn.recipe import rcnn_config

    model = tiny_rcnn("sam_seg", **MASK2FORMER).eval()
    path = save_rcnn(model, tmp_path / "sam_seg_m2f.pt", [{"id": i, "name": n} for i, n in enumerate("abc", 1)])
    loaded, _ = load_rcnn(path)
    images = torch.randn(1, 3, SIZE, SIZE)
    first, second = model.predict(images, 0.0)[0], loaded.predict(images, 0.0)[0]
    assert first["masks"].shape == (8, SIZE // 4, SIZE // 4) and "boxes" not in first
    torch.testing.assert_close(first["masks"], second["masks"])
    torch.testing.assert_close(first["scores"], second["scores"])
    assert loaded.mask2former is not None and not hasattr(loaded, "rpn")
    row = bench_many([str(path)], runs=1, warmup=0, log=lambda m: None)["rows"][0]
    assert row["decoder_p50_ms"] > 0 and row["params"] == sum(p.numel() for p in loaded.parameters())
    config = parse_config({"recipe": "sam_seg", "encoder": {"name": "vit_tiny", "image_size": SIZE},
                           "instances": {"synthetic": {"count": 4, "size": SIZE}},
                           "sam_seg": {"head": "mask2former", "num_queries": 20, "pixel_decoder": "pyramid"}})
    settings = rcnn_config(config, "sam_seg", 3)
    assert settings["head"] == "mask2former" and settings["mask2former"]["num_queries"] == 20
    assert settings["mask2former"]["pixel_decoder"] == "pyramid"
