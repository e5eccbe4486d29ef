"""Training and evaluating the automatic instance models (RSPrompter heads, SAM-det, SAM-seg) on COCO data.

:class:`InstanceObjective` puts any of them in the training loop of ``sam_distill.train.loop`` (resume, AMP, DDP,
metrics.csv), with the validation AP measured along the way into ap.csv/ap_curve.png. A model only needs
``losses(images, targets)`` (a dict of scalars), ``predict(images, score_threshold)``, ``image_size`` and
``train_encoder``/``train_decoder``. The shared recipe steps (data, split, train, AP, reports) live here too, so
every method is measured alike."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from sam_distill.core.device import DistContext
from sam_distill.core.errors import DistillError
from sam_distill.core.rundir import read_metrics
from sam_distill.train.loop import Objective

TARGET_KEYS = ("masks", "boxes", "labels")


class InstanceObjective(Objective):
    """An instance model's own ``losses`` on COCO batches; only its trainable parts are checkpointed.

    ``evaluate`` (a callable returning COCO AP scores) runs every ``eval_every`` steps on rank 0 and draws
    ``ap_curve.png`` from ap.csv. Some parameters get no gradient in a step (no instance matched, say), so DDP
    looks for unused ones."""

    loss_names = ("class", "mask_bce", "mask_dice", "loss_objectness", "loss_rpn_box_reg", "loss_classifier",
                  "loss_box_reg", "loss_mask")
    eval_csv = "ap.csv"
    find_unused_parameters = True

    def __init__(self, model, method: str, evaluate: Callable[[], dict] | None = None,
                 eval_every: int | None = None, title: str = "model"):
        super().__init__(model)
        self.name = f"instances/{method}"
        self.scorer, self.title = evaluate, title
        self.eval_every = eval_every if evaluate is not None else None

    def collate(self, items: list[dict]) -> tuple[torch.Tensor, list[dict]]:
        return torch.stack([item["image"] for item in items]), [{k: item[k] for k in TARGET_KEYS} for item in items]

    def losses(self, model, batch) -> dict[str, torch.Tensor]:
        images, targets = batch
        return model.losses(images, targets)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The weights that change during training (a frozen encoder/decoder is rebuilt, not re-saved)."""
        model = self.model
        parts = (("sam.image_encoder.", model.train_encoder == "full"), ("sam.mask_decoder.", model.train_decoder))
        trained = tuple(prefix for prefix, trains in parts if trains)
        return {k: v for k, v in model.state_dict().items()
                if not k.startswith("sam.") or k.startswith(trained) or ".lora_" in k}

    def evaluate(self) -> dict[str, float]:
        return self.scorer()

    def after_evaluation(self, csv_path: Path) -> None:
        plot_ap_curve(csv_path, csv_path.with_name("ap_curve.png"), self.title)


def plot_ap_curve(csv_path: Path, png_path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(csv_path)
    if not rows:
        return
    figure, axis = plt.subplots(figsize=(6, 4))
    for key in ("mask_AP", "mask_AP50", "box_AP50"):
        axis.plot([r["step"] for r in rows], [r[key] for r in rows], marker="o", label=key)
    axis.set_xlabel("step")
    axis.set_ylabel("validation AP")
    axis.set_title(title, fontsize=9)
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)


# ---------------------------------------------------------------------------------------------
# The steps every instance recipe of ``distill run`` shares: data, split, training, AP, reports


def resolve_coco_data(config, run_dir, context: DistContext = DistContext()) -> tuple[Path, Path]:
    """(annotations json, image folder) from ``instances:``: a real dataset or generated shapes (made by rank 0
    while the other ranks wait)."""
    from sam_distill.data.coco import make_synthetic_coco

    data = config.instances
    if data.annotations is not None:
        if data.images is None:
            raise DistillError("config: instances.images must name the image folder of instances.annotations")
        return data.annotations, data.images
    if data.synthetic is not None:
        folder = run_dir.path / "data" / "synthetic_coco"
        if context.is_main and not (folder / "annotations.json").exists():
            spec = data.synthetic
            make_synthetic_coco(folder, spec.count, spec.size, spec.seed)
            run_dir.log(f"data: generated {spec.count} shape images with known instances in {folder}")
        context.barrier()
        return folder / "annotations.json", folder / "images"
    raise DistillError("config: set instances.annotations + instances.images (COCO) or instances.synthetic")


def split_datasets(annotations: Path, images: Path, data, image_size: int):
    """(train, val) CocoInstances of the fixed file-name-hash split; augmentation on the training side only."""
    from sam_distill.data.coco import CocoInstances, hash_split

    full = CocoInstances(annotations, images, image_size)
    train_pos, val_pos = hash_split(full.file_names(), data.val_fraction)
    ids = full.image_ids
    train_ids = [ids[p] for p in train_pos][: data.max_train_images]
    val_ids = [ids[p] for p in val_pos][: data.max_val_images]
    if not train_ids:
        raise DistillError(f"{annotations}: no training images after the split; lower instances.val_fraction")
    return (CocoInstances(annotations, images, image_size, train_ids, augment=data.augment,
                           flips=data.flips),
            CocoInstances(annotations, images, image_size, val_ids))


