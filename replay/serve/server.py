"""Running the app: the address to listen on, the token, uvicorn."""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket
import sys
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from eventlog.errors import UsageError
from eventlog.location import LogLocation
from replay.serve.app import Limits, create_app
from replay.serve.session import LogSession

DEFAULT_BIND = "127.0.0.1:4040"
# How long a connection may go without a request to answer: from its start, and from the
# end of its last answer (HTTP keep-alive).
IDLE_S = 5.0


class TimelyProtocol(H11Protocol):
    """uvicorn's HTTP/1.1, with a connection closed once it has gone ``IDLE_S`` without a
    request to answer, however much of one it sent. uvicorn's own keep-alive runs only
    after an answer, until the next byte: a connection that sends nothing, or the start of
    a request and no more, would be held for ever, and enough of them keep every other
    client out (the number of connections is bounded only by the process's files: the
    requests answered at once are bounded by the app, replay.serve.app.Limits)."""

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(IDLE_S, self._idle)

    def _idle(self) -> None:
        answering = self.cycle is not None and not self.cycle.response_complete
        if not answering:
            self.timeout_keep_alive_handler()  # (closes the connection)


def server_config(app: Any) -> uvicorn.Config:
    """How uvicorn runs the app (the command and its tests alike)."""
    return uvicorn.Config(
        app,
        http=TimelyProtocol,
        log_level="warning",
        timeout_keep_alive=int(IDLE_S),
        server_header=False,
        access_log=False,
    )


@dataclass(frozen=True)
class Bind:
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        return ipaddress.ip_address(self.host).is_loopback

    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"


def parse_bind(text: str) -> Bind:
    """``HOST:PORT`` (``[V6]:PORT`` for IPv6)."""
    host, sep, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"invalid --bind {text!r}: use HOST:PORT, e.g. 127.0.0.1:4040")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError as exc:
            raise UsageError(f"invalid --bind {text!r}: {host} is not an IP address") from exc
    return Bind(host, int(port_text))


def listening_socket(bind: Bind) -> socket.socket:
    """The socket, bound here so that a taken port is one clear line, not uvicorn's log."""
    family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bind.host, bind.port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {bind.host}:{bind.port}: {exc.strerror}") from exc
    sock.listen(128)
    return sock


def chosen_token(bind: Bind, token: str | None) -> tuple[str | None, bool]:
    """The token the API asks for, and whether it was made here (to be printed): an
    address other than loopback is never served without one."""
    if token is not None:
        if len(token) < 16:
            raise UsageError("--token must be at least 16 characters")
        return token, False
    if bind.loopback:
        return None, False
    return secrets.token_urlsafe(24), True


def serve(location: LogLocation, bind_text: str, token: str | None) -> None:
    """Serve the log at ``location`` until interrupted."""
    bind = parse_bind(bind_text)
    token, generated = chosen_token(bind, token)
    sock = listening_socket(bind)
    session = LogSession(location)
    for notice in session.notices:
        print(f"scope-replay: warning: {notice}", file=sys.stderr, flush=True)
    url = bind.url() + (f"#token={token}" if token and generated else "")
    print(f"scope-replay: serving {location.display()} at {url}", flush=True)
    if generated:
        print(f"scope-replay: API token (generated): {token}", flush=True)
    config = server_config(create_app(session, token, Limits()))
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        session.close()
        sock.close()
