"""A deterministic time line: events run in (time, insertion) order, each told its
own time, so that a model's state at time T does not depend on how often, or at
which intermediate times, somebody looked at it."""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
from collections.abc import Callable

__all__ = ["EventQueue", "derived_random", "unit_noise"]

Action = Callable[[float], None]


class EventQueue:
    def __init__(self, start: float) -> None:
        self.now = start
        self._heap: list[tuple[float, int, Action]] = []
        self._seq = itertools.count()

    def at(self, when: float, action: Action) -> None:
        """Run ``action(when)`` once the time line reaches ``when`` (never before now)."""
        heapq.heappush(self._heap, (max(when, self.now), next(self._seq), action))

    def after(self, delay: float, action: Action) -> None:
        self.at(self.now + max(0.0, delay), action)

    def run_until(self, until: float) -> None:
        """Run every event due at or before ``until``; time never goes backwards."""
        while self._heap and self._heap[0][0] <= until:
            when, _, action = heapq.heappop(self._heap)
            self.now = max(self.now, when)
            action(self.now)
        self.now = max(self.now, until)

    def next_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)


def _digest(*parts: object) -> bytes:
    return hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=16).digest()


def derived_random(*parts: object) -> random.Random:
    """A generator seeded from ``parts`` only (never from the process's hash seed)."""
    return random.Random(int.from_bytes(_digest(*parts), "big"))


def unit_noise(*parts: object) -> float:
    """A value in [-1, 1) determined by ``parts``."""
    return int.from_bytes(_digest(*parts)[:8], "big") / 2**63 - 1.0
