"""SAM-cls, the ``sam_cls`` recipe: SAM's everything mode proposes class-agnostic masks, a classifier labels them.

Two classifiers (``sam_cls.classifier``):

* ``pooled``: :class:`~sam_distill.students.heads.mask_classifier.MaskClassifier`, an MLP on the frozen
  encoder's embedding averaged inside each mask. Its training set is the training split's everything-mode
  proposals, each labelled with the class of the ground-truth mask it overlaps by ``match_iou`` (mask IoU,
  pycocotools) or background, plus the ground-truth masks themselves (so every class has clean examples
  even when the proposals miss it).
* ``clip``: zero-shot CLIP on each mask's crop against the dataset's class names (prompt-template
  ensembles) and background names; the same crops and embeddings as FastSAM's text mode (``clip_select``).

Proposals come from the encoder's own package's automatic mask generator (segment-anything's, sam2's or
segment-anything-hq's) through ``pseudo_label`` (one atomic JSON per image, resumable, refused if the encoder or
generator settings change). The model file ``model/sam_cls.pt`` holds the SAM, the generator settings, the classes and the classifier, as plain data.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset
from tqdm import tqdm

from sam_distill.core.device import DistContext
from sam_distill.core.errors import DistillError
from sam_distill.core.fileio import read_json, sha256_file
from sam_distill.methods.registry import register_method
from sam_distill.methods.sam_cls.config import SamClsConfig
from sam_distill.methods.sam_cls.model import SamCls, decode_rles, input_frame, load_clip_for, match_proposals
from sam_distill.methods.sections import EncoderConfig, InstancesConfig, TrainConfig
from sam_distill.train.loop import Objective, Schedule, train


class ClassifierObjective(Objective):
    """Cross-entropy of the mask classifier on batches of precomputed (pooled feature, label) pairs; the batch
    accuracy is logged beside the loss."""

    name = "sam_cls/classifier"
    loss_names = ("cross_entropy",)
    monitor_names = ("accuracy",)
    unit = "masks"

    def losses(self, model, batch) -> dict[str, torch.Tensor]:
        features, labels = batch
        logits = model(features)
        return {"cross_entropy": F.cross_entropy(logits.float(), labels),
                "accuracy": (logits.argmax(1) == labels).float().mean()}


def train_classifier(classifier, features: torch.Tensor, labels: torch.Tensor, train_config, out_dir: Path,
                     device: torch.device, seed: int = 0, log=print) -> dict:
    """The classifier through the training loop on one process (seconds of work on in-memory features: a process
    group would cost more than it saves), resumable like every training; returns a summary with its accuracy on
    its own training masks."""
    # The features are in memory already: loader worker processes would only add start-up time.
    schedule = replace(Schedule.from_config(train_config), num_workers=0)
    summary = train(ClassifierObjective(classifier), TensorDataset(features, labels), schedule, out_dir,
                    DistContext(device=device), seed, log=log)
    classifier.eval()
    with torch.no_grad():
        accuracy = (classifier(features.to(device)).argmax(1).cpu() == labels).float().mean().item()
    log(f"sam_cls: classifier trained {summary['steps']} steps on {len(features)} masks; "
        f"training accuracy {accuracy:.3f}")
    return {**summary, "masks": len(features), "train_accuracy": accuracy,
            "background_fraction": (labels == 0).float().mean().item()}


def _encoder_identity(sam, family: str, spec, seed: int):
    """The encoder as a Teacher of its family, so ``pseudo_label`` can stamp and guard the proposal cache with it
    and runs the family's own everything mode."""
    from sam_distill.sam.teachers import teacher_of

    checkpoint = Path(spec.checkpoint) if spec.checkpoint else None
    digest = sha256_file(checkpoint) if checkpoint else f"random-init:{spec.name}:{spec.image_size}:seed{seed}"
    return teacher_of(family, sam, spec.name, spec.name, checkpoint, digest, checkpoint is None)


def _proposal_reader(datasets, label_dir: Path):
    """``image_id → proposal list`` over the label folder ``pseudo_label`` wrote for these datasets' images."""
    from sam_distill.data.everything import image_list, label_path

    paths = {image_id: ds.images_dir / ds.coco.imgs[image_id]["file_name"] for ds in datasets for image_id in ds.image_ids}
    _, root = image_list(list(paths.values()))

    def read(image_id: int) -> list[dict]:
        path = label_path(label_dir, paths[image_id].relative_to(root).as_posix())
        if not path.is_file():
            raise DistillError(f"no everything-mode masks for {paths[image_id]} (unreadable image?); "
                               f"see {label_dir}/skipped-r000.json")
        return read_json(path)["annotations"]

    return sorted(paths.values()), read


