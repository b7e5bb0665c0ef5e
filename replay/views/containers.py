"""Which container a process belongs to, and what its runtime called it.

A process's container is found by its cgroup path (a /proc snapshot saw it), else by the
cgroup ids its EXEC carried (``recorder.cgroups``: of the unified hierarchy and of one v1
hierarchy, as the host has them), else by its network namespace when exactly one container has it
(a process that forked without exec, in a container's namespace). What the container is
called, its image and labels are what the runtime's records (recorder.containers) said by
the moment shown.

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
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from eventlog.events import CgroupIds

_ID = r"([0-9a-f]{64})"
_PATTERNS = (
    ("docker", re.compile(rf"/docker[-/]{_ID}(?:\.scope)?(?:/|$)")),
    ("containerd", re.compile(rf"cri-containerd[-:]{_ID}(?:\.scope)?(?:/|$)")),
    ("cri-o", re.compile(rf"crio-(?:conmon-)?{_ID}(?:\.scope)?(?:/|$)")),
    ("podman", re.compile(rf"libpod-(?:conmon-)?{_ID}(?:\.scope)?(?:/|$)")),
    ("kubernetes", re.compile(rf"/kubepods[^\n]*/(?:pod[^/]+/)?{_ID}(?:/|$)")),
)


# The labels kubelet puts on the containers of a pod.
POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
POD_UID = "io.kubernetes.pod.uid"
POD_CONTAINER = "io.kubernetes.container.name"


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    uid: str

    @property
    def node_id(self) -> str:
        """Scope's pod node id: ``<pod uid>;<pod>`` (namespace/name without a uid label)."""
        return f"{self.uid or self.namespace + '/' + self.name};<pod>"


@dataclass(frozen=True)
class Container:
    runtime: str
    id: str
    name: str = ""  # as its runtime named it at the moment shown ("": no record of it)
    image: str = ""
    image_id: str = ""
    labels: tuple[tuple[str, str], ...] = field(default=())

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def label(self) -> str:
        """What a map calls it: its name, else (no runtime said) its short id, as Scope."""
        return self.name or self.short_id

    def label_value(self, key: str) -> str | None:
        return dict(self.labels).get(key)

    @property
    def pod(self) -> Pod | None:
        name = self.label_value(POD_NAME)
        if not name:
            return None
        return Pod(self.label_value(POD_NAMESPACE) or "", name, self.label_value(POD_UID) or "")

    @property
    def image_name(self) -> str:
        """Its image without the tag or digest, as Scope labelled image nodes."""
        image = self.image.split("@", 1)[0]
        slash = image.rfind("/")
        colon = image.rfind(":")
        return image[:colon] if colon > slash else image

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


@dataclass(frozen=True)
class ContainerRecord:
    """A container as of a moment (a row of the derived store's ``containers_at_ns``)."""

    host: str
    container: Container
    cgroup_ids: CgroupIds
    netns: int | None


def container_record(row: tuple[object, ...]) -> ContainerRecord:
    """From (host, id, name, image, image_id, labels JSON, runtime, cgroup_id, cgroup_v1_id,
    netns)."""
    host, cid, name, image, image_id, labels, runtime, cgroup_id, cgroup_v1_id, netns = row
    parsed = json.loads(str(labels)) if labels else {}
    pairs = (
        tuple(sorted((str(k), str(v)) for k, v in parsed.items()))
        if isinstance(parsed, dict)
        else ()
    )
    container = Container(
        str(runtime or ""), str(cid), str(name or ""), str(image or ""), str(image_id or ""), pairs
    )
    return ContainerRecord(
        str(host),
        container,
        CgroupIds(_integer(cgroup_id), _integer(cgroup_v1_id)),
        int(netns) if isinstance(netns, int) else None,
    )


def _integer(value: object) -> int | None:
    return int(value) if isinstance(value, int) else None


class ContainerIndex:
    """The containers of a moment, by what a process can be known by."""

    def __init__(self, records: Iterable[ContainerRecord], root_netns: Iterable[int] = ()) -> None:
        self.by_id: dict[tuple[str, str], Container] = {}
        # Ids of the two hierarchies may coincide: each is looked up in its own.
        self.by_cgroup: dict[tuple[str, int], Container] = {}
        self.by_v1_cgroup: dict[tuple[str, int], Container] = {}
        by_netns: dict[tuple[str, int], list[Container]] = {}
        roots = set(root_netns)  # a container on the host's network is not the host's
        for record in records:
            self.by_id[(record.host, record.container.id)] = record.container
            if record.cgroup_ids.unified is not None:
                self.by_cgroup[(record.host, record.cgroup_ids.unified)] = record.container
            if record.cgroup_ids.v1 is not None:
                self.by_v1_cgroup[(record.host, record.cgroup_ids.v1)] = record.container
            if record.netns is not None and record.netns not in roots:
                by_netns.setdefault((record.host, record.netns), []).append(record.container)
        # Containers sharing a namespace (a pod) leave it ambiguous: no guess.
        self.by_netns = {key: found[0] for key, found in by_netns.items() if len(found) == 1}

    def resolve(
        self, host: str, cgroup: str, cgroup_ids: CgroupIds, netns: int | None
    ) -> Container | None:
        by_path = container_of(cgroup)
        if by_path is not None:
            return self.by_id.get((host, by_path.id), by_path)
        if cgroup_ids.unified is not None and (host, cgroup_ids.unified) in self.by_cgroup:
            return self.by_cgroup[(host, cgroup_ids.unified)]
        if cgroup_ids.v1 is not None and (host, cgroup_ids.v1) in self.by_v1_cgroup:
            return self.by_v1_cgroup[(host, cgroup_ids.v1)]
        if netns is not None:
            return self.by_netns.get((host, netns))
        return None
