"""``distill prompter train|eval|predict``: RSPrompter heads from the command line (export: ``distill export``).

``eval`` and ``predict`` also take SAM-det / SAM-seg files (``recipe: sam_det`` / ``sam_seg``): every automatic
instance model answers the same way."""
from __future__ import annotations

from pathlib import Path

from sam_distill.core.errors import DistillError


def cmd_train(args) -> int:
    from sam_distill.methods.config import load_config, parse_config
    from sam_distill.runner import run

    if args.config is not None:
        config = load_config(args.config, args.set)
    else:
        if args.annotations is None or args.images is None:
            raise DistillError("distill prompter train: give a CONFIG file, or --annotations JSON and --images FOLDER")
        config = parse_config({
            "recipe": "prompter", "name": args.name, "device": args.device,
            "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr},
            "encoder": {"name": args.encoder, "checkpoint": args.encoder_checkpoint, "image_size": args.image_size},
            "instances": {"annotations": args.annotations, "images": args.images},
            "prompter": {"head": args.head}}, "command line")
    if config.recipe != "prompter":
        raise DistillError(f"{args.config}: recipe is {config.recipe!r}; set `recipe: prompter` for distill prompter train")
    run(config)
    return 0


def _device(name: str):
    from sam_distill.core.device import init_distributed

    return init_distributed(name).device


def cmd_eval(args) -> int:
    from sam_distill.cli import print_json
    from sam_distill.core.fileio import atomic_write_json
    from sam_distill.data.coco import CocoInstances, hash_split
    from sam_distill.eval.coco_ap import instance_ap
    from sam_distill.methods.instance_predict import load_instance_model, predict_dataset

    model, classes = load_instance_model(args.model)
    device = _device(args.device)
    dataset = CocoInstances(args.annotations, args.images, model.image_size)
    if args.split != "all":
        train, val = hash_split(dataset.file_names(), args.val_fraction)
        ids = [dataset.image_ids[p] for p in (val if args.split == "val" else train)]
        dataset = CocoInstances(args.annotations, args.images, model.image_size, ids)
    if [c["id"] for c in dataset.classes] != [c["id"] for c in classes]:
        raise DistillError(f"{args.annotations} has categories {[c['name'] for c in dataset.classes]} but the model "
                           f"was trained on {[c['name'] for c in classes]}")
    results = predict_dataset(model.to(device), dataset, classes, device, args.batch_size, args.score_threshold)
    scores = instance_ap(dataset.coco, results, dataset.image_ids)
    if args.out:
        atomic_write_json(args.out, results)
    print_json({"images": len(dataset), **scores})
    return 0


def cmd_predict(args) -> int:
    from sam_distill.core.images import find_images
    from sam_distill.methods.instance_predict import load_instance_model, predict_images, write_predictions

    model, classes = load_instance_model(args.model)
    paths = find_images(args.images)
    results, images = predict_images(model.to(_device(args.device)), paths, classes, args.score_threshold)
    write_predictions(args.out, results, images, classes, args.overlays, args.overlay_min_score)
    return 0


def register(subparsers) -> None:
    prompter = subparsers.add_parser("prompter", help="automatic class-aware instance masks: RSPrompter heads on SAM")
    commands = prompter.add_subparsers(dest="prompter_command", metavar="COMMAND")

    train = commands.add_parser("train", help="train a prompter (a config with `recipe: prompter`, or flags)")
    train.add_argument("config", type=Path, nargs="?", help="YAML config (see configs/prompter_quickstart.yaml)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    train.add_argument("--annotations", type=Path, help="COCO instances json (without a config)")
    train.add_argument("--images", type=Path, help="image folder of the json (without a config)")
    train.add_argument("--head", choices=["query", "anchor"], default="query")
    train.add_argument("--encoder", default="tinyvit_5m")
    train.add_argument("--encoder-checkpoint", type=Path)
    train.add_argument("--image-size", type=int, default=1024)
    train.add_argument("--epochs", type=int, default=12)
    train.add_argument("--batch-size", type=int, default=2)
    train.add_argument("--lr", type=float, default=1e-4)
    train.add_argument("--name", default="prompter")
    train.add_argument("--device", default="auto")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="mask and box AP/AP50/AP75 of a prompter on a COCO dataset")
    evaluate.add_argument("model", type=Path, help="prompter, SAM-det or SAM-seg model file (runs/<name>/model/*.pt)")
    evaluate.add_argument("--annotations", type=Path, required=True)
    evaluate.add_argument("--images", type=Path, required=True)
    evaluate.add_argument("--split", choices=["all", "val", "train"], default="all",
                          help="the fixed file-name-hash split used in training")
    evaluate.add_argument("--val-fraction", type=float, default=0.2)
    evaluate.add_argument("--out", type=Path, help="write the COCO results json here")
    evaluate.add_argument("--batch-size", type=int, default=2)
    evaluate.add_argument("--score-threshold", type=float, default=0.05)
    evaluate.add_argument("--device", default="auto")
    evaluate.set_defaults(func=cmd_eval)

    predict = commands.add_parser("predict", help="instance masks for an image folder: results.json (COCO results), images.json, overlays/")
    predict.add_argument("model", type=Path)
    predict.add_argument("images", type=Path)
    predict.add_argument("--out", type=Path, required=True)
    predict.add_argument("--score-threshold", type=float, default=0.05)
    predict.add_argument("--overlays", type=int, default=20, help="how many overlay images to write")
    predict.add_argument("--overlay-min-score", type=float, default=0.3)
    predict.add_argument("--device", default="auto")
    predict.set_defaults(func=cmd_predict)

