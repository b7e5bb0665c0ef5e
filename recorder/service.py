"""Telling a service manager how the recorder is doing (systemd's notification protocol).

A unit of ``Type=notify`` hands its main process a datagram socket in ``$NOTIFY_SOCKET`` and
waits for ``READY=1`` before it counts the service as started: for the recorder, that is the
moment capture is live (loading the programs takes seconds, and what happens before is not
recorded). ``STATUS=`` is the line ``systemctl status`` shows; ``STOPPING=1`` says a stop
has begun. Without ``$NOTIFY_SOCKET`` (not run by a service manager) nothing is sent.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

ENVIRONMENT = "NOTIFY_SOCKET"


class ServiceNotifier:
    """Sends state to the service manager, if one asked for it; a failure to send is said
    once (through ``warn``) and not again."""

    def __init__(self, warn: Callable[[str], None] | None = None) -> None:
        self._address = _address(os.environ.get(ENVIRONMENT, ""))
        self._warn = warn
        self._failed = False
        self._pid = os.getpid()

    @property
    def active(self) -> bool:
        return self._address is not None

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self._send(f"STOPPING=1\nSTATUS={status}")

    def _send(self, message: str) -> None:
        if self._address is None or self._failed:
            return
        if os.getpid() != self._pid:
            # A fork of the recorder inherits the signal handlers that call this: only the
            # recorder speaks for the service.
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message.encode(), self._address)
        except OSError as exc:
            self._failed = True
            if self._warn is not None:
                self._warn(
                    f"warning: cannot notify the service manager at ${ENVIRONMENT} "
                    f"({exc.strerror or exc}); it may count the recorder as not started"
                )


def _address(value: str) -> str | None:
    """A path, or an abstract socket name (``@name``, Linux's leading NUL)."""
    if not value or not value.startswith(("/", "@")):
        return None  # unset, or not a unix socket this protocol names
    return "\0" + value[1:] if value.startswith("@") else value
