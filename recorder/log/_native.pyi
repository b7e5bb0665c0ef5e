from collections.abc import Callable, Iterable, Sequence
from typing import Any

from recorder.events import Event

sqlite_version: str

class Connection:
    def __init__(self, path: str, busy_timeout_ms: int, synchronous: str) -> None: ...
    @property
    def in_transaction(self) -> bool: ...
    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> list[tuple[Any, ...]]: ...
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> None: ...
    def insert_events(
        self,
        sql: str,
        events: list[Event],
        comm_ids: dict[str | None, int | None],
        netns_ids: dict[int | None, int | None],
        encode_extra: Callable[[dict[str, Any]], str | None],
        /,
    ) -> int: ...
    def close(self) -> None: ...

def mono_range(events: list[Event], /) -> tuple[int, int]: ...
