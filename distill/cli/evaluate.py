"""``distill eval ap|fidelity|miou``, ``distill bench MODEL...`` and ``distill report RUN_DIR...``."""
from __future__ import annotations

from pathlib import Path

from sam_distill.cli.options import add_model_options, add_teacher_args, load_teacher_from, model_options
from sam_distill.core.errors import DistillError


def cmd_ap(args) -> int:
    from sam_distill.cli import print_json
    from sam_distill.core.device import pick_device
    from sam_distill.core.fileio import atomic_write_json
    from sam_distill.methods.predict import evaluate_ap

    scores = evaluate_ap(args.source, args.annotations, args.images, pick_device(args.device), model_options(args),
                         args.split, args.val_fraction, args.class_agnostic)
    if args.out:
        atomic_write_json(args.out, scores)
    print_json(scores)
    return 0


def cmd_fidelity(args) -> int:
    from sam_distill.core.device import pick_device
    from sam_distill.core.model_files import load_model_file
    from sam_distill.data.cache import EmbeddingCache
    from sam_distill.eval.fidelity import fidelity, format_table, write_fidelity

    _, (student, _) = load_model_file(args.model, expect=("sam",))
    cache = EmbeddingCache(args.cache)
    teacher = load_teacher_from(args)
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


PAIR_SUFFIXES = {".onnx": "onnx", ".ort": "ort", ".tflite": "tflite", ".pte": "pte"}


def exported_predictor(encoder: Path, decoder: Path | None):
    """An exported encoder/decoder pair (ONNX, ORT, LiteRT or ExecuTorch, any precision) behind ``SamPredictor``'s
    interface, run in its own runtime."""
    from sam_distill.export.parity import open_pair

    file_format = PAIR_SUFFIXES.get(encoder.suffix)
    if decoder is None:
        raise DistillError(f"{encoder} is an exported encoder: name its decoder too, --decoder DECODER{encoder.suffix} "
                           f"(the pair `distill export` writes, e.g. decoder{encoder.suffix} beside it)")
    for path, role in ((encoder, "encoder"), (decoder, "--decoder")):
        if path.suffix != encoder.suffix or file_format is None or not path.is_file():
            raise DistillError(f"{role} {path} is not an exported {'/'.join(PAIR_SUFFIXES)} file of the encoder's "
                               "format; give the pair `distill export` writes")
    try:
        predictor = open_pair(file_format, encoder, decoder)
    except ImportError as err:
        raise DistillError(f"{encoder}: its runtime is not installed ({err}); docs/export.md names the extra") from None
    except Exception as err:  # the runtime's own message says what is wrong with the file
        raise DistillError(f"{encoder} / {decoder}: the {file_format} runtime cannot load them "
                           f"({str(err).splitlines()[0][:160]})") from None
    if file_format in ("onnx", "ort") and ([i.name for i in predictor.encoder.get_inputs()] != ["image"] or
                                           "image_embeddings" not in [i.name for i in predictor.decoder.get_inputs()]):
        raise DistillError(f"{encoder} / {decoder} are not a SAM encoder (input image) and decoder (input "
                           "image_embeddings) pair in that order; give the files `distill export` writes")
    return predictor


def cmd_miou(args) -> int:
    from sam_distill.core.device import pick_device
    from sam_distill.core.fileio import atomic_write_json
    from sam_distill.core.model_files import load_model_file
    from sam_distill.data.coco import load_coco, split_image_ids
    from sam_distill.eval.miou import format_miou_table, ground_truth_miou, promptable

    if args.model.suffix in PAIR_SUFFIXES or args.decoder is not None:
        if args.image_size is not None:
            raise DistillError(f"--image-size: {args.model} is an exported graph, which runs at the input size it "
                               "was exported at; drop the option (or give the model file it was exported from)")
        model = exported_predictor(args.model, args.decoder)
    else:
        kind, loaded = load_model_file(args.model, expect=("sam", "sam2", "hq"), image_size=args.image_size)
        model = promptable(kind.name, loaded[0], pick_device(args.device))

    image_ids = split_image_ids(load_coco(args.annotations), args.split, args.val_fraction, args.annotations)
    result = ground_truth_miou(model, args.annotations, args.images, args.clicks, image_ids, args.max_images,
                               pick_device(args.device))
    result["model"] = str(args.model) + (f" + {args.decoder}" if args.decoder else "")
    if args.image_size is not None:
        result["image_size"] = args.image_size  # not the file's own: say so beside the figures
    print(format_miou_table(result, f"{result['model']}: mIoU against {args.annotations}"))
    if args.out:
        atomic_write_json(args.out, result)
        print(f"written {args.out}")
    return 0


