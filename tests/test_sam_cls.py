"""SAM-cls: everything-mode masks labelled by a pooled-feature MLP or zero-shot CLIP; text prompts shared with FastSAM."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from pycocotools import mask as mask_utils

from sam_distill.core.errors import DistillError

EVERYTHING = {"points_per_side": 4, "points_per_batch": 16, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return rle


def _rect(y1, y2, x1, x2, size=40):
    mask = np.zeros((size, size), bool)
    mask[y1:y2, x1:x2] = True
    return mask


def test_match_proposals_by_mask_iou():
    from sam_distill.methods.sam_cls.model import match_proposals

    gt = [_rect(0, 10, 0, 10), _rect(20, 40, 20, 40)]
    proposals = [_rect(0, 10, 0, 10),          # exact: class 3
                 _rect(20, 40, 20, 34),        # IoU 0.7 with the second: class 5
                 _rect(20, 40, 20, 28),        # IoU 0.4: background
                 _rect(12, 18, 12, 18)]        # no overlap: background
    labels = match_proposals([_rle(m) for m in proposals], [_rle(m) for m in gt], [3, 5], 0.5)
    assert labels.tolist() == [3, 5, 0, 0]
    assert match_proposals([_rle(m) for m in proposals], [_rle(m) for m in gt], [3, 5], 0.35).tolist()[2] == 5
    assert match_proposals([], [_rle(gt[0])], [1], 0.5).shape == (0,)
    assert match_proposals([_rle(gt[0])], [], [], 0.5).tolist() == [0]


def test_pooled_features_average_inside_the_mask():
    from sam_distill.students.heads.mask_classifier import MaskClassifier, pooled_features

    embedding = torch.randn(256, 4, 4)
    masks = torch.zeros(2, 64, 64)
    masks[0, :16, :16] = 1          # exactly grid cell (0, 0)
    masks[1, 16:48, 32:64] = 1      # cells rows 1-2, columns 2-3
    features = pooled_features(embedding, masks, (64, 64))
    assert features.shape == (2, 260)
    assert torch.allclose(features[0, :256], embedding[:, 0, 0], atol=1e-5)
    assert torch.allclose(features[1, :256], embedding[:, 1:3, 2:4].mean((1, 2)), atol=1e-5)
    # shape numbers: log area fraction, box width, box height (fractions of the image), fill of the box
    assert features[1, 256:].tolist() == pytest.approx([np.log(0.25), 0.5, 0.5, 1.0], abs=1e-5)
    assert pooled_features(embedding, masks, (64, 64), geometry=False).shape == (2, 256)
    assert MaskClassifier(3)(features).shape == (2, 4)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from sam_distill.data.coco import make_synthetic_coco

    folder = tmp_path_factory.mktemp("shapes")
    make_synthetic_coco(folder, 8, size=128, seed=3)
    return folder


def _config(shapes, run_dir, **sam_cls):
    return {"recipe": "sam_cls", "name": "sc", "run_dir": str(run_dir), "device": "cpu",
            "train": {"epochs": 80, "batch_size": 16, "lr": 3e-3, "warmup_steps": 5, "log_every": 5},
            "encoder": {"name": "vit_tiny", "image_size": 128},
            "instances": {"annotations": str(shapes / "annotations.json"), "images": str(shapes / "images"),
                          "val_fraction": 0.3, "eval": {"score_threshold": 0.0, "overlays": 1}},
            "sam_cls": {"everything": EVERYTHING, **sam_cls}}


@pytest.fixture(scope="module")
def pooled_run(shapes, tmp_path_factory):
    """The recipe end to end through the CLI, as a user runs it."""
    from sam_distill.cli import main

    root = tmp_path_factory.mktemp("pooled")
    (root / "config.yaml").write_text(yaml.safe_dump(_config(shapes, root / "run")))
    assert main(["run", str(root / "config.yaml")]) == 0
    return root


def test_recipe_writes_reports_model_and_bench(pooled_run, shapes):
    from sam_distill.data.coco import load_coco

    run = pooled_run / "run"
    metrics = json.loads((run / "reports" / "metrics_sam_cls.json").read_text())
    assert metrics["model"] == "sam_cls.pt" and set(metrics["metrics"]) == {"mask_AP", "mask_AP50", "mask_AP75"}
    assert all(0.0 <= v <= 100.0 for v in metrics["metrics"].values())
    ap = json.loads((run / "reports" / "ap.json").read_text())
    results = json.loads((run / "reports" / "val_results.json").read_text())
    coco = load_coco(shapes / "annotations.json")
    assert ap["val_images"] >= 1 and {r["category_id"] for r in results} <= set(coco.getCatIds())
    assert {r["image_id"] for r in results} <= set(coco.getImgIds())
    # proposals cached once per image, train and val
    assert len(list((run / "proposals" / "masks").glob("*.json"))) == 8
    rows = [line.split(",") for line in (run / "checkpoints" / "sam_cls" / "metrics.csv").read_text().splitlines()[1:]]
    steps, losses = [int(r[0]) for r in rows], [float(r[3]) for r in rows]
    assert len(rows) >= 3 and steps == sorted(steps) and losses[-1] < losses[0]
    assert len(list((run / "reports" / "overlays").glob("*.png"))) == 1
    payload = torch.load(run / "model" / "sam_cls.pt", map_location="cpu", weights_only=True)
    assert payload["format"] == "sam-distill/sam-cls" and [c["name"] for c in payload["classes"]] == \
        ["disc", "square", "triangle"]
    bench = json.loads((run / "reports" / "bench.json").read_text())
    row = next(r for r in bench["rows"] if r["kind"] == "sam_cls")
    assert row["encoder_p50_ms"] > 0 and row["decoder_p50_ms"] > 0 and row["params"] > 0
    assert "sam_cls.pt" in json.dumps(json.loads((run / "reports" / "results.json").read_text()))


def test_classifier_overfits_its_training_features(pooled_run, shapes):
    """The trained MLP separates its training masks (≥ 0.9); an untrained one of the same shape does not."""
    from sam_distill.methods.instances import split_datasets
    from sam_distill.methods.sam_cls.model import SamCls, load_sam_cls
    from sam_distill.methods.sam_cls.recipe import _proposal_reader, training_features
    from sam_distill.methods.sections import InstancesConfig

    model = load_sam_cls(pooled_run / "run" / "model" / "sam_cls.pt")
    spec = InstancesConfig(annotations=shapes / "annotations.json", images=shapes / "images", val_fraction=0.3,
                           augment=False)
    train_set, val_set = split_datasets(spec.annotations, spec.images, spec, 128)
    _, proposals_of = _proposal_reader([train_set, val_set], pooled_run / "run" / "proposals")
    features, labels = training_features(model, train_set, proposals_of, 0.5)
    assert len(features) == len(labels) and set(labels.tolist()) >= {1, 2, 3}
    with torch.no_grad():
        trained = model.classifier(features).argmax(1)
        torch.manual_seed(1)
        untrained = SamCls(model.sam, model.config, model.classes, {}).classifier(features).argmax(1)
    accuracy = (trained == labels).float().mean().item()
    assert accuracy >= 0.9
    assert (untrained == labels).float().mean().item() < accuracy - 0.3


def test_rerun_reuses_cached_proposals(pooled_run):
    from sam_distill.methods.config import load_config
    from sam_distill.runner import run

    log = pooled_run / "run" / "logs" / "run.log"
    before = log.read_text().count("\n")
    run(load_config(pooled_run / "config.yaml"))
    assert any("8 already labelled, 0 to do" in line for line in log.read_text().splitlines()[before:])


def test_bench_times_encoder_and_everything_mode(pooled_run):
    from sam_distill.eval.bench import load_bench_model
    from sam_distill.methods.sam_cls.model import load_sam_cls
    from sam_distill.sam.families import ImageFeatures

    model = load_sam_cls(pooled_run / "run" / "model" / "sam_cls.pt")
    logits = model.decode_and_classify(ImageFeatures(torch.randn(1, 256, 8, 8)))
    assert logits.shape == (EVERYTHING["points_per_side"] ** 2, 4)  # one mask per grid point, background + 3
    bench = load_bench_model(str(pooled_run / "run" / "model" / "sam_cls.pt"))
    assert bench.kind == "sam_cls" and bench.image_size == 128 and "point grid" in bench.notes[0]
    assert bench.encoder().embed.shape == (1, 256, 8, 8)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random open_clip model in the real file format (no pretrained CLIP exists here)."""
    import open_clip

    folder = tmp_path_factory.mktemp("clip")
    config = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                              "patch_size": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (folder / "tiny-clip-sc.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / "tiny-clip-sc.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("tiny-clip-sc").state_dict(), folder / "tiny_clip.pt")
    return folder


