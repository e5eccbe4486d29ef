"""``distill sam-cls predict``: a SAM-cls model on new images, optionally selecting masks by text with CLIP.

The text path is FastSAM's (``clip_select.select_by_text``): every everything-mode mask is cropped,
embedded by CLIP and compared with the text; the best one is kept, labelled by the model's classifier.
"""
from __future__ import annotations

from pathlib import Path


def predict_images(model, paths: list[Path], generator, score_threshold: float, scorer=None, text: str | None = None,
                   log=print) -> tuple[list[dict], list[dict]]:
    """(COCO results, COCO image entries with their ``path``): everything mode → classifier; with ``text`` only
    the mask CLIP matches best to it (its ``text_similarity`` added). Unreadable images are skipped."""
    from sam_distill.core.images import Preprocessing
    from sam_distill.data.everything import label_image
    from sam_distill.methods.instance_predict import readable_images
    from sam_distill.methods.sam_cls.model import decode_rles
    from sam_distill.sam.text_prompts import select_by_text

    preprocessing = Preprocessing(model.image_size)
    results, images = [], []
    for image, item, entry in readable_images(paths, model.image_size, desc="sam-cls", log=log):
        image_id, input_size = item["image_id"], item["input_size"]
        proposals = label_image(generator, image)
        masks = decode_rles(proposals, *item["original_size"])
        embedding = model.embed(preprocessing(image)) if model.classifier is not None else None
        probabilities = model.probabilities(embedding, masks, input_size, image, scorer)
        if text is None:
            results += model.to_results(proposals, probabilities, image_id, score_threshold)
        else:
            best, similarity = select_by_text(scorer, image, masks, text)
            if best is not None:
                labels, scores, _ = model.label(proposals, probabilities)
                found = model.result(proposals[best], image_id, labels[best], scores[best])
                results.append({**found, "text": text, "text_similarity": float(similarity[best])})
        images.append(entry)
    return results, images


def cmd_predict(args) -> int:
    import torch

    from sam_distill.core.images import find_images
    from sam_distill.methods.instance_predict import write_predictions
    from sam_distill.methods.sam_cls.model import load_sam_cls
    from sam_distill.sam.teachers import make_generator
    from sam_distill.sam.text_prompts import load_clip

    model = load_sam_cls(args.model)
    device = torch.device(args.device)
    model.to(device)
    scorer = None
    if args.text is not None or model.classifier is None:
        stored = model.config.get("clip_checkpoint")
        checkpoint = args.clip_checkpoint or (Path(stored) if stored else None)
        scorer = load_clip(checkpoint, args.clip_model or model.config.get("clip_model", "ViT-B-32"),
                           args.clip_config or model.config.get("clip_config"), device,
                           purpose="--text and CLIP-classified SAM-cls models need")
    paths = find_images(args.images) if args.images.is_dir() else [args.images]
    generator = make_generator(model.sam, model.config["generator"], device)
    results, images = predict_images(model, paths, generator, args.score_threshold, scorer, args.text)
    write_predictions(args.out, results, images, model.classes, args.overlays, min_score=0.0)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("sam-cls", help="SAM-cls models: everything mode + a mask classifier")
    sub = p.add_subparsers(dest="sam_cls_command", metavar="WHAT")
    t = sub.add_parser("predict", help="labelled instance masks (or the mask matching --text) for images")
    t.add_argument("model", type=Path, help="model/sam_cls.pt of a `recipe: sam_cls` run")
    t.add_argument("images", type=Path, help="an image or a folder of images")
    t.add_argument("--out", type=Path, required=True, help="folder for results.json, images.json and overlays/")
    t.add_argument("--text", help="keep only the mask CLIP matches best to this text, per image")
    t.add_argument("--clip-checkpoint", type=Path, help="local open_clip weights (default: the model's own)")
    t.add_argument("--clip-model", help="open_clip architecture (default: the model's, else ViT-B-32)")
    t.add_argument("--clip-config", type=Path, help="architecture JSON of a custom open_clip model")
    t.add_argument("--score-threshold", type=float, default=0.05)
    t.add_argument("--overlays", type=int, default=8, help="overlay images written")
    t.add_argument("--device", default="cpu")
    t.set_defaults(func=cmd_predict)
