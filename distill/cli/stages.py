"""``distill run`` and the stages it chains, one command each: embed, pseudo-label, train, assemble, yolo-data,
yolo train; plus the lists of teachers and students."""
from __future__ import annotations

from pathlib import Path

from sam_distill.cli.options import add_generator_args, add_teacher_args, generator_overrides, load_teacher_from
from sam_distill.core.errors import DistillError


def cmd_run(args) -> int:
    from sam_distill.methods.config import load_config
    from sam_distill.runner import run

    config = load_config(args.config, args.set)
    run(config)
    return 0


def cmd_embed(args) -> int:
    from sam_distill.core.device import init_distributed
    from sam_distill.data.cache import build_cache

    context = init_distributed(args.device)
    teacher = load_teacher_from(args)
    summary = build_cache(teacher, args.images, args.out, args.shard_size, args.batch_size, args.workers, context)
    if context.is_main and summary["skipped"]:
        print(f"skipped {len(summary['skipped'])} file(s); reasons in {args.out}/skipped-r*.json")
    return 0


def cmd_train(args) -> int:
    from sam_distill.core.device import init_distributed
    from sam_distill.data.cache import EmbeddingCache
    from sam_distill.methods.mobilesam.stages import init_student, train_stage
    from sam_distill.methods.sections import TrainConfig

    context = init_distributed(args.device)
    cache = EmbeddingCache(args.cache)
    teacher = cache_teacher(cache, args) if len(cache.outputs) > 1 else None
    train_indices, holdout = cache.split(args.holdout)
    config = TrainConfig(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                         grad_accum=args.grad_accum, lr=args.lr, warmup_steps=args.warmup_steps,
                         checkpoint_every=args.checkpoint_every, log_every=args.log_every, num_workers=args.workers,
                         amp=not args.no_amp)
    if not args.resume and (args.out / "last.pt").exists():
        raise DistillError(f"{args.out} already holds a training state; pass --resume to continue it or choose another --out")
    student = init_student(args.student, cache.image_size, args.init, teacher)
    summary = train_stage(student, cache, train_indices, config, args.out, context, args.seed, print,
                          {"student": args.student, "cache": str(args.cache)}, output_weights(args.output_weight))
    if context.is_main:
        print(f"trained {summary['steps']} steps; state in {args.out / 'last.pt'} "
              f"({len(holdout)} held-out images left for `distill eval fidelity`)")
    return 0


def cache_teacher(cache, args):
    """The teacher that made a cache of several outputs (a SAM 2 or HQ-SAM one): its student is built around the
    teacher's own parts (SAM 2's projections and no-memory embedding, HQ-SAM's early-feature width), so the
    teacher is named again and must be the very one the cache is stamped with."""
    from sam_distill.sam.teachers import load_teacher

    made_by = cache.identity["teacher"]
    if args.teacher is None:
        raise DistillError(f"cache {cache.dir} holds the outputs of {made_by['name']} ({', '.join(cache.outputs)}), "
                           f"whose student is built around the teacher's parts: name it with --teacher "
                           f"{made_by['name']} and --checkpoint FILE (or --random-init, as the cache was made)")
    teacher = load_teacher(args.teacher, args.checkpoint, args.random_init, cache.image_size)
    if teacher.identity != made_by:
        raise DistillError(f"--teacher {args.teacher} is not the teacher that made cache {cache.dir} ({made_by['name']}, "
                           f"{made_by['checkpoint_sha256'][:16]}...); give that one")
    return teacher


def output_weights(pairs: list[str] | None) -> dict[str, float]:
    """``--output-weight NAME=W`` pairs (a SAM 2 / HQ-SAM cache's outputs; unnamed ones weigh 1)."""
    weights = {}
    for pair in pairs or []:
        name, _, value = pair.partition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            raise DistillError(f"--output-weight {pair!r} must be NAME=NUMBER, e.g. high_res_feats_0=0.5") from None
    return weights


def cmd_assemble(args) -> int:
    from sam_distill.methods.mobilesam.stages import load_trained_student, write_models

    state = args.state if args.state.is_file() else args.state / "last.pt"
    if not state.is_file():
        raise DistillError(f"training state {state} does not exist; train first with `distill train`")
    teacher = load_teacher_from(args)
    student = load_trained_student(args.student, teacher.image_size, state, teacher)
    paths = write_models(student, args.student, teacher, args.out, {"teacher": teacher.describe(), "state": str(state)})
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def cmd_pseudo_label(args) -> int:
    from sam_distill.core.device import init_distributed
    from sam_distill.data.everything import generator_settings, pseudo_label

    context = init_distributed(args.device)
    settings = generator_settings(**generator_overrides(args))
    counts = pseudo_label(load_teacher_from(args), args.images, args.out, settings, context)
    if context.is_main:
        print(f"labelled {counts['labelled']} image(s), {counts['masks']} masks, {counts['skipped']} skipped; "
              f"labels in {args.out}")
    return 0


def cmd_yolo_data(args) -> int:
    from sam_distill.data.yolo import convert_coco, convert_pseudo_labels

    knobs = {"val_fraction": args.val_fraction, "min_area": args.min_area, "max_components": args.max_components}
    if args.coco:
        if args.images is None:
            raise DistillError("--coco needs --images, the folder its file_name entries are relative to")
        summary = convert_coco(args.coco, args.images, args.out, **knobs)
    elif args.labels:
        summary = convert_pseudo_labels(args.labels, args.out, **knobs)
    else:
        raise DistillError("give --labels (a pseudo-label folder) or --coco (a COCO instance file) with --images")
    print(f"{summary['train_images']} train / {summary['val_images']} val images, {summary['instances']} instances; "
          f"dropped {summary['dropped']}; dataset {summary['data_yaml']}")
    return 0


