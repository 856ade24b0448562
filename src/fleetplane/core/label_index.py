"""An inverted label index: evaluate a selector over a whole fleet with set algebra.

Instead of calling ``Selector.matches`` on every object, each requirement is turned
into a set of object keys taken from posting sets ((label key, value) -> objects), and
the sets are combined:

* ``=`` / ``in``  -> union of the postings of the listed values   (include)
* ``exists``      -> union of all the postings of the key           (include)
* ``!=`` / ``notin`` -> union of the postings of the listed values  (exclude)
* ``!``           -> union of all the postings of the key           (exclude)

The result is the intersection of the include sets, starting from the smallest,
minus the exclude sets (or every object minus the exclude sets when nothing is
included). That is exactly ``{k for k in index if selector.matches(labels_of(k))}``,
because an object without the key is excluded by neither ``!=`` nor ``notin``.
"""

from __future__ import annotations

import builtins
from collections.abc import Hashable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from types import MappingProxyType
from typing import Generic, TypeVar

from fleetplane.core.selectors import Selector

__all__ = ["LabelIndex"]

K = TypeVar("K", bound=Hashable)

_POSITIVE = frozenset({"=", "in", "exists"})


class LabelIndex(Generic[K]):
    """Objects (by key) and their labels, indexed for fast selector evaluation.

    Not thread-safe: callers serialise writes against reads.
    """

    def __init__(self) -> None:
        self._labels: dict[K, dict[str, str]] = {}
        # No separate "objects with the key" sets: they doubled the index's memory (a few
        # controllers each hold one over the whole fleet) for ``exists`` and ``!`` only.
        self._postings: dict[str, dict[str, builtins.set[K]]] = {}
        self._all: builtins.set[K] = builtins.set()
        self._empty: frozenset[K] = frozenset()

    def __len__(self) -> int:
        return len(self._labels)

    def __contains__(self, key: object) -> bool:
        return key in self._labels

    def __iter__(self) -> Iterator[K]:
        return iter(self._labels)

    def labels_of(self, key: K) -> Mapping[str, str]:
        """A read-only view of the labels stored for ``key`` (KeyError if absent)."""
        return MappingProxyType(self._labels[key])

    def set(self, key: K, labels: Mapping[str, str]) -> None:
        """Insert ``key`` or replace its labels; only changed pairs touch the index."""
        old = self._labels.get(key)
        if old is not None and old == labels:
            return  # the common case: a status write, labels as they were
        new = dict(labels)
        old = old or {}
        for name, value in old.items():
            if new.get(name) != value:
                self._unpost(key, name, value)
        for name, value in new.items():
            if old.get(name) != value:
                self._postings.setdefault(name, {}).setdefault(value, builtins.set()).add(key)
        self._labels[key] = new
        self._all.add(key)

    def remove(self, key: K) -> None:
        """Forget ``key``; KeyError if it is not indexed."""
        labels = self._labels.pop(key)
        for name, value in labels.items():
            self._unpost(key, name, value)
        self._all.discard(key)

    def discard(self, key: K) -> None:
        """Forget ``key`` if it is indexed."""
        if key in self._labels:
            self.remove(key)

    def select(self, selector: Selector) -> builtins.set[K]:
        """The keys of all objects ``selector`` matches, as a new set."""
        if selector.empty:
            return builtins.set(self._all)
        include: list[AbstractSet[K]] = []
        exclude: list[AbstractSet[K]] = []
        for req in selector.requirements:
            if req.operator in ("exists", "!"):
                hits: AbstractSet[K] = self._present(req.key)
            else:
                hits = self._union(req.key, req.values)
            (include if req.operator in _POSITIVE else exclude).append(hits)

        if include:
            include.sort(key=len)
            result = builtins.set(include[0])
            for other in include[1:]:
                if not result:
                    return result
                result &= other  # CPython walks the smaller operand
        else:
            result = builtins.set(self._all)
        for other in exclude:
            if not result:
                break
            if len(other) < len(result):
                result -= other  # cost ~ len(other)
            else:
                result = {k for k in result if k not in other}  # cost ~ len(result)
        return result

    def _union(self, name: str, values: tuple[str, ...]) -> AbstractSet[K]:
        by_value = self._postings.get(name)
        if by_value is None:
            return self._empty
        if len(values) == 1:
            return by_value.get(values[0], self._empty)
        return builtins.set().union(*(by_value[v] for v in values if v in by_value))

    def _present(self, name: str) -> AbstractSet[K]:
        by_value = self._postings.get(name)
        if by_value is None:
            return self._empty
        if len(by_value) == 1:
            return next(iter(by_value.values()))
        return builtins.set().union(*by_value.values())

    def _unpost(self, key: K, name: str, value: str) -> None:
        by_value = self._postings[name]
        self._discard(by_value, value, key)
        if not by_value:
            del self._postings[name]

    @staticmethod
    def _discard(sets: dict[str, builtins.set[K]], name: str, key: K) -> None:
        members = sets[name]
        members.discard(key)
        if not members:
            del sets[name]  # no empty sets left behind: the index size tracks the fleet
