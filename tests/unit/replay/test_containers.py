"""Container ids from cgroup paths of each runtime."""

from __future__ import annotations

import pytest

from replay.views.containers import container_of

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