def test_clip_zero_shot_shares_fastsam_embeddings(tiny_clip):
    from sam_distill.sam.text_prompts import classify_masks, load_clip, mask_crops, select_by_text

    scorer = load_clip(tiny_clip / "tiny_clip.pt", "tiny-clip-sc", tiny_clip / "tiny-clip-sc.json")
    image = np.random.default_rng(0).integers(0, 255, (40, 40, 3)).astype(np.uint8)
    masks = np.stack([_rect(0, 20, 0, 20), _rect(20, 40, 10, 40), _rect(0, 2, 0, 2)])
    text = scorer.text_features(["disc", "square", "background"], ["a photo of a {}.", "a {}"])
    assert text.shape == (3, 16) and torch.allclose(text.norm(dim=1), torch.ones(3), atol=1e-5)
    probabilities = classify_masks(scorer, image, masks, text, scorer.logit_scale)
    assert probabilities.shape == (3, 3) and probabilities[2].sum() == 0  # too small to crop: no vote
    assert torch.allclose(probabilities[:2].sum(1), torch.ones(2), atol=1e-5)
    crops, _ = mask_crops(image, masks)
    expected = (scorer.logit_scale * scorer.image_features(crops[:1]) @ text.T).softmax(-1)[0]
    assert torch.allclose(probabilities[0], expected, atol=1e-5)
    # FastSAM's text selection scores with the same image and text embeddings
    best, scores = select_by_text(scorer, image, masks, "square")
    single = scorer.text_features(["square"])
    assert scores[:2].tolist() == pytest.approx((scorer.image_features(crops) @ single.T)[:, 0].tolist(), abs=1e-5)
    assert best == int(scores.argmax())
    with pytest.raises(DistillError, match="no '\\{\\}'"):
        scorer.text_features(["disc"], ["a photo"])


