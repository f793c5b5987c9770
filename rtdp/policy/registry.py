"""Registries by name: denoisers, noise schedules, samplers and training-level samplers register their classes
when they are defined, so configs name them and factories never branch on a specific one."""

from __future__ import annotations


class Registry[T]:
    """Classes of one kind, by name; an unknown name lists the known ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, type[T]] = {}

    def add(self, name: str, cls: type[T]) -> None:
        if not name or not isinstance(name, str):
            raise TypeError(f"{cls.__qualname__}: a {self.kind} class needs a non-empty string `name`")
        if name in self._items and self._items[name] is not cls:
            other = self._items[name]
            raise ValueError(f"{self.kind} name {name!r} is taken by {other.__module__}.{other.__qualname__}")
        self._items[name] = cls

    def get(self, name: str) -> type[T]:
        try:
            return self._items[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self):
        return iter(self.names())


def register_subclass(registry: Registry, cls: type) -> None:
    """Register `cls` under the `name` it sets in its own body (intermediate base classes set none)."""
    name = cls.__dict__.get("name")
    if name is not None:
        registry.add(name, cls)
