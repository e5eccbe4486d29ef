"""One small registry class shared by teachers, students, heads and exporters."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from sam_distill.core.errors import DistillError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to builders. ``prefix`` families (``timm_*``) build from the rest of the name."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._families: dict[str, T] = {}

    def register(self, name: str, *, family: bool = False) -> Callable[[T], T]:
        def add(obj: T) -> T:
            table = self._families if family else self._entries
            if name in table:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            table[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name in self._entries:
            return self._entries[name]
        for prefix, builder in self._families.items():
            if name.startswith(prefix) and len(name) > len(prefix):
                return builder
        raise DistillError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")

    def names(self) -> list[str]:
        return sorted(self._entries) + [f"{prefix}<name>" for prefix in sorted(self._families)]

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except DistillError:
            return False
        return True
