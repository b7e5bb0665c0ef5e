"""Small dictionaries that keep repeated values out of the events table.

Process names and network namespace inodes repeat on almost every event; storing a small
integer id instead saves about ten bytes per event. Ids are assigned inside the append's
transaction and only become part of the cache once that transaction commits.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

V = TypeVar("V", bound=Hashable)

DICTIONARIES = {"comms": "name", "netns": "inode"}  # table -> value column


class Dictionary(Generic[V]):
    """Value -> id cache for one dictionary table."""

    def __init__(self, known: Iterable[tuple[int, V]] = ()) -> None:
        self.ids: dict[V | None, int | None] = {value: ident for ident, value in known}
        self.ids[None] = None
        self._pending: dict[V | None, int | None] = {}

    def prepare(self, values: Iterable[V | None], fetch_or_insert: Callable[[V], int]) -> None:
        """Give every new value an id, through ``fetch_or_insert`` (inside the transaction)."""
        ids = self.ids
        for value in values:
            if value not in ids and value not in self._pending:
                assert value is not None
                self._pending[value] = fetch_or_insert(value)
        if self._pending:
            ids.update(self._pending)

    def commit(self) -> None:
        self._pending.clear()

    def rollback(self) -> None:
        for value in self._pending:
            self.ids.pop(value, None)
        self._pending.clear()
