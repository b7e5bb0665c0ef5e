"""Which network namespaces a recorder records: every one, or those named by ``--netns``.

A namespace is named by a path that enters it (``/run/netns/NAME``, ``/proc/PID/ns/net``), by
a name under /run/netns, or by its inode number. What is outside the wanted ones is dropped
in the kernel (the programs' ``netns_wanted`` map: it never takes ring-buffer space) and here,
from /proc walks and conntrack: sockets of other namespaces, processes whose network
namespace is another, conntrack tables of other namespaces.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass

from eventlog.errors import UsageError
from recorder.procfs import ProcWalk

NAMED_NETNS_DIR = "/run/netns"


def resolve(spec: str) -> int:
    """The inode of the network namespace ``spec`` names."""
    if spec.isdigit():
        return int(spec)
    path = spec if "/" in spec else f"{NAMED_NETNS_DIR}/{spec}"
    try:
        return os.stat(path).st_ino
    except OSError as exc:
        raise UsageError(f"--netns {spec}: {exc.strerror or exc}") from exc


@dataclass(frozen=True)
class NetnsScope:
    """The namespaces recorded; ``wanted`` None: all of them."""

    wanted: frozenset[int] | None = None

    @classmethod
    def of(cls, specs: Iterable[str]) -> NetnsScope:
        inodes = frozenset(resolve(spec) for spec in specs)
        return cls(inodes or None)

    def keeps(self, netns: int | None) -> bool:
        """Whether something in ``netns`` is recorded (an unknown namespace: only when every
        one is)."""
        return self.wanted is None or netns in self.wanted

    def namespaces(self, found: dict[int, str]) -> dict[int, str]:
        """Of ``found`` (inode -> a path entering it), the recorded ones."""
        return {inode: path for inode, path in found.items() if self.keeps(inode)}

    def walk(self, proc_walk: ProcWalk) -> ProcWalk:
        """What of a /proc walk is in the recorded namespaces."""
        if self.wanted is None:
            return proc_walk
        return dataclasses.replace(
            proc_walk,
            processes=[p for p in proc_walk.processes if self.keeps(p.netns)],
            connections=[c for c in proc_walk.connections if self.keeps(c.netns)],
            namespaces={n for n in proc_walk.namespaces if self.keeps(n)},
            namespace_paths=self.namespaces(proc_walk.namespace_paths),
            conntrack=None
            if proc_walk.conntrack is None
            else [e for e in proc_walk.conntrack if self.keeps(e.netns)],
        )

    def describe(self) -> list[int] | None:
        """For the recording's options: the inodes recorded, None for all."""
        return sorted(self.wanted) if self.wanted is not None else None