def cmd_yolo_train(args) -> int:
    from sam_distill.methods.fastsam.recipe import plot_results, train_yolo

    if not args.resume and (args.out / args.name / "weights" / "last.pt").exists():
        raise DistillError(f"{args.out / args.name} already holds a training run; pass --resume or choose another --out")
    summary = train_yolo(args.data, args.model, args.out, args.name, args.epochs, args.imgsz, args.batch,
                         args.device, args.workers, args.seed, args.patience)
    plot_results(Path(summary["run"]) / "results.csv", Path(summary["run"]) / "map.png")
    print(f"trained {summary['epochs']} epochs; best weights {summary['best']}")
    return 0


def cmd_teachers(args) -> int:
    from sam_distill.sam.build import ARCHITECTURES
    from sam_distill.sam.official import TEACHERS, checkpoint_cache_dir
    from sam_distill.sam.sam2_models import SAM2_ARCHITECTURES

    for name in TEACHERS.names():
        spec = TEACHERS.get(name)
        cached = (checkpoint_cache_dir() / spec.filename).exists()
        print(f"{name:<20} {spec.arch:<14} {'cached' if cached else 'not cached':<11} {spec.url}")
    print(f"architectures for --random-init or local files: {', '.join((*ARCHITECTURES, *SAM2_ARCHITECTURES))}")
    print(f"cache: {checkpoint_cache_dir()}")
    return 0


def cmd_students(args) -> int:
    from sam_distill.students import list_students

    for name in list_students():
        print(name)
    print("e.g. timm_efficientvit_b0, timm_repvit_m1, timm_mobilenetv4_conv_small")
    from sam_distill.students.sam2_trunk import HIERA_STUDENTS

    print(f"for SAM 2 teachers: {', '.join(HIERA_STUDENTS)} (sam2's Hiera, small), timm_<name> (stride 4-32 maps, "
          "e.g. timm_mobilenetv3_large_100)")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="run a recipe from a YAML config, end to end (rerun to resume)")
    p.add_argument("config", type=Path)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser("embed", help="cache a teacher's image embeddings (resumable, torchrun-aware)")
    p.add_argument("images", type=Path, help="image folder (searched recursively)")
    p.add_argument("--out", type=Path, required=True, help="cache folder")
    add_teacher_args(p)
    p.add_argument("--shard-size", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--workers", type=int, default=0)
    p.set_defaults(func=cmd_embed)

    p = subparsers.add_parser("pseudo-label", help="the teacher's segment-everything masks, one JSON per image")
    p.add_argument("images", type=Path)
    p.add_argument("--out", type=Path, required=True, help="label folder (rerun to resume)")
    add_teacher_args(p)
    add_generator_args(p)
    p.set_defaults(func=cmd_pseudo_label)

    p = subparsers.add_parser("train", help="distil a student encoder from a cache (decoupled, MobileSAM)")
    p.add_argument("cache", type=Path)
    p.add_argument("--student", default="tinyvit_5m")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--init", type=Path, help="start from these encoder weights")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--holdout", type=float, default=0.1, help="fraction kept out for fidelity")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--teacher", help="a SAM 2 / HQ-SAM cache only: the teacher that made it (its student is built "
                   "around the teacher's parts)")
    p.add_argument("--checkpoint", type=Path, help="with --teacher: its local file")
    p.add_argument("--random-init", action="store_true", help="with --teacher: random weights, as the cache was made")
    p.add_argument("--output-weight", action="append", metavar="NAME=W",
                   help="a SAM 2 / HQ-SAM cache: the loss weight of one output (default 1 each)")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("assemble", help="student encoder + the teacher's decoder -> one SAM checkpoint")
    p.add_argument("state", type=Path, help="training folder or its last.pt")
    p.add_argument("--student", default="tinyvit_5m")
    p.add_argument("--out", type=Path, required=True)
    add_teacher_args(p)
    p.set_defaults(func=cmd_assemble)

    p = subparsers.add_parser("yolo-data", help="pseudo-labels or a COCO dataset -> ultralytics YOLO-seg layout")
    p.add_argument("--labels", type=Path, help="pseudo-label folder (class-agnostic)")
    p.add_argument("--coco", type=Path, help="COCO instance file (class-aware)")
    p.add_argument("--images", type=Path, help="with --coco: folder its file_name entries are relative to")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--min-area", type=float, default=16)
    p.add_argument("--max-components", type=int, default=8)
    p.set_defaults(func=cmd_yolo_data)

    p = subparsers.add_parser("yolo", help="train YOLO-seg students with ultralytics (export them with `distill export`)")
    yolo = p.add_subparsers(dest="yolo_command", metavar="WHAT")
    t = yolo.add_parser("train", help="train (offline) with ultralytics' trainer")
    t.add_argument("data", type=Path, help="data.yaml written by `distill yolo-data`")
    t.add_argument("--model", default="yolov8s-seg", help="variant name (from scratch) or a local .pt")
    t.add_argument("--out", type=Path, required=True, help="ultralytics project folder")
    t.add_argument("--name", default="train")
    t.add_argument("--epochs", type=int, default=100)
    t.add_argument("--imgsz", type=int, default=1024)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--patience", type=int, default=100)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto")
    t.add_argument("--resume", action="store_true")
    t.set_defaults(func=cmd_yolo_train)

    p = subparsers.add_parser("teachers", help="list the official teachers and their cache state")
    p.set_defaults(func=cmd_teachers)
    p = subparsers.add_parser("students", help="list the student encoders")
    p.set_defaults(func=cmd_students)
