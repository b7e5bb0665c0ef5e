"""Container ids from cgroup paths of each runtime; what runtimes' records add."""

from __future__ import annotations

import json

import pytest

from eventlog.events import CgroupIds
from replay.views.containers import ContainerIndex, container_of, container_record

ID = "4f1c2d3e" * 8


@pytest.mark.parametrize(
    ("cgroup", "runtime"),
    [
        (f"0::/system.slice/docker-{ID}.scope", "docker"),
        (f"12:pids:/docker/{ID}\n0::/docker/{ID}", "docker"),
        (
            f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-{ID}.scope",
            "containerd",
        ),
        (
            f"0::/system.slice/containerd.service/kubepods-besteffort-pod12.slice:cri-containerd:{ID}",
            "containerd",
        ),
        (f"0::/kubepods.slice/kubepods-pod5.slice/crio-{ID}.scope", "cri-o"),
        (f"0::/machine.slice/libpod-{ID}.scope", "podman"),
        (
            f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container",
            "podman",
        ),
        (f"11:memory:/kubepods/besteffort/pod8a1b/{ID}", "kubernetes"),
    ],
)
def test_each_runtime(cgroup: str, runtime: str) -> None:
    container = container_of(cgroup)
    assert container is not None
    assert (container.runtime, container.id, container.short_id) == (runtime, ID, ID[:12])


@pytest.mark.parametrize(
    "cgroup",
    [
        None,
        "",
        "0::/",
        "0::/system.slice/sshd.service",
        "0::/user.slice/user-0.slice/session-3.scope",
        f"0::/system.slice/docker-{ID[:20]}.scope",
        "garbage without colons",
    ],
)
def test_not_in_a_container(cgroup: str | None) -> None:
    assert container_of(cgroup) is None


# -- what the runtime's records add ---------------------------------------------------------

PODDED = "c" * 64
OTHER = "d" * 64


def _index() -> ContainerIndex:
    labels = json.dumps({"io.kubernetes.pod.name": "web-1", "io.kubernetes.pod.namespace": "shop"})
    # web is known by its unified cgroup (77), db by its v1 one (77 too: ids of the two
    # hierarchies are numbered apart and may coincide).
    rows = [
        ("h", PODDED, "web", "registry.example:5000/shop/web:1.2", "sha256:1", labels, "podman", 77, None, 4026532001),
        ("h", OTHER, "db", "db@sha256:abc", "sha256:2", None, "docker", None, 77, 4026532002),
        ("h", "e" * 64, "host-net", "x", "", None, "docker", None, None, 4026531833),
    ]  # fmt: skip
    return ContainerIndex([container_record(row) for row in rows], root_netns=[4026531833])


NO_IDS = CgroupIds(None, None)


def test_a_process_is_placed_by_path_then_cgroup_ids_then_namespace() -> None:
    index = _index()
    by_path = index.resolve("h", f"0::/libpod_parent/libpod-{OTHER}", CgroupIds(77, None), None)
    assert by_path is not None and by_path.name == "db"  # the path names it; records name it
    by_id = index.resolve("h", "0::/", CgroupIds(77, None), None)
    assert by_id is not None and by_id.name == "web"
    by_v1_id = index.resolve("h", "", CgroupIds(1, 77), None)  # 1: the unified root
    assert by_v1_id is not None and by_v1_id.name == "db"
    by_netns = index.resolve("h", "", NO_IDS, 4026532002)
    assert by_netns is not None and by_netns.name == "db"
    assert (
        index.resolve("h", "", NO_IDS, 4026531833) is None
    )  # the host's namespace: not a container's
    assert index.resolve("other-host", "", CgroupIds(77, 77), 4026532001) is None


def test_images_and_pods_are_read_as_scope_read_them() -> None:
    web = _index().by_id[("h", PODDED)]
    assert web.image_name == "registry.example:5000/shop/web"
    assert web.pod is not None and web.pod.node_id == "shop/web-1;<pod>"
    db = _index().by_id[("h", OTHER)]
    assert (db.image_name, db.pod, db.label) == ("db", None, "db")
