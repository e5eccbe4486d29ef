"""Every snippet in README.md and docs/*.md works as written: each ```python block runs, in a folder holding
small random-weight stand-ins for the files it names (same formats as the real ones); each `distill` line of a
```bash block parses; each command of the README's tour table exists."""
from __future__ import annotations

import ast
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from sam_distill.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MODEL_SUFFIXES = (".pt", ".pth")
EXPORT_SUFFIXES = (".onnx", ".ort", ".tflite", ".pte")
# the session fixture (conftest.py) that exports the tiny teacher to the format of each suffix
EXPORT_FIXTURES = {".onnx": "tiny_onnx_export", ".ort": "tiny_onnx_export", ".tflite": "tiny_tflite_export",
                   ".pte": "tiny_pte_export"}


def blocks(language: str) -> list[tuple[str, str]]:
    """(an id naming the file and the block's number in it, the block's text) of every ```language block."""
    found = []
    for doc in DOCS:
        matches = [m for m in FENCE.finditer(doc.read_text()) if m.group(1) == language]
        found += [(f"{doc.relative_to(ROOT)}#{language}{index + 1}", m.group(2)) for index, m in enumerate(matches)]
    return found


def paths_named(code: str) -> list[str]:
    """The string literals of the code that name files (by suffix)."""
    suffixes = IMAGE_SUFFIXES + MODEL_SUFFIXES + EXPORT_SUFFIXES
    return [node.value for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and node.value.lower().endswith(suffixes)]


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """A photo and our model.pt (a timm test encoder in SAM); exported files come from the tiny teacher's exports
    (conftest.py), made when a snippet names one."""
    from PIL import Image

    from sam_distill.core.images import make_synthetic_images
    from sam_distill.sam.build import sam_with_encoder
    from sam_distill.sam.model_file import save_model
    from sam_distill.students import create_student

    folder = tmp_path_factory.mktemp("stand_ins")
    photo = make_synthetic_images(folder / "images", 1, size=160, seed=3)[0]
    Image.open(photo).convert("RGB").save(folder / "photo.jpg")
    name = "timm_test_efficientnet"
    save_model(sam_with_encoder(create_student(name, image_size=256), 256), folder / "model.pt", name)
    return folder


@pytest.fixture(scope="module")
def sam2_stand_in(tmp_path_factory) -> Path:
    """A SAM 2 student file (model.pt + model.yaml) of random weights, for snippets that load one with sam2."""
    from sam_distill.sam import sam2_models
    from sam_distill.sam.teachers import load_teacher

    teacher = load_teacher("sam2.1_hiera_nano", random_init=True)
    student, encoder = sam2_models.build_student("hiera_nano", teacher.model, teacher.config)
    path = tmp_path_factory.mktemp("sam2_stand_in") / "model.pt"
    return sam2_models.save_sam2_model(sam2_models.assemble_student(student, teacher.model),
                                       sam2_models.model_config(teacher.config, encoder), path, "hiera_nano")


@pytest.fixture(scope="module")
def hq_stand_in(tmp_path_factory) -> Path:
    """An HQ-SAM student file of random weights, for snippets that load one with segment-anything-hq."""
    from sam_distill.sam import hq_models
    from sam_distill.sam.teachers import load_teacher

    teacher = load_teacher("hq_vit_nano", random_init=True, image_size=256)
    model = hq_models.assemble_student(hq_models.build_student("timm_test_efficientnet", teacher.model), teacher.model)
    return hq_models.save_hq_model(model, "timm_test_efficientnet", tmp_path_factory.mktemp("hq_stand_in") / "model.pt")


def _model_stand_in(code: str, stand_ins: Path, request) -> Path:
    """The stand-in of the model family the snippet loads: SAM 2 (sam2), HQ-SAM (segment_anything_hq) or SAM."""
    if "sam2" in code:
        return request.getfixturevalue("sam2_stand_in")
    if "segment_anything_hq" in code:
        return request.getfixturevalue("hq_stand_in")
    return stand_ins / "model.pt"


def _make(path: Path, stand_ins: Path, request, code: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        source = stand_ins / "photo.jpg"
    elif path.suffix.lower() in MODEL_SUFFIXES:
        source = _model_stand_in(code, stand_ins, request)
        if source.with_suffix(".yaml").exists():  # a SAM 2 model's config lies beside it
            path.with_suffix(".yaml").write_bytes(source.with_suffix(".yaml").read_bytes())
    elif path.suffix in EXPORT_FIXTURES and path.stem in ("encoder", "decoder"):
        source = request.getfixturevalue(EXPORT_FIXTURES[path.suffix])[0] / path.name
    else:
        raise AssertionError(f"a snippet names {path}; teach tests/test_docs.py to make one")
    path.write_bytes(source.read_bytes())


@pytest.mark.parametrize("code", [code for _, code in blocks("python")], ids=[name for name, _ in blocks("python")])
def test_python_snippets_run_as_written(code, stand_ins, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    for name in paths_named(code):
        _make(tmp_path / name, stand_ins, request, code)
    exec(compile(code, "snippet", "exec"), {"__name__": "__snippet__"})  # noqa: S102  (our own docs)


def distill_lines(code: str) -> list[list[str]]:
    """The argument lists of the `distill` (or `python -m sam_distill`) command lines of a shell block."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words and Path(words[0]).name == "distill":
            commands.append(words[1:])
        elif words[1:3] == ["-m", "sam_distill"]:
            commands.append(words[3:])
    return commands


def _parses(argv: list[str]) -> bool:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            build_parser().parse_args(argv)
        except SystemExit as stop:
            return stop.code == 0
    return True


def test_shell_snippets_use_real_commands_and_options():
    commands = [argv for _, code in blocks("bash") for argv in distill_lines(code)]
    assert len(commands) >= 2  # the README's main job and the export example at least
    for argv in commands:
        assert _parses(argv), f"`distill {' '.join(argv)}` does not parse"


def test_tour_table_lists_real_commands():
    """Each command of the README's tour exists (placeholders, options and brackets aside), the verbs are all
    there, and a spelling that is gone does not parse."""
    readme = (ROOT / "README.md").read_text()
    tour = readme[readme.index("## Tour of the commands"):readme.index("### Using a distilled model")]
    verbs = []
    for row in (line for line in tour.splitlines() if line.startswith("| `distill ")):
        for span in re.findall(r"`(distill [^`]*)`", row.split(" | ")[0]):
            words = []
            for word in span.split()[1:]:
                if not re.fullmatch(r"[a-z][a-z-]*", word):
                    break
                words.append(word)
            assert _parses([*words, "--help"]), f"the tour's `{span}` is not a command"
            verbs.append(" ".join(words))
    assert {"run", "embed", "pseudo-label", "train", "assemble", "yolo-data", "yolo train", "predict", "eval ap",
            "eval fidelity", "export", "bench", "report"} <= set(verbs)
    assert not _parses(["segment", "--help"]) and not _parses(["mask-ap", "--help"])
