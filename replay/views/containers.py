"""Which container a process belongs to, from its cgroup paths.

Container runtimes name the cgroup of a container after its id; the shapes differ:

- docker:      /docker/<id>, .../docker-<id>.scope
- containerd:  .../cri-containerd-<id>.scope, .../containerd.service/...:cri-containerd:<id>
- cri-o:       .../crio-<id>.scope, /kubepods/.../crio-<id>
- podman:      .../libpod-<id>.scope, /libpod_parent/libpod-<id>
- kubernetes:  /kubepods/<qos>/pod<uid>/<id> (cgroup v1)

Ids are 64 hex digits. Scope showed the first 12 as the container's name when it had no
other; so do we.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

_ID = r"([0-9a-f]{64})"
_PATTERNS = (
    ("docker", re.compile(rf"/docker[-/]{_ID}(?:\.scope)?(?:/|$)")),
    ("containerd", re.compile(rf"cri-containerd[-:]{_ID}(?:\.scope)?(?:/|$)")),
    ("cri-o", re.compile(rf"crio-(?:conmon-)?{_ID}(?:\.scope)?(?:/|$)")),
    ("podman", re.compile(rf"libpod-(?:conmon-)?{_ID}(?:\.scope)?(?:/|$)")),
    ("kubernetes", re.compile(rf"/kubepods[^\n]*/(?:pod[^/]+/)?{_ID}(?:/|$)")),
)


@dataclass(frozen=True)
class Container:
    runtime: str
    id: str

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def node_id(self) -> str:
        """Scope's container node id: ``<container id>;<container>``."""
        return f"{self.id};<container>"


@functools.lru_cache(maxsize=8192)  # a map asks once per process; most share a cgroup
def container_of(cgroup: str | None) -> Container | None:
    """The container named by any line of /proc/<pid>/cgroup, or None (not in a container)."""
    if not cgroup:
        return None
    for line in cgroup.splitlines():
        path = line.split(":", 2)[-1] if line.count(":") >= 2 else line
        for runtime, pattern in _PATTERNS:
            match = pattern.search(path + "/")
            if match:
                return Container(runtime, match.group(1))
    return None
