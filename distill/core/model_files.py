"""The one model-file table: "which model file is this, and what can be done with it?" is answered here only.

Each method registers the kinds of file it writes (:class:`ModelKind`): how to recognise one (its ``format``
tag, or a test on the file's contents for files other tools write), and, as lazy ``"module:function"``
references, how to load, time (bench), predict with and export it. Lazy references keep the table cheap to
build (no ultralytics or coremltools import until a file of that kind is used) and keep this layer free of
imports from above it: the methods fill the table when ``sam_distill.methods`` is imported, which
:func:`identify` does on first use.

Every command that takes a model file goes through :func:`identify`, so a file that is not a model gets the same
one line everywhere, naming the kinds the toolkit takes. ``distill export`` also asks the kind which formats it
exports to and which export options each format applies (:class:`Exporter`), so an option that does not apply
is refused or named, never silently dropped.
"""
from __future__ import annotations

import importlib
import inspect
import pickle
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sam_distill.core.errors import DistillError
from sam_distill.core.registry import Registry

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


@dataclass(frozen=True)
class Probe:
    """What a safe look at a file tells: its suffix, our ``format`` tag, the state dict's keys and their top-level
    prefixes,
    or the class a pickled file would have run (``pickled``: set when ``weights_only`` loading refused it)."""

    path: Path
    suffix: str
    tag: str | None = None
    prefixes: frozenset[str] = frozenset()
    keys: frozenset[str] = frozenset()
    pickled: str | None = None


@dataclass(frozen=True)
class Exporter:
    """How a kind is exported to one format: ``function`` (a ``"module:function"`` reference) writes the files, and
    ``options`` names the export options it applies (fields of ``ExportOptions``: ``int8``, ``fp16``,
    ``static_shapes``, ``calibration``). An option no chosen format applies is refused in one line."""

    function: str
    options: tuple[str, ...] = ()


def option_flag(option: str) -> str:
    """The command-line flag of an export option: ``static_shapes`` -> ``--static-shapes``."""
    return "--" + option.replace("_", "-")


@dataclass
class ModelKind:
    """One kind of model file. ``load``/``bench``/``predict`` are ``"module:function"`` references resolved on use
    (``bench(path, device=, threads=, image_size=)`` returns an ``eval.bench.BenchModel``); ``exporters`` maps a
    format to its :class:`Exporter`. A missing entry means the kind does not support that verb (one line says so)."""

    name: str
    what: str  # "a SAM model (ours, MobileSAM's or an official checkpoint)": used in messages
    how_to_make: str  # "make one with `distill run`": used when a file of another kind is given
    tags: tuple[str, ...] = ()
    matches: Callable[[Probe], bool] | None = None
    load: str | None = None
    bench: str | None = None
    predict: str | None = None
    exporters: dict[str, Exporter] = field(default_factory=dict)

    def recognises(self, probe: Probe) -> bool:
        if probe.tag is not None and probe.tag in self.tags:
            return True
        return self.matches is not None and self.matches(probe)

    def function(self, verb: str, fmt: str | None = None) -> Callable[..., Any]:
        """The callable behind ``verb`` ("load", "bench", "predict" or "export" with ``fmt``), or one sentence
        saying that this kind does not support it."""
        if verb == "export":
            reference = self.exporter(fmt or "").function
        else:
            reference = getattr(self, verb)
            if reference is None:
                raise DistillError(f"{self.what} does not support `{verb}`")
        module, _, attribute = reference.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def load_file(self, path: Path | str, image_size: int | None = None) -> Any:
        """What this kind's loader returns for ``path``; ``image_size`` asks for another input size than the file's,
        which only kinds whose loader takes one allow (one line for the others)."""
        load = self.function("load")
        if image_size is None:
            return load(Path(path))
        if "image_size" not in inspect.signature(load).parameters:
            raise DistillError(f"--image-size: {path} is {self.what}, which runs at its own input size; drop the option")
        return load(Path(path), image_size=image_size)

    def exporter(self, fmt: str) -> Exporter:
        """The exporter of ``fmt``, or one sentence naming this kind's formats (or the kinds that export at all)."""
        if not self.exporters:
            exportable = "; ".join(MODEL_KINDS.get(n).what for n in MODEL_KINDS.names() if MODEL_KINDS.get(n).exporters)
            raise DistillError(f"{self.what} has no exporters; `distill export` takes: {exportable}")
        if fmt not in self.exporters:
            raise DistillError(f"{self.what} cannot be exported to {fmt!r}; choose one of: "
                               f"{', '.join(sorted(self.exporters))}")
        return self.exporters[fmt]

    def options_not_applied(self, formats: list[str], asked: list[str]) -> list[str]:
        """Lines naming each asked-for option that some chosen formats do not apply (so the files say what they
        are); one sentence (raised) when no chosen format applies it."""
        exporters = {fmt: self.exporter(fmt) for fmt in formats}
        lines = []
        for option in asked:
            applying = [fmt for fmt, exporter in exporters.items() if option in exporter.options]
            if not applying:
                supported = "; ".join(f"{fmt}: {' '.join(map(option_flag, e.options)) or 'none'}"
                                      for fmt, e in self.exporters.items())
                raise DistillError(f"{option_flag(option)} does not apply to {self.what} exported to "
                                   f"{', '.join(formats)}; options this kind applies, per format: {supported}")
            if len(applying) < len(exporters):
                skipped = [fmt for fmt in exporters if fmt not in applying]
                lines.append(f"{option_flag(option)} applies to {', '.join(applying)} only; the "
                             f"{', '.join(skipped)} files are written without it")
        return lines


