"""Container metadata from a runtime's Docker-compatible API, as events of the log.

Where Docker or Podman's API service listens on a unix socket, the recorder follows it on a
thread of its own: at start (and whenever it comes back after going away) a listing of the
running containers, then its event stream. Each start, rename, die and destroy of a container
becomes a CONTAINER event (``eventlog.events.ContainerRecord``): its id, name, image, labels,
first process, network namespace and cgroup. The ids of its cgroups (in the hierarchies
that the kernel's EXEC events carry ids of: ``recorder.cgroups``) are read here from
cgroupfs, so that replay maps a process to its container from the log alone.

The API is plain HTTP over the socket (httpx). Nothing it answers is trusted: every request
is bounded by a timeout, an answer that is not the JSON expected is counted and the runtime
retried later, a pid whose cgroup does not name the container is counted and not recorded.
No runtime reachable: ``status`` says so (once) and the recording goes on without names.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eventlog.events import CgroupIds, ContainerRecord, Event, container_event
from recorder.cgroups import Hierarchies, hierarchies, ids_of

if TYPE_CHECKING:
    import httpx  # imported on the follower's thread: ~90 ms of a recorder's start

# Where runtimes put their API socket, tried in this order when none is given.
DEFAULT_SOCKETS = ("/run/podman/podman.sock", "/var/run/docker.sock")
REQUEST_TIMEOUT_S = 3.0  # a listing or an inspection: a runtime that takes longer hangs
RETRY_S = 1.0  # how soon a runtime that went away (or was never there) is tried again
_FOLLOWED = ("start", "rename", "die", "destroy")
_RUNNING = ("listed", "start", "rename")
_SYNONYMS = {"remove": "destroy"}  # Podman's word for Docker's
_EVENTS_QUERY = json.dumps({"type": ["container"]})


class BadAnswerError(Exception):
    """The runtime answered something other than what its API describes. Never leaves this
    module: the follower counts it and tries the runtime again later."""


@dataclass
class FollowerStats:
    records: int = 0  # container records made
    connects: int = 0  # times a runtime was reached (the first, and each return)
    unreachable: int = 0  # attempts that found no runtime answering
    timeouts: int = 0  # requests the runtime did not answer in time
    bad_answers: int = 0  # answers that were not the JSON the API describes
    pid_mismatches: int = 0  # pids whose cgroup does not name their container


def cgroup_of(pid: int, container_id: str, where: Hierarchies) -> tuple[str, CgroupIds] | None:
    """``pid``'s /proc/<pid>/cgroup and the ids of its container's cgroups (what EXEC events
    carry); None when the process is gone or its cgroup does not name ``container_id`` (the
    runtime lied, or the pid was reused)."""
    try:
        with open(f"/proc/{pid}/cgroup") as file:
            text = file.read().strip()
    except OSError:
        return None
    if container_id not in text:
        return None
    return text, ids_of(text, container_id, where)


def netns_of(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def record_from_inspect(
    action: str, data: Any, runtime: str, where: Hierarchies, stats: FollowerStats
) -> ContainerRecord:
    """A container record from the answer to ``GET /containers/<id>/json``."""
    if not isinstance(data, dict) or not isinstance(data.get("Id"), str):
        raise BadAnswerError("an inspection without an Id")
    config = _object(data.get("Config"))
    state = _object(data.get("State"))
    labels = _object(config.get("Labels"))
    container_id = data["Id"]
    pid: int = state["Pid"] if isinstance(state.get("Pid"), int) else 0
    cgroup, ids, netns = "", CgroupIds(None, None), None
    if pid > 0:
        found = cgroup_of(pid, container_id, where)
        if found is None:
            stats.pid_mismatches += 1
            pid = 0
        else:
            cgroup, ids = found
            netns = netns_of(pid)
    return ContainerRecord(
        action=action,
        id=container_id,
        name=_text(data.get("Name")).lstrip("/"),
        image=_text(config.get("Image")) or _text(data.get("ImageName")),
        image_id=_text(data.get("Image")),
        labels={str(k): str(v) for k, v in sorted(labels.items())},
        pid=pid or None,
        netns=netns,
        cgroup_id=ids.unified,
        cgroup_v1_id=ids.v1,
        cgroup=cgroup,
        created=_text(data.get("Created")),
        started=_text(state.get("StartedAt")),
        runtime=runtime,
    )


class ContainerFollower:
    """Follows the first runtime that answers on ``sockets``, again after it goes away."""

    def __init__(
        self,
        clock: Callable[[], int],
        sockets: Sequence[str] = DEFAULT_SOCKETS,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.clock = clock
        self.sockets = tuple(sockets)
        self.notify = notify or (lambda message: None)
        self.stats = FollowerStats()
        self.status = "not started"
        self.hierarchies = hierarchies()
        self._events: list[Event] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: httpx.Client | None = None
        self._known: dict[str, ContainerRecord] = {}
        self._said_unreachable = False

    # -- what the recorder calls -----------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="containers", daemon=True)
        self._thread.start()

    def drain(self) -> list[Event]:
        with self._lock:
            events, self._events = self._events, []
        return events

    def stop(self) -> None:
        """Stop following; a request under way is left to its timeout (the thread is a
        daemon: a runtime that hangs never holds the recorder up)."""
        self._stop.set()
        client = self._client
        if client is not None:
            # Closing from this thread may race the follower's read: whatever it raises there,
            # the follower ends.
            with contextlib.suppress(Exception):
                client.close()
        if self._thread is not None:
            self._thread.join(timeout=REQUEST_TIMEOUT_S + 1)

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        import httpx  # noqa: PLC0415

        while not self._stop.is_set():
            socket_path = self._reachable()
            if socket_path is None:
                self._stop.wait(RETRY_S)
                continue
            try:
                self._follow(socket_path)
            except (httpx.HTTPError, BadAnswerError, ValueError, OSError) as exc:
                if isinstance(exc, httpx.TimeoutException):
                    self.stats.timeouts += 1
                elif isinstance(exc, httpx.TransportError):
                    self.stats.unreachable += 1  # a socket file nobody serves (any more)
                else:
                    self.stats.bad_answers += 1
                if not self._stop.is_set():
                    self._lost(socket_path, type(exc).__name__)
            else:
                if not self._stop.is_set():
                    self._lost(socket_path, "its event stream ended")
            finally:
                self._close_client()
            self._stop.wait(RETRY_S)

    def _lost(self, socket_path: str, why: str) -> None:
        """Say once that a runtime being followed went away (then nothing more until it is
        back: a runtime that keeps failing is counted, not repeated)."""
        if self.status.startswith("following"):
            self.notify(
                f"lost the container runtime at {socket_path} ({why}); "
                "following it again when it is back"
            )
            self._said_unreachable = True
        self.status = f"lost the runtime at {socket_path} ({why})"

    def _reachable(self) -> str | None:
        for path in self.sockets:
            if os.path.exists(path):
                return path
        self.stats.unreachable += 1
        if not self._said_unreachable:
            self._said_unreachable = True
            self.status = "no container runtime API reachable (" + ", ".join(self.sockets) + ")"
            self.notify(f"{self.status}; containers are known by their cgroups only")
        return None

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _follow(self, socket_path: str) -> None:
        import httpx  # noqa: PLC0415

        transport = httpx.HTTPTransport(uds=socket_path)
        self._client = httpx.Client(
            transport=transport, base_url="http://runtime", timeout=REQUEST_TIMEOUT_S
        )
        runtime = self._runtime_name()
        self.stats.connects += 1
        self.status = f"following {runtime} at {socket_path}"
        if self._said_unreachable or self.stats.connects > 1:
            self.notify(self.status)
        self._said_unreachable = False
        since = str(int(time.time()))  # events from now on: the listing covers what runs
        self._list(runtime)
        for change in self._changes(since):
            self._apply(runtime, change)

    def _get(self, path: str, **params: str) -> Any:
        assert self._client is not None
        response = self._client.get(path, params=params or None)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def _runtime_name(self) -> str:
        version = self._get("/version")
        if not isinstance(version, dict):
            raise BadAnswerError("/version is not an object")
        components = version.get("Components")
        names = [c.get("Name", "") for c in components or [] if isinstance(c, dict)]
        return "podman" if any("podman" in str(n).lower() for n in names) else "docker"

    def _list(self, runtime: str) -> None:
        listing = self._get("/containers/json")
        if not isinstance(listing, list):
            raise BadAnswerError("/containers/json is not a list")
        ids = sorted(str(c.get("Id")) for c in listing if isinstance(c, dict) and c.get("Id"))
        for container_id in ids:
            self._inspect_and_add("listed", container_id, runtime)
        # Back after an absence: what ran before and runs no more stopped meanwhile.
        for container_id, known in sorted(self._known.items()):
            if container_id not in ids and known.action in _RUNNING:
                self._add_known("die", container_id, {})

    def _changes(self, since: str) -> Iterator[dict[str, Any]]:
        """The runtime's container events, as they come (an idle stream is waited on for as
        long as it stays open: no event is a quiet runtime, not a hanging one)."""
        import httpx  # noqa: PLC0415

        assert self._client is not None
        timeout = httpx.Timeout(REQUEST_TIMEOUT_S, read=None)
        params = {"filters": _EVENTS_QUERY, "since": since}
        with self._client.stream("GET", "/events", params=params, timeout=timeout) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if self._stop.is_set():
                    return
                if not line.strip():
                    continue
                change = json.loads(line)
                if not isinstance(change, dict):
                    raise BadAnswerError("an event that is not an object")
                yield change

    def _apply(self, runtime: str, change: dict[str, Any]) -> None:
        import httpx  # noqa: PLC0415

        action = str(change.get("Action") or change.get("status") or "")
        action = _SYNONYMS.get(action, action)
        actor = _object(change.get("Actor"))
        container_id = str(actor.get("ID") or change.get("id") or "")
        if action not in _FOLLOWED or not container_id:
            return
        if action == "destroy":
            self._add_known(action, container_id, actor)
            return
        try:
            self._inspect_and_add(action, container_id, runtime)
        except (BadAnswerError, httpx.HTTPStatusError, ValueError):
            # A container being removed can fail its inspection (Podman answers 500): what
            # is known of it is recorded, and the stream goes on.
            self.stats.bad_answers += 1
            self._add_known(action, container_id, actor)

    def _inspect_and_add(self, action: str, container_id: str, runtime: str) -> None:
        data = self._get(f"/containers/{container_id}/json")
        if data is None:  # gone already: what is known of it
            self._add_known(action, container_id, {})
            return
        self._add(record_from_inspect(action, data, runtime, self.hierarchies, self.stats))

    def _add_known(self, action: str, container_id: str, actor: dict[str, Any]) -> None:
        known = self._known.get(container_id)
        attributes = _object(actor.get("Attributes"))
        if known is None:
            known = ContainerRecord(
                action, container_id, _text(attributes.get("name")),
                _text(attributes.get("image")), "", {}, None, None, None, "", "", "", "",
            )  # fmt: skip
        self._add(known._replace(action=action, pid=None))

    def _add(self, record: ContainerRecord) -> None:
        previous = self._known.get(record.id)
        if record.cgroup_id is None and record.cgroup_v1_id is None and previous is not None:
            # A stopped container's record keeps the cgroup its processes ran in.
            record = record._replace(
                cgroup_id=previous.cgroup_id,
                cgroup_v1_id=previous.cgroup_v1_id,
                cgroup=previous.cgroup,
                netns=previous.netns,
            )
        self._known[record.id] = record
        event = container_event(self.clock(), record)
        with self._lock:
            self._events.append(event)
        self.stats.records += 1
