"""The one model-file table: "which model file is this, and what can be done with it?" is answered here only.

Each method registers the kinds of file it writes (:class:`ModelKind`): how to recognise one (its ``format``
tag, or a test on the file's contents for files other tools write), and, as lazy ``"module:function"``
references, how to load, time (bench), predict with and export it. Lazy references keep the table cheap to
build (no ultralytics or coremltools import until a file of that kind is used) and keep this layer free of
imports from above it: the methods fill the table when ``sam_distill.methods`` is imported, which
:func:`identify` does on first use.

Every command that takes a model file goes through :func:`identify`, so a file that is not a model gets the same
one line everywhere, naming the kinds the toolkit takes.
"""
from __future__ import annotations

import importlib
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sam_distill.core.errors import DistillError
from sam_distill.core.registry import Registry

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


@dataclass(frozen=True)
class Probe:
    """What a safe look at a file tells: its suffix, our ``format`` tag, the state dict's top-level key prefixes,
    or the class a pickled file would have run (``pickled``: set when ``weights_only`` loading refused it)."""

    path: Path
    suffix: str
    tag: str | None = None
    prefixes: frozenset[str] = frozenset()
    pickled: str | None = None


@dataclass
class ModelKind:
    """One kind of model file. ``load``/``bench``/``predict`` and the ``exporters`` values are ``"module:function"``
    references resolved on use; a missing one means the kind does not support that verb (one line says so)."""

    name: str
    what: str  # "a SAM model (ours, MobileSAM's or an official checkpoint)": used in messages
    how_to_make: str  # "make one with `distill run`": used when a file of another kind is given
    tags: tuple[str, ...] = ()
    matches: Callable[[Probe], bool] | None = None
    load: str | None = None
    bench: str | None = None
    predict: str | None = None
    exporters: dict[str, str] = field(default_factory=dict)

    def recognises(self, probe: Probe) -> bool:
        if probe.tag is not None and probe.tag in self.tags:
            return True
        return self.matches is not None and self.matches(probe)

    def function(self, verb: str, fmt: str | None = None) -> Callable[..., Any]:
        """The callable behind ``verb`` ("load", "bench", "predict" or "export" with ``fmt``), or one sentence
        saying that this kind does not support it."""
        if verb == "export":
            reference = self.exporters.get(fmt or "")
            if reference is None:
                formats = ", ".join(sorted(self.exporters)) or "none"
                raise DistillError(f"{self.what} cannot be exported to {fmt!r}; formats for this kind: {formats}")
        else:
            reference = getattr(self, verb)
            if reference is None:
                raise DistillError(f"{self.what} does not support `{verb}`")
        module, _, attribute = reference.partition(":")
        return getattr(importlib.import_module(module), attribute)


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
    state = payload
    for key in ("state_dict", "model"):
        if tag is None and isinstance(payload.get(key), dict):
            state = payload[key]
            break
    prefixes = frozenset(str(k).split(".", 1)[0] for k in state) if isinstance(state, dict) else frozenset()
    return Probe(path, suffix, tag, prefixes)


def identify(path: Path | str) -> ModelKind:
    """The kind of a model file, or one sentence naming what the toolkit takes."""
    _ensure_registered()
    found = probe(path)
    for name in MODEL_KINDS.names():
        kind = MODEL_KINDS.get(name)
        if kind.recognises(found):
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


def load_model_file(path: Path | str, expect: tuple[str, ...] = ()) -> tuple[ModelKind, Any]:
    """(kind, loaded model) of a model file; ``expect`` limits the kinds a command accepts."""
    kind = identify(path)
    if expect and kind.name not in expect:
        wanted = " or ".join(MODEL_KINDS.get(name).what for name in expect)
        raise DistillError(f"{path} is {kind.what}, but this command takes {wanted} "
                           f"({MODEL_KINDS.get(expect[0]).how_to_make})")
    return kind, kind.function("load")(Path(path))
