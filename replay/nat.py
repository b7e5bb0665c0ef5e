"""NAT at a moment: which connections conntrack rewrote, and to what.

A connection whose destination was rewritten (DNAT: a service's virtual address, a port
forward) reaches a real backend given by the conntrack entry's reply source; one whose source
was rewritten (SNAT, masquerade) is seen by the server from the reply destination. Replay
keeps the entries alive at T (replay.fold); here they are read back and indexed by the
original tuple, which is what the client's socket saw.
"""

from __future__ import annotations

from dataclasses import dataclass

from eventlog.events import (
    IPS_DST_NAT,
    IPS_NAT_MASK,
    IPS_SRC_NAT,
    ConntrackEntry,
    Kind,
    conntrack_entry,
)
from eventlog.reader import LogReader
from replay.state import ReplayState

Tuple = tuple[str, int, str, int]  # source address, port, destination address, port


@dataclass(frozen=True)
class Translation:
    """How conntrack rewrote one connection, as address texts."""

    client: Tuple  # the tuple the client's socket saw
    server_view: Tuple  # the same connection as the server's socket sees it
    entry: ConntrackEntry

    @property
    def real_destination(self) -> tuple[str, int] | None:
        if self.entry.status & IPS_DST_NAT:
            return self.server_view[2], self.server_view[3]
        return None

    @property
    def translated_source(self) -> tuple[str, int] | None:
        if self.entry.status & IPS_SRC_NAT:
            return self.server_view[0], self.server_view[1]
        return None


class NatIndex:
    def __init__(self) -> None:
        self._by_orig: dict[tuple[int, Tuple], list[Translation]] = {}

    def add(self, recording_id: int, entry: ConntrackEntry) -> None:
        if not entry.status & IPS_NAT_MASK:
            return
        from replay.connections import address_text  # noqa: PLC0415 - avoid an import cycle

        orig = (
            address_text(entry.orig_src),
            entry.orig_sport,
            address_text(entry.orig_dst),
            entry.orig_dport,
        )
        # The server's socket sees the reply tuple the other way round.
        seen = (
            address_text(entry.reply_dst),
            entry.reply_dport,
            address_text(entry.reply_src),
            entry.reply_sport,
        )
        self._by_orig.setdefault((recording_id, orig), []).append(Translation(orig, seen, entry))

    def lookup(self, recording_id: int, netns: int | None, tuple_: Tuple) -> Translation | None:
        found = self._by_orig.get((recording_id, tuple_))
        if not found:
            return None
        same_netns = [t for t in found if t.entry.netns == netns]
        chosen = same_netns or found
        return min(chosen, key=lambda t: (t.entry.netns, t.entry.ct_id))

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_orig.values())


def nat_index(reader: LogReader, state: ReplayState) -> NatIndex:
    """The NAT translations conntrack held at the state's moment."""
    index = NatIndex()
    if not state.conntrack:
        return index
    positions = sorted(set(state.conntrack.values()))
    events = reader.events_at(positions)
    snapshot_entries: dict[int, dict[tuple[int, int], ConntrackEntry]] = {}
    for (recording_id, netns, ct_id), position in sorted(state.conntrack.items()):
        event = events.get(position)
        if event is None:
            continue
        if event.kind == Kind.SNAPSHOT:
            if position not in snapshot_entries:
                snapshot_entries[position] = {
                    (e.netns, e.ct_id): e for e in reader.snapshot(position).conntrack
                }
            entry = snapshot_entries[position].get((netns, ct_id))
        else:
            entry = conntrack_entry(event)
        if entry is not None:
            index.add(recording_id, entry)
    return index