def test_clip_recipe_and_text_prompt_command(shapes, tiny_clip, tmp_path):
    from sam_distill.cli import main
    from sam_distill.methods.config import parse_config
    from sam_distill.runner import run

    config = parse_config(_config(shapes, tmp_path / "run", classifier="clip",
                                  clip_checkpoint=str(tiny_clip / "tiny_clip.pt"), clip_model="tiny-clip-sc",
                                  clip_config=str(tiny_clip / "tiny-clip-sc.json"), templates=["a {} shape"],
                                  background=["background", "texture"]))
    run_dir = run(config).path
    payload = torch.load(run_dir / "model" / "sam_cls.pt", map_location="cpu", weights_only=True)
    assert payload["classifier_state"]["text_features"].shape == (3 + 2, 16)
    results = json.loads((run_dir / "reports" / "val_results.json").read_text())
    assert {r["category_id"] for r in results} <= {1, 2, 3}
    assert (run_dir / "reports" / "metrics_sam_cls.json").is_file()
    # only val images need proposals for a zero-shot classifier
    assert 1 <= len(list((run_dir / "proposals" / "masks").glob("*.json"))) < 8

    out = tmp_path / "pred"
    assert main(["predict", str(run_dir / "model" / "sam_cls.pt"), str(shapes / "images" / "shapes_0000.png"),
                 "--out", str(out), "--text", "a red disc"]) == 0
    found = json.loads((out / "results.json").read_text())
    assert len(found) == 1 and all(r["category_id"] in (1, 2, 3) and "text_similarity" in r for r in found)
    assert json.loads((out / "images.json").read_text())["images"][0]["file_name"] == "shapes_0000.png"


def test_errors_are_one_line(shapes, tmp_path, capsys):
    from sam_distill.cli import main

    config = _config(shapes, tmp_path / "run", classifier="clip")
    (tmp_path / "clip.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", str(tmp_path / "clip.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "sam_cls.clip_checkpoint" in err and "open_clip weights" in err

    config["sam_cls"]["classifer"] = "pooled"
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", str(tmp_path / "typo.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "sam_cls.classifer" in err and "classifier" in err and "templates" in err

    assert main(["predict", str(tmp_path / "nothing.pt"), str(shapes / "images"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_predict_command_matches_the_recipes_validation(pooled_run, shapes, tmp_path, capsys):
    """`distill predict` on a validation image gives what the recipe scored for it (same proposals,
    embedding and classifier), written as COCO results with an overlay."""
    from sam_distill.cli import main
    from sam_distill.data.coco import load_coco

    run = pooled_run / "run"
    expected = json.loads((run / "reports" / "val_results.json").read_text())
    val_ids = json.loads((run / "reports" / "ap.json").read_text())
    coco = load_coco(shapes / "annotations.json")
    assert expected, "the trained classifier kept no validation mask: nothing to compare"
    image_id = expected[0]["image_id"]
    name = coco.imgs[image_id]["file_name"]
    assert main(["predict", str(run / "model" / "sam_cls.pt"), str(shapes / "images" / name),
                 "--out", str(tmp_path), "--score-threshold", "0"]) == 0
    found = json.loads((tmp_path / "results.json").read_text())

    def key(results):
        return sorted((r["category_id"], round(r["score"], 4), tuple(round(v, 1) for v in r["bbox"])) for r in results)

    assert key(found) == key([r for r in expected if r["image_id"] == image_id]) and val_ids["val_images"] >= 1
    assert (tmp_path / "overlays" / name).is_file()
    capsys.readouterr()
    # options this pooled-classifier model has no use for are refused, not ignored
    assert main(["predict", str(run / "model" / "sam_cls.pt"), str(shapes / "images" / name), "--out",
                 str(tmp_path / "o"), "--clip-checkpoint", "clip.pt"]) == 2
    assert "pooled-feature head" in capsys.readouterr().err
    assert main(["predict", str(run / "model" / "sam_cls.pt"), str(shapes / "images" / name), "--out",
                 str(tmp_path / "o"), "--box", "1", "2", "3", "4"]) == 2
    assert "--box does not apply to" in capsys.readouterr().err


def test_sam_cls_refuses_an_encoder_that_would_train(tmp_path):
    """SAM-cls pools features of a frozen encoder; encoder.train lora/full is a one-line refusal, not ignored."""
    from sam_distill.methods.config import parse_config
    from sam_distill.runner import run

    config = parse_config({"recipe": "sam_cls", "name": "x", "run_dir": str(tmp_path / "run"),
                           "encoder": {"name": "vit_tiny", "image_size": 64, "train": "lora"},
                           "instances": {"synthetic": {"count": 2, "size": 64}}})
    with pytest.raises(DistillError, match="encoder.train lora does not apply to it"):
        run(config)