MODEL_KINDS: Registry[ModelKind] = Registry("model kind")


def register_kind(kind: ModelKind) -> ModelKind:
    return MODEL_KINDS.register(kind.name)(kind)


def _ensure_registered() -> None:
    importlib.import_module("sam_distill.methods")


def probe(path: Path | str) -> Probe:
    """A safe look at ``path``: nothing in it is executed (``weights_only=True``, memory-mapped)."""
    import torch

    path = Path(path)
    if not path.exists():
        raise DistillError(f"model file {path} does not exist")
    if not path.is_file():
        raise DistillError(f"model {path} is a folder; give the model file inside it (e.g. {path}/model.pt)")
    suffix = path.suffix.lower()
    if suffix not in TORCH_SUFFIXES:
        return Probe(path, suffix)
    if path.stat().st_size == 0:
        raise DistillError(f"{path} is not a model file: it is empty (0 bytes)")
    unreadable = f"{path} is not a model file: it is not a readable PyTorch file"
    try:  # torch.save's zip archives are memory-mapped; the legacy (pre-1.6) format cannot be
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except (pickle.UnpicklingError, KeyError) as err:  # torch's unpickler raises KeyError on some text
        message = str(err)
        found = next((message.split(marker, 1)[1].split()[0].strip("`'\",.")
                      for marker in ("GLOBAL ", "Unsupported global: ") if marker in message), None)
        if found is None:  # not a refused class but bytes that are no pickle at all (text, JSON, noise)
            raise DistillError(f"{unreadable} (neither a torch.save archive nor a pickle)") from None
        return Probe(path, suffix, pickled=found)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise DistillError(f"{unreadable} ({reason})") from None
    if not isinstance(payload, dict):
        return Probe(path, suffix)
    tag = payload.get("format") if isinstance(payload.get("format"), str) else None
    state = payload if tag is not None else _state_dict(payload)
    keys = frozenset(map(str, state)) if isinstance(state, dict) else frozenset()
    return Probe(path, suffix, tag, frozenset(key.split(".", 1)[0] for key in keys), keys)


def _state_dict(payload: dict) -> dict:
    """The tensors of a loaded payload: its ``state_dict`` (ours, Lightning) or ``model`` entry, or the payload itself
    (a bare state dict, as MobileSAM's and the official SAM files are)."""
    for key in ("state_dict", "model"):
        if isinstance(payload.get(key), dict):
            return payload[key]
    return payload


def same_weights(first: Path | str, second: Path | str) -> bool:
    """Whether two PyTorch model files hold the same tensors under the same names (our ``model.pt`` and its
    MobileSAM-layout ``mobile_sam.pt`` copy do). Memory-mapped: only files with the same names and shapes are read."""
    import torch

    try:
        a, b = (_state_dict(torch.load(p, map_location="cpu", weights_only=True, mmap=True)) for p in (first, second))
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, AttributeError):
        return False
    if a.keys() != b.keys() or not all(isinstance(v, torch.Tensor) for v in (*a.values(), *b.values())):
        return False
    if any(a[k].shape != b[k].shape or a[k].dtype != b[k].dtype for k in a):
        return False
    return all(torch.equal(a[k], b[k]) for k in a)


_WARNED_PICKLES: set[Path] = set()


def identify(path: Path | str) -> ModelKind:
    """The kind of a model file, or one sentence naming what the toolkit takes."""
    _ensure_registered()
    found = probe(path)
    for name in MODEL_KINDS.names():
        kind = MODEL_KINDS.get(name)
        if kind.recognises(found):
            if found.pickled and found.path.resolve() not in _WARNED_PICKLES:
                _WARNED_PICKLES.add(found.path.resolve())
                print(f"distill: note: {found.path} is {kind.what}, a pickle ({found.pickled}); its own library loads it, "
                      "which runs code stored in the file: use only files you trust", file=sys.stderr)
            return kind
    takes = "; ".join(f"{MODEL_KINDS.get(n).what}" for n in MODEL_KINDS.names())
    if found.pickled:
        detail = f"it holds pickled Python objects ({found.pickled}), which are not loaded since that would run code"
    elif found.tag:
        detail = f"its format {found.tag!r} is not one this version knows"
    elif found.suffix in TORCH_SUFFIXES:
        detail = "a PyTorch file of no known layout"
    else:
        detail = f"files ending {found.suffix or 'in no suffix'} are not model files"
    raise DistillError(f"{found.path} is not a model file of this toolkit ({detail}); it takes: {takes}")


def load_model_file(path: Path | str, expect: tuple[str, ...] = (), image_size: int | None = None
                    ) -> tuple[ModelKind, Any]:
    """(kind, loaded model) of a model file; ``expect`` limits the kinds a command accepts; ``image_size`` asks for
    another input size than the file's, which only kinds whose loader takes one allow."""
    kind = identify(path)
    if expect and kind.name not in expect:
        wanted = " or ".join(MODEL_KINDS.get(name).what for name in expect)
        raise DistillError(f"{path} is {kind.what}, but this command takes {wanted} "
                           f"({MODEL_KINDS.get(expect[0]).how_to_make})")
    return kind, kind.load_file(path, image_size)
