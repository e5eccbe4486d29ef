"""``distill predict`` and ``distill eval ap`` for every kind of model file, through the one model-file table.

Each kind's ``predict`` function (``ModelKind.predict``) is called as ``predict(model_path, image_paths, device,
**options)`` and returns :class:`Predictions`; its keyword-only parameters are the options it takes, so an option
given for a kind that has no use for it is refused in one line naming what the kind does take, never ignored.
Every kind's output is written in one layout (:func:`write_predictions`), which ``distill eval ap`` reads back.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import torch

from sam_distill.core.errors import DistillError
from sam_distill.core.images import IMAGE_SUFFIXES
from sam_distill.methods.instance_predict import Predictions

# Options named by their command-line flag where the parameter name is not the flag's.
FLAGS = {"points": "--point", "generator": "the everything-mode settings (--points-per-side, ...)"}
# Suffixes that say "a file" where ``--out`` must be a folder.
FILE_SUFFIXES = IMAGE_SUFFIXES | {".json"}


def flag(option: str) -> str:
    return FLAGS.get(option, f"--{option.replace('_', '-')}")


def predictor(model: Path | str, options: dict):
    """The ``predict`` function of ``model``'s kind, after checking that the kind takes every option given."""
    from sam_distill.core.model_files import identify

    kind = identify(model)
    function = kind.function("predict")
    takes = [name for name, parameter in inspect.signature(function).parameters.items()
             if parameter.kind is inspect.Parameter.KEYWORD_ONLY]
    for option in options:
        if option not in takes:
            accepted = ", ".join(flag(name) for name in takes) or "no options"
            raise DistillError(f"{flag(option)} does not apply to {model}, {kind.what}; it takes {accepted}")
    return function


def predict_paths(model: Path | str, paths: list[Path], device: torch.device, options: dict,
                  source: Path | str) -> Predictions:
    """``model``'s predictions on ``paths`` (read from ``source``); none of them readable is one sentence."""
    predictions = predictor(model, options)(Path(model), paths, device, **options)
    if not predictions.images:
        raise DistillError(f"none of the {len(paths)} image(s) of {source} could be read (reasons above)")
    return predictions


