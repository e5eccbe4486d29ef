"""``distill bench MODEL...`` and ``distill report RUN_DIR...``."""
from __future__ import annotations

from pathlib import Path


def cmd_bench(args) -> int:
    from sam_distill.core.errors import DistillError
    from sam_distill.core.fileio import atomic_write_json
    from sam_distill.core.model_files import identify
    from sam_distill.eval.bench import PHASES, bench_many, format_bench_table

    phases = tuple(dict.fromkeys(p.strip() for p in args.phases.split(",") if p.strip()))
    if not phases or set(phases) - set(PHASES):
        raise DistillError(f"--phases {args.phases!r}: give one or both of {', '.join(PHASES)} (comma-separated)")
    for model in args.models:  # a file that is not a model: one line before anything is timed (missing: skipped)
        if Path(model).exists():
            identify(model)
    result = bench_many(args.models, runs=args.runs, warmup=args.warmup, device=args.device, threads=args.threads,
                        random_init=args.random_init, image_size=args.image_size, cache_dir=args.cache,
                        phases=phases, memory=not args.no_memory)
    print(format_bench_table(result))
    if args.out:
        atomic_write_json(args.out, result)
        print(f"written {args.out} (feed it, or its run folder, to `distill report`)")
    return 0 if result["rows"] else 2


def cmd_report(args) -> int:
    from sam_distill.eval.report import build_report

    out = args.out or (Path(args.runs[0]) / "reports" if Path(args.runs[0]).is_dir() else Path("report"))
    build_report(args.runs, out)
    return 0


def register(subparsers) -> None:
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
    p.add_argument("--image-size", type=int, default=1024, help="input size for --random-init and dynamic ONNX inputs")
    p.add_argument("--cache", type=Path, help="teacher embedding cache: adds fidelity to the teacher among MODELS")
    p.add_argument("--out", type=Path, help="write the rows as JSON (e.g. RUN/reports/bench.json)")
    p.set_defaults(func=cmd_bench)

    p = subparsers.add_parser("report", help="report.md/.html, results.json and pareto.png from run folders")
    p.add_argument("runs", nargs="+", type=Path, help="run folders (or bench JSON files)")
    p.add_argument("--out", type=Path, help="output folder (default: the first run's reports/)")
    p.set_defaults(func=cmd_report)
