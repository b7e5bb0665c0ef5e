"""The derived stores kept in the cache directory: which log each was derived from, and
removing those whose log is gone (they hold what the log held, command lines included).

A store names its log inside (its ``meta``), so a listing does not depend on the hashed file
name. A store another command is syncing is busy: it is listed as such and never removed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

import duckdb

from eventlog.errors import QueryError, ScopeError
from eventlog.location import resolve
from eventlog.timefmt import format_ns
from replay.derived.store import cache_dir, connect_read_only, remove_files, side_files
from replay.output import to_json_listing, to_table

STORE_GLOB = "derived-*.duckdb"


class LogState(enum.StrEnum):
    present = "present"
    gone = "gone"
    url = "database URL"  # a server's log: whether it is still there is not checked
    unknown = "unknown"  # the store could not be read (damaged, or of another version)
    busy = "busy"  # another command holds the store (syncing it)


@dataclass(frozen=True)
class CachedStore:
    path: Path
    size: int  # bytes, with the files beside it
    used_ns: int  # last written
    log: str | None  # the log it was derived from, as its meta names it
    synced: int | None  # the log position it holds events up to
    log_state: LogState

    @property
    def removable(self) -> bool:
        """Removed by a prune: its log is gone, or it cannot be read (only derived data)."""
        return self.log_state in (LogState.gone, LogState.unknown)


def cached_stores(directory: Path | None = None) -> list[CachedStore]:
    """The stores in ``directory`` (default: the cache directory), by name."""
    where = directory or cache_dir()
    if not where.is_dir():
        return []
    return [_describe(path) for path in sorted(where.glob(STORE_GLOB))]


def remove_store(store: CachedStore) -> None:
    remove_files(store.path)


def _describe(path: Path) -> CachedStore:
    files = [path, *(side for side in side_files(path) if side.exists())]
    size = sum(f.stat().st_size for f in files)
    used_ns = max(f.stat().st_mtime_ns for f in files)
    try:
        meta = _meta(path)
    except _BusyError:
        return CachedStore(path, size, used_ns, None, None, LogState.busy)
    log = meta.get("log")
    synced = meta.get("synced_position")
    return CachedStore(path, size, used_ns, log, int(synced) if synced else None, _log_state(log))


class _BusyError(Exception):
    pass


def _meta(path: Path) -> dict[str, str]:
    try:
        con = connect_read_only(path, lock_wait_s=0.0)
    except QueryError as exc:
        if "lock" in str(exc).lower():
            raise _BusyError from exc
        return {}
    try:
        return dict(con.execute("SELECT key, value FROM meta").fetchall())
    except duckdb.Error:
        return {}
    finally:
        con.close()


def _log_state(log: str | None) -> LogState:
    if log is None:
        return LogState.unknown
    try:
        location = resolve(log)
    except ScopeError:
        return LogState.unknown
    if location.path is None:
        return LogState.url
    return LogState.present if location.path.exists() else LogState.gone


# -- what the commands print -----------------------------------------------------------------
def render_list(directory: Path, stores: list[CachedStore], fmt: str) -> str:
    if fmt == "json":
        head = {"directory": str(directory), "bytes": sum(s.size for s in stores)}
        return to_json_listing(head, "stores", [_document(store) for store in stores])
    header = f"derived stores in {directory}: {len(stores)}, {_size(sum(s.size for s in stores))}\n"
    rows = [
        [store.path.name, _size(store.size), _second(store.used_ns),
         "" if store.synced is None else store.synced, store.log or "?", store.log_state.value]
        for store in stores
    ]  # fmt: skip
    return header + to_table(("store", "size", "last_used", "synced_to", "log", "log_is"), rows)


def render_pruned(removed: list[CachedStore], total: int) -> str:
    lines = [
        f"removed {store.path.name} ({_size(store.size)}): {_why(store)}\n" for store in removed
    ]
    freed = _size(sum(store.size for store in removed))
    return "".join(lines) + f"removed {len(removed)} of {total} stores, {freed} freed\n"


def _why(store: CachedStore) -> str:
    if store.log_state is LogState.unknown:
        return "it cannot be read (damaged, or of another version)"
    return f"its log {store.log} is {store.log_state.value}"


def _document(store: CachedStore) -> dict[str, object]:
    return {
        "store": str(store.path), "bytes": store.size, "last_used": format_ns(store.used_ns),
        "synced_to": store.synced, "log": store.log, "log_is": store.log_state.value,
    }  # fmt: skip


def _second(ns: int) -> str:
    return format_ns(ns - ns % 1_000_000_000).replace(".000000000Z", "Z")


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    amount = size / 1024
    for unit in ("KiB", "MiB"):
        if amount < 1024:
            return f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} GiB"
