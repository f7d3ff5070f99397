"""Name → object registries (models, datasets, optimisers, schedules, views)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from cnnlab.errors import CnnlabError, one_of

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of objects, usually builder functions.

    Registering a name twice is an error (it would silently shadow the first entry); looking up a missing
    name raises a :class:`CnnlabError` that lists every valid name.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator registering its target under ``name`` (default: the target's ``__name__``)."""

        def deco(obj: T) -> T:
            self.add(name or obj.__name__, obj)  # type: ignore[attr-defined]
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        """Registers ``obj`` under ``name``; raises ``ValueError`` if the name is taken."""
        if name in self._items:
            raise ValueError(f"{self.name} {name!r} is already registered")
        self._items[name] = obj

    def get(self, name: str) -> T:
        """Returns the object registered as ``name``."""
        try:
            return self._items[name]
        except KeyError:
            raise one_of(self.name, name, self._items) from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


__all__ = ["CnnlabError", "Registry"]
