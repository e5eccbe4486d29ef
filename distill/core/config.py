"""The machinery of the one config schema: typed sections that reject unknown keys naming the valid ones,
``--set key.sub=value`` overrides and YAML reading. The schema itself is composed from the sections each method
registers (``sam_distill.methods.config``), so a recipe and its sections are named in one place."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sam_distill.core.errors import DistillError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class RunConfigBase(Section):
    """The keys every run has. ``sam_distill.methods.config`` adds ``recipe`` and one field per method section."""

    name: str = "run"
    run_dir: Optional[Path] = Field(None, description="default: runs/<name>")
    seed: int = 0
    device: str = "auto"

    def resolved_run_dir(self) -> Path:
        return self.run_dir or Path("runs") / self.name


def _valid_keys(model: type[BaseModel], location: tuple) -> list[str]:
    for part in location[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        for candidate in getattr(annotation, "__args__", ()) or (annotation,):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                model = candidate
                break
        else:
            return []
    return list(model.model_fields)


def describe_validation_error(err: ValidationError, source: str, model: type[BaseModel]) -> str:
    first = err.errors()[0]
    location = tuple(first["loc"])
    key = ".".join(str(p) for p in location)
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'; valid keys here: {', '.join(_valid_keys(model, location))}"
    return f"{source}: key '{key}': {first['msg']} (got {first.get('input')!r})"


def validate(model: type[BaseModel], data: dict, source: str) -> BaseModel:
    """``data`` as ``model``, or one sentence naming the key at fault (and the valid keys beside it)."""
    if not isinstance(data, dict):
        raise DistillError(f"{source}: expected a mapping of keys at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise DistillError(describe_validation_error(err, source, model)) from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``key.sub=value`` pairs from the command line, values parsed as YAML."""
    for override in overrides:
        if "=" not in override:
            raise DistillError(f"override {override!r} must look like key.sub=value")
        dotted, raw = override.split("=", 1)
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise DistillError(f"override {override!r}: '{part}' is not a section")
        node[last] = yaml.safe_load(raw)
    return data


def read_yaml(path: Path | str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"config {path} does not exist")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise DistillError(f"config {path} is not valid YAML{where}: {getattr(err, 'problem', err)}") from None
