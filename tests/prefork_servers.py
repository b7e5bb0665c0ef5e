"""Servers that accept in one process and serve in another, for the ownership tests.

    python -m tests.prefork_servers prefork   # accept in the parent, fork, serve in the child
    python -m tests.prefork_servers handoff   # accept, hand the socket to a worker (SCM_RIGHTS)
    python -m tests.prefork_servers shared    # accept, fork a child that keeps a copy idle,
                                              # serve in the parent
    python -m tests.prefork_servers client PORT   # connect, fork, talk and close in the child

Each listens on 127.0.0.1 (a free port), prints ``<port> <acceptor pid> <worker pid or 0>``
on its first line, and serves the same exchange: the client sends a line, the serving
process answers with its pid, and closes the socket once the client has closed its side.
The acceptor closes its copy of every socket it hands on. SIGTERM ends a server and its
children; a bounded number of connections is served (MAX_CONNECTIONS).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable

MAX_CONNECTIONS = 10_000


def serve(conn: socket.socket) -> None:
    """Answer the client's line with this process's pid; close once the client closed."""
    with conn:
        conn.settimeout(60)
        if conn.recv(64):
            conn.sendall(f"{os.getpid()}\n".encode())
            while conn.recv(64):
                pass


def listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def announce(port: int, worker: int) -> None:
    print(f"{port} {os.getpid()} {worker}", flush=True)


def prefork() -> None:
    """Accept in this process, fork a child per connection that serves it; close the copy
    here at once (as PostgreSQL's postmaster and sshd do)."""
    sock = listener()
    signal.signal(signal.SIGCHLD, lambda *_: _reap())
    announce(sock.getsockname()[1], 0)
    for _ in range(MAX_CONNECTIONS):
        conn, _addr = sock.accept()
        if os.fork() == 0:
            sock.close()
            try:
                serve(conn)
            finally:
                os._exit(0)
        conn.close()


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def handoff() -> None:
    """Fork one worker first, then accept here and hand each socket to the worker over a
    unix socket (SCM_RIGHTS), closing the copy here. The worker serves each on a thread."""
    sock = listener()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    worker = os.fork()
    if worker == 0:
        sock.close()
        ours.close()
        try:
            _work(theirs)
        finally:
            os._exit(0)
    theirs.close()
    announce(sock.getsockname()[1], worker)
    for _ in range(MAX_CONNECTIONS):
        conn, _addr = sock.accept()
        socket.send_fds(ours, [b"c"], [conn.fileno()])
        conn.close()


def _work(unix: socket.socket) -> None:
    for _ in range(MAX_CONNECTIONS):
        _msg, fds, _flags, _addr = socket.recv_fds(unix, 1, 1)
        if not fds:
            return  # the acceptor is gone
        conn = socket.socket(fileno=fds[0])
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def shared() -> None:
    """Accept here, fork a child that holds its copy of the socket without using it, serve
    here: both processes hold the socket while it is open."""
    sock = listener()
    announce(sock.getsockname()[1], 0)
    for _ in range(MAX_CONNECTIONS):
        conn, _addr = sock.accept()
        if os.fork() == 0:
            sock.close()
            time.sleep(120)
            os._exit(0)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def forking_client(port: int) -> None:
    """Connect, fork a child that talks over the connection and closes it; close the copy
    here at once (a shell pipeline, a pre-fork client). The child prints ``<its pid> <local
    port> <the serving pid>``."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=60)
    child = os.fork()
    if child == 0:
        try:
            conn.sendall(b"hello\n")
            served = int(conn.recv(64))
            print(f"{os.getpid()} {conn.getsockname()[1]} {served}", flush=True)
            conn.close()
        finally:
            os._exit(0)
    conn.close()
    os.waitpid(child, 0)


SERVERS: dict[str, Callable[[], None]] = {"prefork": prefork, "handoff": handoff, "shared": shared}


def main() -> None:
    if sys.argv[1] == "client":
        forking_client(int(sys.argv[2]))
        return
    signal.signal(signal.SIGTERM, lambda *_: os.killpg(0, signal.SIGKILL))
    SERVERS[sys.argv[1]]()


if __name__ == "__main__":
    main()