def describe_encoder(spec) -> str:
    return f"{spec.name} from {spec.checkpoint}" if spec.checkpoint else \
        f"{spec.name} with RANDOM-INITIALISED weights (no pretrained encoder)"


def write_instance_reports(run_dir, method: str, model_name: str, val_set, results: list[dict], encoder: str,
                           evaluation) -> dict:
    """Validation AP of ``results`` into ``reports/`` (ap.json, val_results.json, the report's
    ``metrics_<method>.json`` with AP in percent) plus overlay images of the first ``evaluation.overlays``
    validation images (detections at ``evaluation.overlay_score`` or above); returns the AP in [0, 1]."""
    from sam_distill.core.fileio import atomic_write_json
    from sam_distill.core.images import load_rgb
    from sam_distill.eval.coco_ap import instance_ap
    from sam_distill.methods.instance_predict import save_overlay

    reports = run_dir.sub("reports")
    atomic_write_json(reports / "val_results.json", results)
    scores = instance_ap(val_set.coco, results, val_set.image_ids)
    atomic_write_json(reports / "ap.json", {"method": method, "val_images": len(val_set), "encoder": encoder, **scores})
    atomic_write_json(reports / f"metrics_{method}.json", {
        "model": model_name, "metrics": {k: v * 100 for k, v in scores.items() if k.startswith("mask_")}})
    shown, drawn = val_set.image_ids[:evaluation.overlays], 0
    for image_id in shown:
        info = val_set.coco.imgs[image_id]
        drawn += save_overlay(load_rgb(val_set.images_dir / info["file_name"]),
                              [r for r in results if r["image_id"] == image_id], val_set.classes,
                              reports / "overlays" / f"{Path(info['file_name']).stem}.png", evaluation.overlay_score)
    run_dir.log(f"{method}: val " + " ".join(f"{k}={v:.3f}" for k, v in scores.items()))
    if shown and not drawn:
        on_shown = set(shown)
        best = max((r["score"] for r in results if r["image_id"] in on_shown), default=None)
        run_dir.log(f"{method}: the overlays show no detection: none on those {len(shown)} images scored "
                    f"{evaluation.overlay_score:g} or more" + (f" (best {best:.2f})" if best is not None else "") +
                    "; lower instances.eval.overlay_score to see them")
    return scores


def run_trained_instance_recipe(config, run_dir, method: str, build: Callable[[int], torch.nn.Module],
                                save: Callable[..., Path], model_file: str) -> dict:
    """The recipe of every trained instance model: data → split → train (resumable, AP along the way, DDP under
    torchrun) → model file → validation AP, reports and overlays (rank 0). ``build(num_classes)`` makes the
    model."""
    from sam_distill.core.device import init_distributed
    from sam_distill.eval.coco_ap import instance_ap
    from sam_distill.methods.instance_predict import predict_dataset
    from sam_distill.train.loop import Schedule, train

    context = init_distributed(config.device)
    log = run_dir.log if context.is_main else (lambda message: None)
    train_config, evaluation = config.train, config.instances.eval
    annotations, images = resolve_coco_data(config, run_dir, context)
    train_set, val_set = split_datasets(annotations, images, config.instances, config.encoder.image_size)
    log(f"data: {len(train_set)} training and {len(val_set)} validation images, "
        f"{len(train_set.classes)} classes from {annotations}")
    torch.manual_seed(config.seed)
    model = build(len(train_set.classes))
    encoder = describe_encoder(config.encoder)
    adapted = f" ({len(model.adapted)} layers, rank {config.encoder.lora_rank})" if model.adapted else ""
    log(f"{method}: on {encoder}, encoder {model.train_encoder}{adapted}"
        + (f", {context.world_size} processes" if context.distributed else ""))
    meta = {"method": method, "encoder": encoder, "run": str(run_dir.path), "annotations": str(annotations)}
    device = context.device

    def evaluate() -> dict:
        results = predict_dataset(model, val_set, val_set.classes, device, train_config.batch_size,
                                  evaluation.score_threshold, progress=False)
        return instance_ap(val_set.coco, results, val_set.image_ids)

    objective = InstanceObjective(model, method, evaluate if len(val_set) else None, evaluation.every,
                                  title=f"{method} on {config.encoder.name}")
    summary = train(objective, train_set, Schedule.from_config(train_config), run_dir.sub(f"checkpoints/{method}"),
                    context, config.seed, log=log, meta=meta)
    result = {"train": summary}
    if not context.is_main:
        return result
    model_path = save(model, run_dir.sub("model") / model_file, train_set.classes, meta)
    result["model"] = str(model_path)
    if len(val_set):
        results = predict_dataset(model, val_set, val_set.classes, device, train_config.batch_size,
                                  evaluation.score_threshold)
        result["ap"] = write_instance_reports(run_dir, method, model_path.name, val_set, results, encoder,
                                              evaluation)
    else:
        log(f"{method}: the split left no validation images, so no AP was measured; raise instances.val_fraction")
    log(f"{method}: model at {model_path}")
    return result
