"""The ``finetune`` recipe of ``distill run``: SAM trained on COCO instance masks with sampled prompts.

Any SAM the toolkit loads (an official checkpoint, a distilled ``model.pt``, MobileSAM, or a random-initialised
architecture) → :class:`PromptableSam` (frozen, LoRA or fully trained encoder) → the one training loop (resume,
AMP, DDP, ground-truth mIoU along the way into miou.csv) → ``model/model.pt``, a plain SAM file with LoRA merged
that every other command takes → its ground-truth mIoU on the validation split (``reports/miou.json`` and the
report's ``reports/metrics_finetune.json``)."""
from __future__ import annotations

import torch

from sam_distill.core.errors import DistillError
from sam_distill.methods.finetune.config import FineTuneConfig
from sam_distill.methods.registry import register_method
from sam_distill.methods.sections import EncoderConfig, InstancesConfig, TrainConfig

DECODER_PARTS = {True: "trained", False: "frozen", "iou_head": "frozen but for its IoU head"}


def finetuned_sam(config):
    """The configured SAM wrapped for training, as ``config.finetune`` says what trains."""
    from sam_distill.methods.finetune.objective import PromptableSam
    from sam_distill.sam.model_file import build_sam_for

    spec = config.finetune
    sam = build_sam_for(config.encoder.name, config.encoder.image_size, config.encoder.checkpoint)
    return PromptableSam(sam, spec.train_encoder, spec.train_prompt_encoder, spec.train_decoder, spec.lora_rank,
                         spec.lora_alpha, tuple(spec.lora_targets))


def finetune_objective(config, model, seed: int, evaluate=None):
    from sam_distill.methods.finetune.objective import FineTuneObjective, LossWeights, PromptSampling

    spec = config.finetune
    sampling = PromptSampling(spec.masks_per_image, spec.box_probability, spec.max_points, spec.box_noise,
                              spec.box_noise_max, spec.correction_rounds)
    weights = LossWeights(spec.focal_weight, spec.dice_weight, spec.iou_weight, spec.loss_at)
    return FineTuneObjective(model, sampling, weights, seed, evaluate, config.instances.eval.every)


def check_finetune(config) -> None:
    if "train" in config.encoder.model_fields_set:
        raise DistillError("config: recipe finetune reads finetune.train_encoder (frozen, lora or full), not "
                           "encoder.train; remove encoder.train")


@register_method("finetune", {"encoder": EncoderConfig, "instances": InstancesConfig, "train": TrainConfig,
                              "finetune": FineTuneConfig}, check=check_finetune)
def run_finetune(config, run_dir) -> dict:
    from sam_distill.core.device import init_distributed
    from sam_distill.core.fileio import atomic_write_json
    from sam_distill.eval.miou import ground_truth_miou, headline_scores
    from sam_distill.methods.instances import describe_encoder, resolve_coco_data, split_datasets
    from sam_distill.sam.model_file import load_model, save_model
    from sam_distill.train.loop import Schedule, train

    spec = config.finetune
    context = init_distributed(config.device)
    log = run_dir.log if context.is_main else (lambda message: None)
    annotations, images = resolve_coco_data(config, run_dir, context)
    train_set, val_set = split_datasets(annotations, images, config.instances, config.encoder.image_size)
    log(f"data: {len(train_set)} training and {len(val_set)} validation images from {annotations}")
    torch.manual_seed(config.seed)
    model = finetuned_sam(config)
    encoder = describe_encoder(config.encoder)
    log(f"finetune: {encoder}, encoder {spec.train_encoder}"
        + (f" ({len(model.adapted)} adapted layers, rank {spec.lora_rank})" if model.adapted else "")
        + f", prompt encoder {'trained' if spec.train_prompt_encoder else 'frozen'}"
        + f", mask decoder {DECODER_PARTS[spec.train_decoder]}"
        + (f", {context.world_size} processes" if context.distributed else ""))
    if config.encoder.checkpoint is None and spec.train_encoder != "full":
        log(f"finetune: warning: the encoder has random weights and is {spec.train_encoder}; "
            "set finetune.train_encoder: full to train a SAM from scratch")
    val_ids = list(val_set.image_ids)
    device = context.device

    def evaluate() -> dict:
        result = ground_truth_miou(model.sam, annotations, images, spec.eval_clicks, val_ids, device=device,
                                   progress=False)
        return headline_scores(result["summary"], spec.eval_clicks)

    objective = finetune_objective(config, model, config.seed * 1000 + context.rank,
                                   evaluate if val_ids else None)
    meta = {"method": "finetune", "encoder": encoder, "train_encoder": spec.train_encoder, "run": str(run_dir.path),
            "annotations": str(annotations)}
    summary = train(objective, train_set, Schedule.from_config(config.train), run_dir.sub("checkpoints/finetune"),
                    context, config.seed, log=log, meta=meta)
    result = {"train": summary}
    if not context.is_main:
        return result
    model_path = save_model(model.merged(), run_dir.sub("model") / "model.pt", config.encoder.name, meta)
    result["model"] = str(model_path)
    log(f"finetune: model at {model_path}")
    if not val_ids:
        log("finetune: the split left no validation images, so no mIoU was measured; raise instances.val_fraction")
        return result
    saved, _ = load_model(model_path)  # the file as every other command will read it
    scores = ground_truth_miou(saved, annotations, images, spec.eval_clicks, val_ids, device=device)
    scores["model"] = str(model_path)
    reports = run_dir.sub("reports")
    atomic_write_json(reports / "miou.json", scores)
    headline = headline_scores(scores["summary"], spec.eval_clicks)
    atomic_write_json(reports / "metrics_finetune.json",
                      {"model": model_path.name, "metrics": {f"gt_{k}": v for k, v in headline.items()}})
    log("finetune: val " + " ".join(f"{k}={v:.3f}" for k, v in headline.items()))
    result["miou"] = headline
    return result
