"""The service manager's notifications (systemd's protocol), against real sockets."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from recorder.service import ENVIRONMENT, ServiceNotifier


def test_an_abstract_socket_is_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"scope-notify-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0" + name)
        manager.settimeout(5)
        monkeypatch.setenv(ENVIRONMENT, "@" + name)
        ServiceNotifier().ready("live")
        assert manager.recv(100) == b"READY=1\nSTATUS=live"


def test_without_a_manager_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENVIRONMENT, raising=False)
    assert not ServiceNotifier().active
    monkeypatch.setenv(ENVIRONMENT, "not-a-socket-name")
    assert not ServiceNotifier().active


def test_a_manager_that_cannot_be_reached_is_said_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(ENVIRONMENT, str(tmp_path / "gone"))
    said: list[str] = []
    notifier = ServiceNotifier(warn=said.append)
    notifier.ready("live")
    notifier.status("doing")
    assert len(said) == 1 and "cannot notify the service manager" in said[0]


def test_a_fork_does_not_speak_for_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """pyroute2 forks the recorder to open sockets in namespaces, and its SIGTERM ran the
    recorder's handler there, which said STOPPING for a recorder that was not stopping."""
    name = f"scope-notify-fork-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0" + name)
        manager.settimeout(5)
        monkeypatch.setenv(ENVIRONMENT, "@" + name)
        notifier = ServiceNotifier()
        child = os.fork()
        if child == 0:
            notifier.stopping("from a fork")
            os._exit(0)
        os.waitpid(child, 0)
        notifier.status("from the recorder")
        assert manager.recv(100) == b"STATUS=from the recorder"
