"""Which hierarchies a host's cgroup ids come from, and which ids name a container."""

from __future__ import annotations

import os
from pathlib import Path

from eventlog.events import CgroupIds
from recorder.cgroups import Hierarchies, ids_of, parse_mountinfo

HYBRID = """\
25 30 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:14 - cgroup cgroup rw,cpu,cpuacct
31 25 0:28 / /sys/fs/cgroup/memory rw,nosuid shared:15 - cgroup cgroup rw,memory
"""
V2 = "24 30 0:21 / /sys/fs/cgroup rw,nosuid,nodev shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
V1 = """\
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
28 25 0:25 / /sys/fs/cgroup/pids rw,nosuid shared:12 - cgroup cgroup rw,pids
"""


def test_hybrid_v2_and_v1_hosts() -> None:
    assert parse_mountinfo(HYBRID) == Hierarchies(
        "/sys/fs/cgroup/unified", "memory", "/sys/fs/cgroup/memory"
    )
    assert parse_mountinfo(V2) == Hierarchies("/sys/fs/cgroup", None, None)
    assert parse_mountinfo(V1) == Hierarchies(None, "pids", "/sys/fs/cgroup/pids")
    # A controller mounted together with another (cpu,cpuacct) is found by either name.
    only_cpu = HYBRID.replace("rw,memory", "rw,hugetlb")
    assert parse_mountinfo(only_cpu).v1_root == "/sys/fs/cgroup/cpu,cpuacct"
    assert parse_mountinfo("garbage\n\n - x") == Hierarchies(None, None, None)


def test_each_id_only_where_its_hierarchy_places_the_container(tmp_path: Path) -> None:
    cid = "a" * 64
    unified, pids = tmp_path / "unified", tmp_path / "pids"
    for root in (unified, pids):
        (root / "libpod_parent" / f"libpod-{cid}").mkdir(parents=True)
    where = Hierarchies(str(unified), "pids", str(pids))
    both = f"8:pids:/libpod_parent/libpod-{cid}\n0::/libpod_parent/libpod-{cid}\n"
    ids = ids_of(both, cid, where)
    assert ids == CgroupIds(
        os.stat(unified / "libpod_parent" / f"libpod-{cid}").st_ino,
        os.stat(pids / "libpod_parent" / f"libpod-{cid}").st_ino,
    )
    # The unified line left at a shared parent (a v1-only cgroup driver): not the container's.
    v1_only = f"8:pids:/libpod_parent/libpod-{cid}\n0::/user.slice\n"
    assert ids_of(v1_only, cid, where) == CgroupIds(None, ids.v1)
    # A controller not followed, or a cgroup that is gone: no id.
    other = f"4:memory:/libpod_parent/libpod-{cid}\n0::/libpod_parent/libpod-{'b' * 64}\n"
    assert ids_of(other, cid, where) == CgroupIds(None, None)
