"""``distill demo MODEL [MODEL ...]``: heavy and light models side by side on a local page."""
from __future__ import annotations

from pathlib import Path

from sam_distill.core.errors import DistillError


def cmd_demo(args) -> int:
    from sam_distill.core.device import pick_device
    from sam_distill.serve.app import Demo, create_app
    from sam_distill.serve.models import open_model

    try:
        import uvicorn
    except ImportError:
        raise DistillError('distill demo needs starlette and uvicorn: pip install "sam-distill[demo]"') from None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"distill: note: serving on {args.host}: anyone who can reach this machine can use the page")
    device = pick_device(args.device)
    samples = []
    if args.images is not None:
        from sam_distill.core.images import find_images

        samples = find_images(args.images)[: args.max_images]
    demo = Demo([open_model(path, device) for path in args.models], samples=samples)
    print(f"distill demo: {', '.join(m.name for m in demo.models)} at http://{args.host}:{args.port}/ (Ctrl-C stops)")
    uvicorn.run(create_app(demo), host=args.host, port=args.port, log_level="warning")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="a local page: click on an image, see every model's masks side by side",
                              description="SAM files and ONNX export folders answer points, boxes and everything "
                                          "mode; instance models (RSPrompter, SAM-det/seg, SAM-cls, YOLO-seg) show "
                                          "their automatic result.")
    p.add_argument("models", nargs="+", type=Path, help="model files, or `distill export --format onnx` folders")
    p.add_argument("--images", type=Path, help="a folder whose images the page offers to pick (besides uploads)")
    p.add_argument("--max-images", type=int, default=50, help="with --images: how many it offers")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (default) keeps the page on this machine")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_demo)
