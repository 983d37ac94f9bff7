"""A minimal Qt-free signal, so the logic can report to a widget without importing Qt."""
from __future__ import annotations

from typing import Callable


class Signal:
    def __init__(self, description: str = ""):
        self.description = description
        self._slots: list[Callable] = []

    def connect(self, slot: Callable) -> None:
        if slot not in self._slots:
            self._slots.append(slot)

    def disconnect(self, slot: Callable) -> None:
        if slot in self._slots:
            self._slots.remove(slot)

    def emit(self, *args) -> None:
        for slot in list(self._slots):
            slot(*args)
