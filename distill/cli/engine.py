"""The engine's commands: run, embed, train, assemble, eval fidelity, teachers, students."""
from __future__ import annotations

import argparse
from pathlib import Path

from sam_distill.core.errors import DistillError


def _teacher_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", default="sam_vit_h",
                        help="official name (sam_vit_h, sam_vit_l, sam_vit_b, mobile_sam) or architecture (vit_b, ...)")
    parser.add_argument("--checkpoint", type=Path, help="local checkpoint file (else the official one is downloaded)")
    parser.add_argument("--random-init", action="store_true", help="random weights of the architecture (smoke tests)")
    parser.add_argument("--image-size", type=int, default=1024, help="input size, with --random-init only")
    parser.add_argument("--device", default="auto")


def _load_teacher(args):
    from sam_distill.sam.teachers import load_teacher

    return load_teacher(args.teacher, args.checkpoint, args.random_init, args.image_size)


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
    teacher = _load_teacher(args)
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
    train_indices, holdout = cache.split(args.holdout)
    config = TrainConfig(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                         grad_accum=args.grad_accum, lr=args.lr, warmup_steps=args.warmup_steps,
                         checkpoint_every=args.checkpoint_every, log_every=args.log_every, num_workers=args.workers,
                         amp=not args.no_amp)
    if not args.resume and (args.out / "last.pt").exists():
        raise DistillError(f"{args.out} already holds a training state; pass --resume to continue it or choose another --out")
    student = init_student(args.student, cache.image_size, args.init)
    summary = train_stage(student, cache, train_indices, config, args.out, context, args.seed, print,
                          {"student": args.student, "cache": str(args.cache)})
    if context.is_main:
        print(f"trained {summary['steps']} steps; state in {args.out / 'last.pt'} "
              f"({len(holdout)} held-out images left for `distill eval fidelity`)")
    return 0


def cmd_assemble(args) -> int:
    from sam_distill.methods.mobilesam.stages import load_trained_student, write_models

    state = args.state if args.state.is_file() else args.state / "last.pt"
    if not state.is_file():
        raise DistillError(f"training state {state} does not exist; train first with `distill train`")
    teacher = _load_teacher(args)
    student = load_trained_student(args.student, teacher.image_size, state)
    paths = write_models(student, args.student, teacher, args.out, {"teacher": teacher.describe(), "state": str(state)})
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def cmd_fidelity(args) -> int:
    from sam_distill.core.device import pick_device
    from sam_distill.data.cache import EmbeddingCache
    from sam_distill.eval.fidelity import fidelity, format_table, write_fidelity
    from sam_distill.sam.model_file import load_model

    cache = EmbeddingCache(args.cache)
    teacher = _load_teacher(args)
    student, _ = load_model(args.model)
    _, holdout = cache.split(args.holdout, args.max_holdout)
    indices = holdout if holdout and not args.all else list(range(len(cache)))
    result = fidelity(teacher.model, student, cache, indices[: args.max_images], args.points,
                      device=pick_device(args.device))
    result["teacher"] = teacher.describe()
    print(format_table(result))
    if args.out:
        write_fidelity(result, args.out)
        print(f"written {args.out}")
    return 0


def cmd_teachers(args) -> int:
    from sam_distill.sam.build import ARCHITECTURES
    from sam_distill.sam.official import TEACHERS, checkpoint_cache_dir

    for name in TEACHERS.names():
        spec = TEACHERS.get(name)
        cached = (checkpoint_cache_dir() / spec.filename).exists()
        print(f"{name:<11} {spec.arch:<11} {'cached' if cached else 'not cached':<11} {spec.url}")
    print(f"architectures for --random-init or local files: {', '.join(ARCHITECTURES)}")
    print(f"cache: {checkpoint_cache_dir()}")
    return 0


def cmd_students(args) -> int:
    from sam_distill.students import list_students

    for name in list_students():
        print(name)
    print("e.g. timm_efficientvit_b0, timm_repvit_m1, timm_mobilenetv4_conv_small")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="run a recipe from a YAML config, end to end (rerun to resume)")
    p.add_argument("config", type=Path)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser("embed", help="cache a teacher's image embeddings (resumable, torchrun-aware)")
    p.add_argument("images", type=Path, help="image folder (searched recursively)")
    p.add_argument("--out", type=Path, required=True, help="cache folder")
    _teacher_args(p)
    p.add_argument("--shard-size", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--workers", type=int, default=0)
    p.set_defaults(func=cmd_embed)

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
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("assemble", help="student encoder + the teacher's decoder -> one SAM checkpoint")
    p.add_argument("state", type=Path, help="training folder or its last.pt")
    p.add_argument("--student", default="tinyvit_5m")
    p.add_argument("--out", type=Path, required=True)
    _teacher_args(p)
    p.set_defaults(func=cmd_assemble)

    p = subparsers.add_parser("eval", help="evaluate models")
    evals = p.add_subparsers(dest="eval_command", metavar="WHAT")
    f = evals.add_parser("fidelity", help="mIoU and embedding similarity of a student against its teacher")
    f.add_argument("model", type=Path)
    f.add_argument("--cache", type=Path, required=True)
    _teacher_args(f)
    f.add_argument("--points", type=int, default=8, help="point prompts per image")
    f.add_argument("--holdout", type=float, default=0.1, help="as data.holdout_fraction of the run")
    f.add_argument("--max-holdout", type=int, default=200, help="as data.max_holdout of the run")
    f.add_argument("--all", action="store_true", help="use every cached image, not only the held-out ones")
    f.add_argument("--max-images", type=int, default=50)
    f.add_argument("--out", type=Path, help="write the JSON here")
    f.set_defaults(func=cmd_fidelity)

    p = subparsers.add_parser("teachers", help="list the official teachers and their cache state")
    p.set_defaults(func=cmd_teachers)
    p = subparsers.add_parser("students", help="list the student encoders")
    p.set_defaults(func=cmd_students)
