from typing import Any

KINDS: dict[str, int]

# (pairs, failed, leftover, others, opens), as Fold._apply_fast computes them
FastRun = tuple[
    list[tuple[int, int]],
    list[int],
    list[tuple[int, int | None]],
    list[tuple[int, int]],
    dict[int, int],
]

# (count, last, snapshot, rows, fast, folded_last): see RunReader.fold_run
RunOutcome = tuple[
    int, int, int | None, list[tuple[int, int, int | None]] | None, FastRun | None, int | None
]

class RunReader:
    def __init__(self, path: str, busy_timeout_ms: int) -> None: ...
    def fold_run(
        self,
        after: int,
        upto: int,
        sockets: dict[int, int],
        retain: bool,
        segments: list[tuple[int, int]] | None = None,
        low: int | None = None,
        high: int | None = None,
        /,
    ) -> RunOutcome | None: ...
    def reconcile_snapshot(
        self,
        position: int,
        recording: int,
        open_states: frozenset[int] | set[int],
        listen_state: int,
        sockets: dict[int, int],
        snapshot_sockets: dict[Any, int],
        namespaces: set[int] | None,
        /,
    ) -> tuple[list[int], list[Any], list[Any]] | None: ...
    def reconcile_processes(
        self, position: int, recording: int, processes: dict[tuple[int, int], int], /
    ) -> bool: ...
    def socket_views(
        self,
        opens: list[int],
        pairs: list[tuple[int, int]],
        start_ns: int,
        at_ns: int,
        clocks: dict[int, list[tuple[int, int]]],
        hosts: dict[int, str],
        comms: dict[Any, str | None],
        namespaces: dict[Any, int | None],
        view_type: Any,
        field_names: tuple[str, ...],
        decode_extra: Any,
        plain: bool = False,
        /,
    ) -> tuple[list[Any], list[Any]] | None: ...
    def socket_hint(self, positions: list[int], /) -> bytes | None: ...
    def load_hint(self, data: bytes, /) -> int: ...
    def close(self) -> None: ...

def reconcile_sockets(
    opened: list[Any],
    closing: list[Any],
    sockets: dict[int, int],
    tuples: dict[int, Any],
    snapshot_sockets: dict[Any, int],
    recording: int,
    namespaces: set[int] | None,
    /,
) -> tuple[list[int], list[Any], list[Any]] | None: ...
def soft_heap_limit() -> int: ...
