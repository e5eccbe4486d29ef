"""FastSAM-style students: ultralytics' YOLO-seg trained by ultralytics' own trainer, fully offline.

Offline means: ``YOLO_OFFLINE=1`` (ultralytics then skips its online checks and hub events),
``plots=False`` (its plots fetch Arial.ttf; we draw our own curve from results.csv), ``amp=False``
off CUDA (the AMP check downloads yolo11n.pt), and models built from YAML or a local ``.pt`` only.
The ``.pt`` files written are ultralytics' own, so ``ultralytics.YOLO`` and ``ultralytics.FastSAM``
load them unchanged.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from sam_distill.core.errors import DistillError
from sam_distill.methods.fastsam.config import FastSAMConfig
from sam_distill.methods.registry import register_method
from sam_distill.methods.sections import DataConfig, TeacherConfig

VARIANTS = [f"yolov8{s}-seg" for s in "nsmlx"] + [f"yolo11{s}-seg" for s in "nsmlx"]


def offline() -> None:
    """Set before ultralytics is first imported: its ONLINE flag is computed at import."""
    os.environ["YOLO_OFFLINE"] = "1"


def resolve_model(model: str | Path) -> str:
    """A variant name (→ its model YAML, from scratch) or a local ultralytics ``.pt``."""
    text = str(model)
    if text.endswith(".pt"):
        if not Path(text).is_file():
            raise DistillError(f"model checkpoint {text} does not exist; give a local .pt or a variant "
                               f"({', '.join(VARIANTS)})")
        return text
    name = text[:-5] if text.endswith(".yaml") else text
    if name not in VARIANTS:
        raise DistillError(f"unknown YOLO-seg variant {text!r}; choose one of: {', '.join(VARIANTS)} (or a local .pt)")
    return f"{name}.yaml"


def ultralytics_device(device: str) -> str:
    import torch

    if device == "auto":
        return "0" if torch.cuda.is_available() else "cpu"
    return device.replace("cuda:", "") if device.startswith("cuda") else device


def train_yolo(data_yaml: Path, model: str | Path, project: Path, name: str = "train", epochs: int = 50,
               imgsz: int = 640, batch: int = 16, device: str = "auto", workers: int = 2, seed: int = 0,
               patience: int = 100, extra: dict | None = None, log=print) -> dict:
    """Train (or resume) in ``project/name``; returns the weights and the final metrics row.

    Resume: when ``project/name/weights/last.pt`` exists and the run did not finish, ultralytics
    continues it bit for bit (``resume=True``); a finished run is returned as it is.
    """
    offline()
    from ultralytics import YOLO

    data_yaml = Path(data_yaml)
    if not data_yaml.is_file():
        raise DistillError(f"dataset file {data_yaml} does not exist; make one with `distill yolo-data`")
    run = Path(project) / name
    weights = run / "weights"
    finished = run / "finished.json"
    if finished.exists():
        log(f"yolo: training in {run} already finished; using {weights / 'best.pt'}")
        return _summary(run)
    device = ultralytics_device(device)
    if (weights / "last.pt").exists():
        log(f"yolo: resuming {weights / 'last.pt'}")
        YOLO(str(weights / "last.pt")).train(resume=True, workers=workers, device=device)
    else:
        source = resolve_model(model)
        log(f"yolo: training {source} on {data_yaml} for {epochs} epochs at {imgsz} px in {run}")
        yolo = YOLO(source, task="segment")
        yolo.train(data=str(data_yaml.resolve()), epochs=epochs, imgsz=imgsz, batch=batch, device=device,
                   workers=workers, seed=seed, deterministic=True, project=str(Path(project).resolve()), name=name,
                   exist_ok=True, plots=False, amp=device != "cpu", patience=patience, verbose=False,
                   **(extra or {}))
    from sam_distill.core.fileio import atomic_write_json

    summary = _summary(run)
    atomic_write_json(finished, summary)
    return summary


def _summary(run: Path) -> dict:
    import csv

    results = run / "results.csv"
    rows = []
    if results.exists():
        with open(results, newline="") as f:
            rows = [{k.strip(): v.strip() for k, v in row.items()} for row in csv.DictReader(f)]
    weights = run / "weights"
    best = weights / "best.pt" if (weights / "best.pt").exists() else weights / "last.pt"
    return {"run": str(run), "best": str(best), "last": str(weights / "last.pt"), "epochs": len(rows),
            "final": rows[-1] if rows else {}}


def plot_results(results_csv: Path, out_png: Path, columns=("metrics/mAP50(M)", "metrics/mAP50-95(M)",
                                                             "metrics/mAP50(B)")) -> Path:
    """Mask/box mAP per epoch from ultralytics' results.csv, drawn with matplotlib (no font download)."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(results_csv, newline="") as f:
        rows = [{k.strip(): v.strip() for k, v in row.items()} for row in csv.DictReader(f)]
    figure, axis = plt.subplots(figsize=(6, 4))
    epochs = [int(float(r["epoch"])) for r in rows]
    for column in columns:
        if rows and column in rows[0]:
            axis.plot(epochs, [float(r[column]) for r in rows], marker="o", label=column.replace("metrics/", ""))
    axis.set_xlabel("epoch")
    axis.set_ylabel("mAP (val)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=120)
    plt.close(figure)
    return out_png


def export_yolo(pt_path: Path, formats: list[str], out_dir: Path, imgsz: int = 640) -> dict[str, str]:
    """ultralytics' exporters (``onnx``, ``coreml``, ...) for a trained YOLO-seg ``.pt``; files moved to ``out_dir``."""
    offline()
    from ultralytics import YOLO

    pt_path, out_dir = Path(pt_path), Path(out_dir)
    if not pt_path.is_file():
        raise DistillError(f"model {pt_path} does not exist")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for fmt in formats:
        staging = out_dir / f".{pt_path.stem}-{fmt}"
        staging.mkdir(exist_ok=True)
        shutil.copy2(pt_path, staging / pt_path.name)
        produced = Path(YOLO(str(staging / pt_path.name)).export(format=fmt, imgsz=imgsz, device="cpu"))
        target = out_dir / produced.name
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        shutil.move(str(produced), target)
        shutil.rmtree(staging)
        written[fmt] = str(target)
    return written


def predict_coco(weights: Path, val_coco: Path | dict, images_dir: Path, imgsz: int, conf: float = 0.01,
                 device: str = "cpu") -> list[dict]:
    """The student's masks on every image of a COCO ground truth, as COCO results (category = class + 1)."""
    from sam_distill.core.fileio import read_json
    from sam_distill.core.images import load_rgb
    from sam_distill.eval.coco_ap import masks_to_results
    from sam_distill.methods.fastsam.student import YoloSegStudent

    gt = read_json(val_coco) if isinstance(val_coco, (str, Path)) else val_coco
    student = YoloSegStudent(weights, imgsz=imgsz, conf=conf, max_det=100, device=ultralytics_device(device))
    results = []
    for image in gt["images"]:
        found = student.everything(load_rgb(Path(images_dir) / image["file_name"]))
        results += masks_to_results(image["id"], found.masks, found.scores, found.classes + 1)
    return results


def evaluate_yolo(weights: Path, dataset_dir: Path, imgsz: int, class_agnostic: bool, conf: float = 0.01,
                  device: str = "cpu") -> dict:
    """Mask AP of a student on the val split of a converted dataset (its ``val_coco.json``)."""
    from sam_distill.eval.coco_ap import mask_ap

    val_coco = Path(dataset_dir) / "val_coco.json"
    results = predict_coco(weights, val_coco, Path(dataset_dir) / "images" / "val", imgsz, conf, device)
    return mask_ap(val_coco, results, class_agnostic=class_agnostic)


def evaluate_on_split(weights: Path, annotations: Path, images_dir: Path, val_fraction: float, imgsz: int,
                      class_agnostic: bool, conf: float = 0.01, device: str = "cpu") -> dict:
    """Mask AP of a student on the validation side of a COCO file's fixed split (the instance recipes' own and
    ``eval miou``'s), so a student distilled from ``data.split: train`` is scored on images it never saw."""
    from sam_distill.data.coco import load_coco, split_image_ids
    from sam_distill.eval.coco_ap import mask_ap

    coco = load_coco(annotations)
    ids = split_image_ids(coco, "val", val_fraction, annotations)
    val_coco = {**coco.dataset, "images": [coco.imgs[i] for i in ids]}
    results = predict_coco(weights, val_coco, images_dir, imgsz, conf, device)
    return {**mask_ap(coco.dataset, results, class_agnostic=class_agnostic, image_ids=ids),
            "annotations": str(annotations), "split": "val", "val_fraction": val_fraction}


def score_labels(labels_dir: Path, annotations: Path, images_dir: Path) -> dict | None:
    """Class-agnostic mask AP of the teacher's everything-mode labels themselves against the ground truth of the
    images they cover (ranked by the teacher's predicted IoU), or None when no labelled image is in the COCO file.

    A student is read against its labeller: this is what the YOLO student was taught, scored as if it were a
    prediction, so a low student AP can be told apart from a teacher that labels poorly."""
    from sam_distill.data.coco import load_coco
    from sam_distill.data.everything import labels_as_results, read_label_set
    from sam_distill.eval.coco_ap import mask_ap

    coco = load_coco(annotations)
    # matched by the files themselves: label paths are relative to the labelled folder, COCO's to images_dir
    ids_by_path = {(Path(images_dir) / info["file_name"]).resolve(): image_id for image_id, info in coco.imgs.items()}
    header, records = read_label_set(labels_dir)
    results, ids = [], []
    for record in records:
        image_id = ids_by_path.get((Path(header["images"]) / record["image"]["file_name"]).resolve())
        if image_id is None:
            continue
        ids.append(image_id)
        results += labels_as_results(image_id, record["annotations"])
    if not ids:
        return None
    return {**mask_ap(coco.dataset, results, class_agnostic=True, image_ids=sorted(ids)),
            "annotations": str(annotations), "what": "the teacher's pseudo-labels on the images they cover"}


@register_method("fastsam", {"teacher": TeacherConfig, "data": DataConfig, "fastsam": FastSAMConfig})
def run_fastsam(config, run_dir) -> dict:
    """pseudo-label → convert → train → evaluate → export → report, each stage resumable."""
    from sam_distill.core.device import init_distributed
    from sam_distill.core.fileio import atomic_write_json, atomic_write_text
    from sam_distill.data.everything import generator_settings, pseudo_label
    from sam_distill.data.yolo import convert_coco, convert_pseudo_labels
    from sam_distill.methods.inputs import resolve_images, resolve_teacher

    spec = config.fastsam
    context = init_distributed(config.device)
    log = run_dir.log if context.is_main else (lambda message: None)
    resolve_model(spec.variant)  # fail on a bad name before hours of labelling
    images = resolve_images(config, run_dir)
    if spec.train_on == "ground_truth" and spec.ground_truth is None:
        raise DistillError("config: fastsam.train_on is ground_truth but fastsam.ground_truth (a COCO file) is not set")
    teacher = resolve_teacher(config, run_dir)
    labels_dir = run_dir.path / "pseudo_labels"
    result = {"pseudo_label": pseudo_label(teacher, images, labels_dir,
                                           generator_settings(**spec.pseudo_label.model_dump()), context, log)}
    if not context.is_main:
        return result
    knobs = {"val_fraction": spec.val_fraction, "min_area": spec.min_area, "max_components": spec.max_components}
    pseudo_data = run_dir.path / "yolo_data" / "pseudo_labels"
    gt_data = run_dir.path / "yolo_data" / "ground_truth"
    if spec.train_on == "pseudo_labels":
        result["pseudo_data"] = convert_pseudo_labels(labels_dir, pseudo_data, **knobs)
    else:
        try:  # a teacher that finds nothing still leaves a ground-truth run to evaluate against
            result["pseudo_data"] = convert_pseudo_labels(labels_dir, pseudo_data, **knobs)
        except DistillError as err:
            log(f"pseudo-labels: {err}")
    labels_quality = (score_labels(labels_dir, config.data.annotations, config.data.images)
                      if config.data.annotations and config.data.images else None)
    if labels_quality is not None:
        stats = labels_quality["stats"]
        log(f"pseudo-labels against the ground truth of their {labels_quality['images']} images (class-agnostic): "
            f"mask AP {stats['AP']:.4f}, AP50 {stats['AP50']:.4f}")
    if spec.ground_truth is not None:
        result["gt_data"] = convert_coco(spec.ground_truth, config.data.images or images, gt_data, **knobs)
    train_data = pseudo_data if spec.train_on == "pseudo_labels" else gt_data
    log(f"data: {json_line(result.get('pseudo_data' if spec.train_on == 'pseudo_labels' else 'gt_data'))}")

    trained = train_yolo(train_data / "data.yaml", spec.variant, run_dir.path / "yolo", epochs=spec.epochs,
                         imgsz=spec.imgsz, batch=spec.batch, device=config.device, workers=spec.workers,
                         seed=config.seed, patience=spec.patience, log=log)
    model_dir = run_dir.sub("model")
    model_path = model_dir / "fastsam.pt"
    shutil.copy2(trained["best"], model_path)
    result["train"] = trained
    reports = run_dir.sub("reports")
    plot_results(Path(trained["run"]) / "results.csv", reports / "training_map.png")

    evaluation = {"teacher_labels_vs_ground_truth": labels_quality} if labels_quality is not None else {}
    if (pseudo_data / "val_coco.json").exists():
        evaluation["vs_teacher"] = evaluate_yolo(model_path, pseudo_data, spec.imgsz, True, spec.eval_conf, config.device)
    if spec.ground_truth is not None:
        evaluation["vs_ground_truth"] = evaluate_yolo(model_path, gt_data, spec.imgsz, spec.train_on == "pseudo_labels",
                                                      spec.eval_conf, config.device)
    if config.data.annotations is not None and config.data.split == "train":
        evaluation["vs_ground_truth_val_split"] = evaluate_on_split(
            model_path, config.data.annotations, config.data.images, config.data.val_fraction, spec.imgsz,
            spec.train_on == "pseudo_labels", spec.eval_conf, config.device)
    atomic_write_json(reports / "mask_ap.json", evaluation)
    student_scores = [evaluation[key] for key in ("vs_ground_truth_val_split", "vs_ground_truth", "vs_teacher")
                      if key in evaluation]
    if student_scores:  # the report's contract: the student's AP in percent, against unseen ground truth first
        stats = student_scores[0]["stats"]
        atomic_write_json(reports / "metrics_fastsam.json", {"model": model_path.name, "metrics": {
            f"mask_{key}": stats[key] * 100 for key in ("AP", "AP50", "AP75")}})
    result["eval"] = evaluation
    result["export"] = export_yolo(model_path, spec.export, model_dir, spec.imgsz) if spec.export else {}
    atomic_write_text(reports / "fastsam.md", format_report(config, teacher.describe(), result))
    log(format_report(config, teacher.describe(), result))
    return result


def json_line(obj) -> str:
    import json

    return json.dumps(obj, default=str)


def format_report(config, teacher: str, result: dict) -> str:
    spec = config.fastsam
    final = result["train"]["final"]
    data = result.get("pseudo_data")
    labels = (f"{data['images']} images, {data['instances']} masks kept for training (dropped: "
              f"{json_line(data['dropped'])}); labelled by this invocation: " if data else "")
    lines = [f"# FastSAM-style student: {spec.variant} from {teacher}", "",
             f"- pseudo-labels: {labels}{json_line(result['pseudo_label'])}",
             f"- trained on {spec.train_on}: {result['train']['epochs']} epochs at {spec.imgsz} px; last val "
             f"mask mAP50 {float(final.get('metrics/mAP50(M)', 0)):.4f}", "",
             "| evaluation | mask AP | AP50 | AP75 | images | instances |", "|---|---|---|---|---|---|"]
    for name, ev in result["eval"].items():
        stats = ev["stats"]
        lines.append(f"| {name} | {stats['AP']:.4f} | {stats['AP50']:.4f} | {stats['AP75']:.4f} | {ev['images']} "
                     f"| {ev['ground_truth_instances']} |")
    lines += ["", f"model: {config.resolved_run_dir() / 'model' / 'fastsam.pt'}"]
    lines += [f"export {fmt}: {path}" for fmt, path in result["export"].items()]
    return "\n".join(lines) + "\n"