def output_folder(out: Path | str) -> Path:
    """``--out`` as the folder the layout goes into; a path that names a file is one sentence."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DistillError(f"--out {out} is an existing file; give a folder for results.json, images.json and overlays/")
    if out.suffix.lower() in FILE_SUFFIXES:
        raise DistillError(f"--out {out} names a {out.suffix} file, but predictions are a folder (results.json, "
                           f"images.json, overlays/); give a folder such as {out.with_suffix('')}")
    return out


def predict_to_folder(model: Path | str, images: Path | str, out: Path | str, device: torch.device, options: dict,
                      overlays: int = 20, overlay_min_score: float = 0.3) -> Predictions:
    """``distill predict``: ``model`` on an image or an image folder, written to ``out`` in the one layout."""
    from sam_distill.core.images import find_images
    from sam_distill.methods.instance_predict import write_predictions

    out = output_folder(out)
    predictor(model, options)  # a wrong option fails before the images are listed
    predictions = predict_paths(model, find_images(images), device, options, images)
    write_predictions(out, *predictions, overlays, overlay_min_score)
    return predictions


def read_predictions(source: Path) -> Predictions:
    """A COCO results file, or ``distill predict``'s layout (its folder or its results.json): the image entries
    and categories come with the layout only (empty lists otherwise)."""
    from sam_distill.eval.coco_ap import load_json

    source = Path(source)
    results_file = source / "results.json" if source.is_dir() else source
    if source.is_dir() and not results_file.is_file():
        raise DistillError(f"{source} is a folder without results.json; give a `distill predict` output folder, "
                           f"a COCO results file or a model file")
    results = load_json(results_file, "results")
    if not isinstance(results, list) or not all(isinstance(r, dict) and "image_id" in r for r in results):
        raise DistillError(f"results file {results_file} is not a COCO results list (entries with image_id, "
                           f"category_id, segmentation, score)")
    layout = results_file.parent / "images.json"
    if not layout.is_file():
        return Predictions(results, [], [])
    written = load_json(layout, "predictions' image list")
    return Predictions(results, written.get("images", []), written.get("categories", []))


def ground_truth_id(entry: dict, by_parts: dict[tuple[str, ...], int]) -> int | None:
    """The ground-truth image a predicted image entry is: the one whose ``file_name`` is the longest tail of the
    path it was read from (``images/sub/a.png`` is ``sub/a.png`` before ``a.png``)."""
    parts = Path(entry.get("path") or entry["file_name"]).parts
    return next((by_parts[parts[start:]] for start in range(len(parts)) if parts[start:] in by_parts), None)


def to_ground_truth(predictions: Predictions, coco, class_agnostic: bool) -> list[dict]:
    """Predicted results in the ground truth's ids: images matched by file name, categories by name (unless
    ``class_agnostic``). Results without image entries are taken to use the ground truth's ids already."""
    results = predictions.results
    if predictions.images:
        by_parts = {Path(info["file_name"]).parts: image_id for image_id, info in coco.imgs.items()}
        ids = {entry["id"]: ground_truth_id(entry, by_parts) for entry in predictions.images}
        strangers = sorted(entry["file_name"] for entry in predictions.images if ids[entry["id"]] is None)
        if strangers:
            raise DistillError(f"predicted images {', '.join(strangers[:3])} are not in the ground truth's images")
        results = [{**r, "image_id": ids[r["image_id"]]} for r in results]
    if class_agnostic or not predictions.classes:
        return results
    category_of = {c["name"]: c["id"] for c in coco.dataset["categories"]}
    names = {c["id"]: c["name"] for c in predictions.classes}
    unknown = sorted({names[r["category_id"]] for r in results} - set(category_of))
    if unknown:
        raise DistillError(f"the model's classes {sorted(set(names.values()))} are not the ground truth's "
                           f"{sorted(category_of)} (no {', '.join(unknown)}); add --class-agnostic to score the "
                           f"masks alone")
    return [{**r, "category_id": category_of[names[r["category_id"]]]} for r in results]


def evaluate_ap(source: Path | str, annotations: Path | str, images: Path | str | None = None,
                device: torch.device | None = None, options: dict | None = None, split: str = "all",
                val_fraction: float = 0.2, class_agnostic: bool = False) -> dict:
    """``distill eval ap``: COCO mask and box AP/AP50/AP75 (in [0, 1]) against ``annotations``, of a model file
    (run on the annotated images in ``images``) or of predictions already made (a COCO results file or
    ``distill predict``'s output). ``split`` "val"/"train" keeps the file-name-hash split the instance
    recipes train with (``val_fraction`` as their ``instances.val_fraction``)."""
    from sam_distill.data.coco import load_coco, split_image_ids
    from sam_distill.eval.coco_ap import instance_ap

    source = Path(source)
    made = source.is_dir() or source.suffix.lower() == ".json"  # predictions already made, else a model file
    if made and options:
        raise DistillError(f"{', '.join(flag(o) for o in options)} go with a model file; {source} holds "
                           f"predictions already made")
    if not made and images is None:
        raise DistillError(f"scoring model {source} needs --images, the folder the file_name entries of "
                           f"{annotations} are relative to")
    if made:
        predictions = read_predictions(source)
    else:
        predictor(source, options or {})  # a file that is no model, or a wrong option, fails before any work
    coco = load_coco(Path(annotations))
    ids = split_image_ids(coco, split, val_fraction, annotations)
    if not made:
        paths = [Path(images) / coco.imgs[i]["file_name"] for i in ids]
        predictions = predict_paths(source, paths, device or torch.device("cpu"), options or {}, images)
    results = to_ground_truth(predictions, coco, class_agnostic)
    # a whole scene's prediction (distill predict --tile writes scene.json) is one image of thousands of objects:
    # COCO's cap of 100 detections an image would score only the best 100 of them
    scene = made and source.is_dir() and (source / "scene.json").exists()
    cap = max(100, len(results)) if scene else 100
    return {"images": len(ids), **instance_ap(coco, results, ids, class_agnostic, cap),
            **({"max_detections": cap} if scene else {})}