def cmd_bench(args) -> int:
    from sam_distill.core.fileio import atomic_write_json
    from sam_distill.core.model_files import identify
    from sam_distill.eval.bench import PHASES, bench_many, format_bench_table

    phases = tuple(dict.fromkeys(p.strip() for p in args.phases.split(",") if p.strip()))
    if not phases or set(phases) - set(PHASES):
        raise DistillError(f"--phases {args.phases!r}: give one or both of {', '.join(PHASES)} (comma-separated)")
    if args.teacher is not None and args.teacher not in args.models:
        raise DistillError(f"--teacher {args.teacher}: not among the models to bench; name it there too")
    for model in args.models:  # a file that is not a model: one line before anything is timed (missing: skipped)
        if Path(model).exists():
            identify(model)
    result = bench_many(args.models, runs=args.runs, warmup=args.warmup, device=args.device, threads=args.threads,
                        random_init=args.random_init, image_size=args.image_size, cache_dir=args.cache,
                        phases=phases, memory=not args.no_memory, teacher=args.teacher)
    print(format_bench_table(result))
    if args.out:
        atomic_write_json(args.out, result)
        print(f"written {args.out} (feed it, or its run folder, to `distill report`)")
    return 0 if result["rows"] else 2


def cmd_report(args) -> int:
    from sam_distill.eval.report import build_report

    out = args.out or (Path(args.runs[0]) / "reports" if Path(args.runs[0]).is_dir() else Path("report"))
    overlays = None
    if (args.coco is None) != (args.images is None):
        raise DistillError("report: masks on images need both --coco ANN and --images DIR (or neither)")
    if args.overlay_score is not None and not 0.0 <= args.overlay_score <= 1.0:
        raise DistillError(f"report --overlay-score {args.overlay_score:g}: a detection score is between 0 and 1")
    if args.coco is not None:
        from sam_distill.core.device import pick_device
        from sam_distill.data.coco import load_coco, split_image_ids

        ids = split_image_ids(load_coco(args.coco), args.split, args.val_fraction, args.coco)[: args.overlays]
        overlays = {"annotations": args.coco, "images": args.images, "image_ids": ids,
                    "device": str(pick_device(args.device))}
        if args.overlay_score is not None:
            overlays["min_score"] = args.overlay_score
    teacher_runs = {}
    for pair in args.against:
        run, sep, teacher_run = pair.partition("=")
        if not (sep and run and teacher_run):
            raise DistillError(f"report --against {pair}: expected RUN=TEACHER_RUN (run folder names), e.g. "
                               f"--against det_student=det_teacher")
        teacher_runs[run] = teacher_run
    build_report(args.runs, out, overlays=overlays, teacher_runs=teacher_runs)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="score models: COCO AP against ground truth, fidelity to the teacher")
    evals = p.add_subparsers(dest="eval_command", metavar="WHAT", required=True)
    a = evals.add_parser("ap", help="COCO mask and box AP/AP50/AP75 of a model file or of predictions (pycocotools)")
    a.add_argument("source", type=Path, help="a model file (any kind `distill predict` takes), a `distill predict` "
                                             "output folder, or a COCO results .json in the ground truth's image ids")
    a.add_argument("--annotations", type=Path, required=True, help="COCO instances json (the ground truth)")
    a.add_argument("--images", type=Path, help="for a model file: the folder its file_name entries are relative to")
    a.add_argument("--split", choices=["all", "val", "train"], default="all",
                   help="the instance recipes' fixed file-name-hash split")
    a.add_argument("--val-fraction", type=float, default=0.2, help="as instances.val_fraction of the run")
    a.add_argument("--class-agnostic", action="store_true",
                   help="ignore classes (SAM everything mode, class-agnostic students)")
    a.add_argument("--out", type=Path, help="write the scores as JSON here")
    add_model_options(a, prompts=False)
    a.set_defaults(func=cmd_ap)

    f = evals.add_parser("fidelity", help="mIoU and embedding similarity of a student against its teacher")
    f.add_argument("model", type=Path, help="a SAM model file (model.pt, mobile_sam.pt)")
    f.add_argument("--cache", type=Path, required=True)
    add_teacher_args(f)
    f.add_argument("--points", type=int, default=8, help="point prompts per image")
    f.add_argument("--holdout", type=float, default=0.1, help="as data.holdout_fraction of the run")
    f.add_argument("--max-holdout", type=int, default=200, help="as data.max_holdout of the run")
    f.add_argument("--all", action="store_true", help="use every cached image, not only the held-out ones")
    f.add_argument("--max-images", type=int, default=50)
    f.add_argument("--out", type=Path, help="write the JSON here")
    f.set_defaults(func=cmd_fidelity)

    m = evals.add_parser("miou", help="SAM's promptable-segmentation protocols against ground truth: GT-box mIoU, "
                                      "one-click and k-click mIoU, NoC@85/90, per class and size, box-as-mask baseline")
    m.add_argument("model", type=Path, help="a SAM model file (model.pt, mobile_sam.pt, an official SAM .pth) or "
                   "an exported encoder .onnx/.ort/.tflite/.pte (with --decoder)")
    m.add_argument("--decoder", type=Path,
                   help="with an exported encoder: its decoder of the same format (any precision)")
    m.add_argument("--coco", dest="annotations", type=Path, required=True, help="COCO instances json (ground truth)")
    m.add_argument("--images", type=Path, required=True, help="the folder its file_name entries are relative to")
    m.add_argument("--clicks", type=int, default=5, help="corrective clicks per object (mIoU after each, NoC)")
    m.add_argument("--image-size", type=int,
                   help="run the model at N px instead of the size it was trained at (small objects look larger); "
                        "for encoders that take any input size, such as the timm ConvNet students")
    m.add_argument("--split", choices=["all", "val", "train"], default="all",
                   help="the instance recipes' fixed file-name-hash split")
    m.add_argument("--val-fraction", type=float, default=0.2, help="as instances.val_fraction of the run")
    m.add_argument("--max-images", type=int, help="only the first N images (by id)")
    m.add_argument("--device", default="auto")
    m.add_argument("--out", type=Path, help="write the JSON (summary, per class, per size, per object) here; as "
                   "RUN/reports/miou_NAME.json it becomes the ground-truth columns of `distill report`")
    m.set_defaults(func=cmd_miou)

    p = subparsers.add_parser("bench", help="latency, size, GFLOPs and memory of models (PyTorch, ONNX, ultralytics)")
    p.add_argument("models", nargs="+", help="model files (.pt/.pth/.onnx) or, with --random-init, teacher names")
    p.add_argument("--phases", default="encoder,decoder",
                   help="phases to time, comma-separated: encoder, decoder (total = their sum when both are timed)")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the peak-memory probe (a fresh process that loads each model and runs each phase once)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch and onnxruntime intra-op)")
    p.add_argument("--runs", type=int, default=10, help="timed runs per phase")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    p.add_argument("--device", default="cpu", help="cpu or cuda (ONNX always on CPU)")
    p.add_argument("--random-init", action="store_true",
                   help="names like sam_vit_b build the architecture with random weights (latency only)")
    p.add_argument("--image-size", type=int,
                   help="run SAM model files at N px instead of their trained size (encoders that take any input "
                        "size); also the size of --random-init teachers and dynamic ONNX inputs (default 1024 there)")
    p.add_argument("--cache", type=Path, help="teacher embedding cache: adds fidelity to the teacher among MODELS")
    p.add_argument("--teacher", help="one of MODELS to bench as the teacher, whatever its format (a SAM trained here "
                   "and saved as model.pt is otherwise one more student): the report's speed-ups are against it")
    p.add_argument("--out", type=Path, help="write the rows as JSON (e.g. RUN/reports/bench.json)")
    p.set_defaults(func=cmd_bench)

    p = subparsers.add_parser("report", help="report.md/.html, results.json and pareto.png from run folders")
    p.add_argument("runs", nargs="+", type=Path, help="run folders (or bench JSON files)")
    p.add_argument("--out", type=Path, help="output folder (default: the first run's reports/)")
    p.add_argument("--coco", type=Path, help="COCO instances json: adds overlays.png, every model's masks on a few of "
                                            "its images beside the ground truth")
    p.add_argument("--images", type=Path, help="with --coco: the folder its file_name entries are relative to")
    p.add_argument("--overlays", type=int, default=3, help="with --coco: how many images (the first of the split)")
    p.add_argument("--split", choices=["all", "val", "train"], default="val",
                   help="with --coco: the instance recipes' fixed file-name-hash split the images come from")
    p.add_argument("--val-fraction", type=float, default=0.2, help="as instances.val_fraction of the runs")
    p.add_argument("--overlay-score", type=float,
                   help="with --coco: draw the instance models' detections at or above this score (default 0.3; "
                        "lower it for models early in training, whose scores are low)")
    p.add_argument("--device", default="auto")
    p.add_argument("--against", action="append", default=[], metavar="RUN=TEACHER_RUN",
                   help="in 'Heavy vs light', compare RUN's models with TEACHER_RUN's (e.g. the same instance method "
                        "on the student's and on the teacher's encoder); run folder names, repeatable")
    p.set_defaults(func=cmd_report)