def training_features(model: SamCls, dataset, proposals_of, min_iou: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features and labels of the training split's proposals (matched to ground truth) and ground truth."""
    features, labels = [], []
    for index in tqdm(range(len(dataset)), desc="sam-cls features", unit="image"):
        item = dataset[index]
        info = dataset.coco.imgs[item["image_id"]]
        anns = [a for a in dataset.coco.imgToAnns[item["image_id"]] if not a.get("iscrowd", 0)]
        proposals = proposals_of(item["image_id"])
        matched = match_proposals([p["segmentation"] for p in proposals], [dataset.coco.annToRLE(a) for a in anns],
                                  [dataset.label_of[a["category_id"]] for a in anns], min_iou)
        embedding = model.embed(item["image"])
        frame = input_frame(decode_rles(proposals, info["height"], info["width"]), item["input_size"], model.image_size)
        features += [model.features(embedding, frame, item["input_size"]),
                     model.features(embedding, item["masks"], item["input_size"])]
        labels += [torch.from_numpy(matched), item["labels"]]
    return torch.cat(features).cpu(), torch.cat(labels).long()


def predict_split(model: SamCls, dataset, proposals_of, score_threshold: float, scorer=None) -> list[dict]:
    """COCO results of a split from its cached everything-mode proposals."""
    from sam_distill.core.images import load_rgb

    results = []
    for index in tqdm(range(len(dataset)), desc="sam-cls predict", unit="image"):
        item = dataset[index]
        info = dataset.coco.imgs[item["image_id"]]
        proposals = proposals_of(item["image_id"])
        masks = decode_rles(proposals, info["height"], info["width"])
        if model.classifier is not None:
            probabilities = model.probabilities(model.embed(item["image"]), masks, item["input_size"])
        else:
            probabilities = model.probabilities(None, masks, item["input_size"],
                                                load_rgb(dataset.images_dir / info["file_name"]), scorer)
        results += model.to_results(proposals, probabilities, item["image_id"], score_threshold)
    return results


@register_method("sam_cls", {"encoder": EncoderConfig, "instances": InstancesConfig, "train": TrainConfig,
                            "sam_cls": SamClsConfig})
def run_sam_cls(config, run_dir) -> dict:
    from sam_distill.core.device import init_distributed
    from sam_distill.data.everything import generator_settings, pseudo_label
    from sam_distill.methods.instances import (
        describe_encoder,
        resolve_coco_data,
        split_datasets,
        write_instance_reports,
    )
    from sam_distill.sam.families import load_family_model

    if config.encoder.train != "frozen":
        raise DistillError(f"config: sam_cls labels SAM's masks with features of a frozen encoder; encoder.train "
                           f"{config.encoder.train} does not apply to it (set frozen)")
    spec, context = config.sam_cls, init_distributed(config.device)
    device = context.device
    log = run_dir.log if context.is_main else (lambda message: None)
    scorer = load_clip_for(spec, device) if spec.classifier == "clip" else None  # fail before any heavy work
    annotations, images = resolve_coco_data(config, run_dir, context)
    plain = config.instances.model_copy(update={"augment": False})  # features of the images as they are
    train_set, val_set = split_datasets(annotations, images, plain, config.encoder.image_size)
    if not len(val_set):
        raise DistillError("config: the split left no validation images to score; raise instances.val_fraction")
    encoder = describe_encoder(config.encoder)
    log(f"sam_cls: {spec.classifier} classifier on everything-mode masks of {encoder}; "
        f"{len(train_set)} train / {len(val_set)} val images, {len(train_set.classes)} classes")
    torch.manual_seed(config.seed)
    sam, family, sam_spec = load_family_model(config.encoder.name, config.encoder.image_size, config.encoder.checkpoint)
    sam = sam.to(device).eval()
    settings = generator_settings(**spec.everything.model_dump())
    used = [train_set, val_set] if spec.classifier == "pooled" else [val_set]
    paths, proposals_of = _proposal_reader(used, run_dir.path / "proposals")
    counts = pseudo_label(_encoder_identity(sam, family, config.encoder, config.seed), paths, run_dir.sub("proposals"),
                          settings, context, log=log)
    if not context.is_main:  # the everything mode above is shared out; the rest is seconds of work on rank 0
        return {}
    log(f"sam_cls: everything mode gave {counts['masks']} new mask(s) on {counts['labelled']} new image(s)"
        + (" on rank 0" if context.distributed else ""))
    model_config = {"encoder": config.encoder.name, "image_size": config.encoder.image_size,
                    "classifier": spec.classifier, "generator": settings, "geometry": spec.geometry,
                    "hidden": spec.hidden, "match_iou": spec.match_iou, "sam": {"family": family, **sam_spec}}
    result = {}
    if spec.classifier == "pooled":
        model = SamCls(sam, model_config, train_set.classes, {}).to(device)
        features, labels = training_features(model, train_set, proposals_of, spec.match_iou)
        result["train"] = train_classifier(model.classifier, features, labels, config.train,
                                           run_dir.sub("checkpoints/sam_cls"), device, config.seed, log)
    else:
        names = [c["name"] for c in train_set.classes] + list(spec.background)
        model_config.update(clip_model=spec.clip_model, templates=list(spec.templates), background=list(spec.background),
                            clip_checkpoint=str(spec.clip_checkpoint),
                            clip_config=str(spec.clip_config) if spec.clip_config else None)
        state = {"text_features": scorer.text_features(names, spec.templates),
                 "logit_scale": torch.tensor(scorer.logit_scale)}
        model = SamCls(sam, model_config, train_set.classes, state).to(device)
    meta = {"method": "sam_cls", "encoder": encoder, "run": str(run_dir.path), "annotations": str(annotations)}
    model_path = model.save(run_dir.sub("model") / "sam_cls.pt", meta)
    results = predict_split(model, val_set, proposals_of, config.instances.eval.score_threshold, scorer)
    result["ap"] = write_instance_reports(run_dir, "sam_cls", model_path.name, val_set, results,
                                          encoder, config.instances.eval)
    result["model"] = str(model_path)
    log(f"sam_cls: model at {model_path}")
    return result
