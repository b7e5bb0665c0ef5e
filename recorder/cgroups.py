"""The cgroup hierarchies a process can be known by: what EXEC events and container records
carry, so that replay maps a process to its container without a /proc walk having seen it.

A cgroup's id is the inode of its directory in cgroupfs: ``bpf_get_current_cgroup_id``
returns it for the unified (v2) hierarchy, and the programs read it for one v1 hierarchy
(task -> css_set -> subsys[N] -> cgroup -> kernfs node). Hosts differ in which one places
containers:

- v2 (unified only): the unified hierarchy, at /sys/fs/cgroup.
- hybrid: v1 controllers at /sys/fs/cgroup/<controller>, the unified hierarchy at
  /sys/fs/cgroup/unified. Runtimes may place a container in both, or (some cgroup drivers)
  in the v1 controllers only, with the unified line left at a parent's cgroup.
- v1 only: no unified hierarchy is mounted; every task sits in the kernel's default root.

So both ids are taken where the host has both, and each is trusted only where the cgroup
it names is a container's. Ids of different hierarchies may coincide: they are kept apart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from eventlog.events import CgroupIds

MOUNTINFO = "/proc/self/mountinfo"
# The v1 controller whose hierarchy the programs follow: the first mounted of these. Every
# container runtime places a container in each of them; ``name=systemd`` has no controller,
# so the kernel's css_set cannot reach it.
V1_CONTROLLERS = ("pids", "memory", "cpu", "devices", "freezer")


@dataclass(frozen=True)
class Hierarchies:
    """Where this host mounts the hierarchies that cgroup ids are taken from."""

    unified: str | None  # the cgroup2 mount point; None on a v1-only host
    v1_controller: str | None  # the followed v1 controller; None on a v2-only host
    v1_root: str | None  # its mount point


def hierarchies(mountinfo: str = MOUNTINFO) -> Hierarchies:
    """This host's hierarchies, from ``mountinfo`` (absent file: none known)."""
    try:
        with open(mountinfo) as lines:
            return parse_mountinfo(lines.read())
    except OSError:
        return Hierarchies(None, None, None)


def parse_mountinfo(text: str) -> Hierarchies:
    """The unified mount and the followed v1 controller's mount, from mountinfo text. Pure."""
    unified = None
    v1: dict[str, str] = {}
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        if tail[0] == "cgroup2" and unified is None:
            unified = fields[4]
        elif tail[0] == "cgroup":
            for option in tail[2].split(","):
                v1.setdefault(option, fields[4])
    controller = next((name for name in V1_CONTROLLERS if name in v1), None)
    return Hierarchies(unified, controller, v1.get(controller) if controller else None)


def ids_of(cgroup_text: str, container_id: str, where: Hierarchies) -> CgroupIds:
    """The ids of the cgroups that ``cgroup_text`` (a /proc/<pid>/cgroup) gives in each
    followed hierarchy, each only where its path names ``container_id``: a process whose
    unified line stayed at a shared parent must not make that parent the container's."""
    unified = v1 = None
    for line in cgroup_text.splitlines():
        _number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if container_id not in path:
            continue
        if controllers == "" and where.unified is not None:
            unified = _inode(where.unified + path)
        elif where.v1_controller in controllers.split(",") and where.v1_root is not None:
            v1 = _inode(where.v1_root + path)
    return CgroupIds(unified, v1)


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None
