"""A PostgreSQL COMMIT whose answer never comes back: the batch is in the log once.

Between the recorder and a real PostgreSQL server, a TCP relay forwards everything until
told to break the connection at the next COMMIT: after forwarding it (the server commits,
the recorder hears nothing: the batch must not be written again when retried), or instead
of forwarding it (nothing committed: the retry must write it).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import psycopg
import pytest

from eventlog.errors import LogError
from eventlog.events import Loss
from eventlog.location import resolve
from tests.factories import MONO_BASE_NS, conn_event, recording_writer
from tests.postgres import PostgresServer

pytestmark = pytest.mark.postgres

Break = Literal["after commit", "before commit"]
COMMIT = b"COMMIT"


class _Relay:
    """Relays connections to ``port``; ``arm`` breaks the next one that sends a COMMIT."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()[1]
        self.armed: Break | None = None
        self.broken = threading.Event()
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, how: Break) -> None:
        self.broken.clear()
        self.armed = how

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.port))
            answered = threading.Event()
            answered.set()
            threading.Thread(target=self._up, args=(client, server, answered), daemon=True).start()
            threading.Thread(
                target=self._down, args=(server, client, answered), daemon=True
            ).start()

    def _up(self, client: socket.socket, server: socket.socket, answered: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                how = self.armed
                if how is not None and COMMIT in data:
                    self.armed = None
                    if how == "after commit":
                        answered.clear()  # the server's answer is not passed on
                        server.sendall(data)
                        time.sleep(0.5)  # (it commits meanwhile)
                    self.broken.set()
                    for end in (client, server):  # (shut down: a recv() waiting wakes)
                        with contextlib.suppress(OSError):
                            end.shutdown(socket.SHUT_RDWR)
                        end.close()
                    return
                server.sendall(data)
        except OSError:
            pass

    @staticmethod
    def _down(server: socket.socket, client: socket.socket, answered: threading.Event) -> None:
        try:
            while data := server.recv(65536):
                if not answered.is_set():
                    return
                client.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.closing = True
        self.listener.close()


@contextmanager
def _relayed(pg_server: PostgresServer, name: str) -> Iterator[tuple[str, _Relay]]:
    url = pg_server.create_database(name)
    relay = _Relay(pg_server.port)
    try:
        yield url, relay
    finally:
        relay.close()


def _log(url: str) -> tuple[list[tuple[int, int]], list[int], list[tuple[int, int]]]:
    """The batches' positions, the events' sockets in position order, the losses."""
    with psycopg.connect(url) as conn:
        batches = conn.execute("SELECT first_position, last_position FROM batches ORDER BY 1")
        sockets = conn.execute("SELECT sock_id FROM events ORDER BY position")
        losses = conn.execute("SELECT lost, after_position FROM losses ORDER BY id")
        return (
            [tuple(row) for row in batches.fetchall()],
            [row[0] for row in sockets.fetchall()],
            [tuple(row) for row in losses.fetchall()],
        )


@pytest.mark.parametrize("how", ["after commit", "before commit"])
def test_a_batch_retried_after_an_unanswered_commit_is_in_the_log_once(
    pg_server: PostgresServer, how: Break
) -> None:
    with _relayed(pg_server, f"doubt_{how.split()[0]}") as (url, relay):
        relayed = url.replace(f":{pg_server.port}/", f":{relay.address}/")
        with recording_writer(resolve(relayed)) as (_, writer):
            for i in range(10):
                writer.add(conn_event(mono_ns=MONO_BASE_NS + i, sock_id=i + 1))
            writer.flush()
            for i in range(10, 20):
                writer.add(conn_event(mono_ns=MONO_BASE_NS + i, sock_id=i + 1))
            relay.arm(how)
            with pytest.raises(LogError):
                writer.flush()
            assert relay.broken.is_set()
            assert writer.pending_events == 10
            # What is captured meanwhile goes into the log after it.
            for i in range(20, 25):
                writer.add(conn_event(mono_ns=MONO_BASE_NS + i, sock_id=i + 1))
            assert writer.due()
            writer.flush()
            assert writer.pending_events == 0
            assert writer.committed_events == 25
        batches, sockets, _ = _log(url)
    assert sockets == list(range(1, 26))
    assert batches == [(1, 10), (11, 20), (21, 25)]


def test_a_loss_retried_after_an_unanswered_commit_is_counted_once(
    pg_server: PostgresServer,
) -> None:
    with _relayed(pg_server, "doubt_loss") as (url, relay):
        relayed = url.replace(f":{pg_server.port}/", f":{relay.address}/")
        with recording_writer(resolve(relayed)) as (_, writer):
            writer.add(conn_event(sock_id=1))
            writer.flush()
            writer.add_loss(Loss(7, MONO_BASE_NS, MONO_BASE_NS + 5, "ring buffer full"))
            relay.arm("after commit")
            with pytest.raises(LogError):
                writer.flush()
            writer.flush()
        _, sockets, losses = _log(url)
    assert sockets == [1]
    assert losses == [(7, 1)]
