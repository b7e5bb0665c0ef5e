"""The web app of `scope-replay serve`: a read-only API in Scope's shape, and one page.

Endpoints (all GET; nothing writes):

- ``/api/topology``: the views, with their node and edge counts at a moment
- ``/api/topology/{view}?timestamp=T&window=W``: a view at a moment, as ``--format json``
- ``/api/connections?at=T&window=W``: the connection table, as ``--format json``
- ``/api/node/{view}/{id}?timestamp=T``: a node's details and its connections
- ``/api/diff/{view}?from=T1&to=T2``: what changed between two moments
- ``/api/span``: recordings, the log's extent, events per time slice, losses
- ``/openapi.json``: the schema of the above; ``/``: the page; ``/static/...``: its files

A bad parameter is a 400 with ``{"error": "..."}``, as the CLI's one line on stderr.
Safety: when a token is set (it must be, for an address other than loopback) every API
request carries it (``Authorization: Bearer <token>``); without one, only requests naming a
loopback host are answered (a web page elsewhere cannot reach the API through DNS
rebinding). Every response carries a content security policy that allows the page's own
files only. At most ``max_pending`` API requests are taken at once, further ones get a 503:
a flood queues nothing without bound.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from eventlog.errors import ScopeError, UsageError
from replay.serve import documents
from replay.serve.session import LogSession
from replay.timespec import DEFAULT_WINDOW
from replay.views.topology import Options, View

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STATIC = Path(str(resources.files("replay.serve") / "static"))
# cytoscape.js adds one <style> element of its own to the page: allowed by its hash, not by
# 'unsafe-inline' (a new version of the library may need a new hash: the browser test says).
CYTOSCAPE_STYLE = "'sha256-pgvDUBa4IjFA2yuSJ2cqcyxmNYJMborsd0ORcRv9vw8='"
CSP = (
    f"default-src 'none'; script-src 'self'; style-src 'self' {CYTOSCAPE_STYLE}; "
    "img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def is_loopback_host(name: str) -> bool:
    """Whether a request's Host names this machine's loopback: ``localhost``, or a loopback
    address written out (any of 127.0.0.0/8, ::1). Never a domain name, which could lead
    there only through DNS a web page's author controls."""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


LATEST = "-0s"  # the log's end: Scope showed "now" when no timestamp was given


class ShowHide(StrEnum):
    show = "show"
    hide = "hide"


Timestamp = Annotated[
    str,
    Query(
        max_length=64,
        description="The moment: RFC 3339, Unix seconds or nanoseconds, -30s (before the "
        "log's end) or +10s (after its start). Default: the log's end.",
    ),
]
Window = Annotated[
    str,
    Query(max_length=32, description="Also connections closed this long before the moment."),
]
Unconnected = Annotated[ShowHide, Query(description="Processes without connections.")]
Pseudo = Annotated[ShowHide, Query(description="The containers view's uncontained node.")]
UnknownLan = Annotated[bool, Query(description="Private addresses that were not recorded.")]
ShowSelf = Annotated[bool, Query(description="The recorder's own processes.")]


@dataclass(frozen=True)
class Limits:
    """How many API requests are answered at once, and how many are taken at all."""

    active: int = 2
    pending: int = 32


def json_response(text: str, status: int = 200) -> Response:
    return Response(text, status_code=status, media_type="application/json")


def error_response(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Guard:
    """ASGI middleware: security headers on every response; the token, the loopback host
    check and the bound on concurrent requests for the API."""

    def __init__(self, app: ASGIApp, token: str | None, limits: Limits) -> None:
        self.app = app
        self.token = token
        self.limits = limits
        self.taken = 0
        self.running = asyncio.Semaphore(limits.active)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send_secured)
            return
        if not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send_secured)
            return
        if self.taken >= self.limits.pending:
            busy = error_response("the server is busy: too many requests at once; retry", 503)
            await busy(scope, receive, send_secured)
            return
        self.taken += 1
        try:
            async with self.running:
                await self.app(scope, receive, send_secured)
        finally:
            self.taken -= 1

    def _refusal(self, scope: Scope) -> Response | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.token is None:
            host = headers.get("host", "")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if not is_loopback_host(name):
                return error_response(f"this server answers to a loopback host, not {host!r}", 421)
            return None
        if not scope["path"].startswith("/api/"):
            return None
        given = headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            return error_response("a token is required: Authorization: Bearer <token>", 401)
        return None


def create_app(session: LogSession, token: str | None = None, limits: Limits = Limits()) -> Any:
    """The app over ``session``'s log; an ASGI application for uvicorn."""
    api = FastAPI(
        title="scope-replay serve",
        summary="The recorded connection log, as Scope's maps at any moment. Read-only.",
        version="1",
        docs_url=None,  # the interactive docs load their scripts from a CDN
        redoc_url=None,
    )
    location = session.location.display()

    @api.exception_handler(ScopeError)
    async def scope_error(request: Request, exc: ScopeError) -> Response:
        return error_response(str(exc), 400 if isinstance(exc, UsageError) else 503)

    @api.exception_handler(RequestValidationError)
    async def bad_parameters(request: Request, exc: RequestValidationError) -> Response:
        problems = [
            f"{'.'.join(str(p) for p in error.get('loc', ()))}: {error.get('msg', 'invalid')}"
            for error in exc.errors()
        ]
        return error_response("invalid parameters: " + "; ".join(problems))

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return error_response(str(exc.detail), exc.status_code)

    def options(unconnected: ShowHide, pseudo: ShowHide, lan: bool, own: bool) -> Options:
        return Options(
            show_unconnected=unconnected is ShowHide.show,
            show_uncontained=pseudo is ShowHide.show,
            show_unknown_lan=lan,
            show_self=own,
        )

    @api.get("/api/topology", summary="The views, with node and edge counts at a moment")
    def topologies(
        timestamp: Timestamp = LATEST,
        window: Window = DEFAULT_WINDOW,
        unconnected: Unconnected = ShowHide.hide,
        pseudo: Pseudo = ShowHide.hide,
        unknown_lan: UnknownLan = False,
        show_self: ShowSelf = False,
    ) -> Response:
        chosen = options(unconnected, pseudo, unknown_lan, show_self)
        with session.reading() as derived:
            return json_response(documents.topologies(derived, timestamp, window, chosen))

    @api.get("/api/topology/{view}", summary="A view at a moment (Scope's report shape)")
    def topology(
        view: View,
        timestamp: Timestamp = LATEST,
        window: Window = DEFAULT_WINDOW,
        unconnected: Unconnected = ShowHide.hide,
        pseudo: Pseudo = ShowHide.hide,
        unknown_lan: UnknownLan = False,
        show_self: ShowSelf = False,
        stack: Annotated[
            bool, Query(description="Alike nodes as one stack, as the drawn maps show them.")
        ] = False,
    ) -> Response:
        chosen = options(unconnected, pseudo, unknown_lan, show_self)
        # the same question, while the log has not moved, has the same answer
        key = f"topology:{view}:{timestamp}:{window}:{chosen}:{stack}"
        with session.reading() as derived:
            text = session.cached(key)
            if text is None:
                text = documents.topology(derived, timestamp, window, view, chosen, stack)
                session.remember(key, text)
        return json_response(text)

    @api.get("/api/connections", summary="The connection table at a moment")
    def connections(at: Timestamp = LATEST, window: Window = DEFAULT_WINDOW) -> Response:
        with session.reading() as derived:
            return json_response(documents.connections(derived, at, window))

    @api.get("/api/node/{view}/{node_id:path}", summary="A node's details and connections")
    def node(
        view: View,
        node_id: Annotated[str, PathParam(max_length=512, description="The node's id.")],
        timestamp: Timestamp = LATEST,
        window: Window = DEFAULT_WINDOW,
        unconnected: Unconnected = ShowHide.hide,
        pseudo: Pseudo = ShowHide.hide,
        unknown_lan: UnknownLan = False,
        show_self: ShowSelf = False,
    ) -> Response:
        chosen = options(unconnected, pseudo, unknown_lan, show_self)
        with session.reading() as derived:
            found = documents.node(derived, timestamp, window, view, node_id, chosen)
        if found is None:
            raise HTTPException(404, f"no node {node_id!r} in the {view} view at {timestamp}")
        return json_response(found)

    @api.get("/api/diff/{view}", summary="What changed in a view between two moments")
    def diff(
        view: View,
        before: Annotated[str, Query(alias="from", max_length=64, description="The earlier.")],
        after: Annotated[str, Query(alias="to", max_length=64, description="The later.")],
        window: Window = DEFAULT_WINDOW,
        unconnected: Unconnected = ShowHide.hide,
        pseudo: Pseudo = ShowHide.hide,
        unknown_lan: UnknownLan = False,
        show_self: ShowSelf = False,
    ) -> Response:
        chosen = options(unconnected, pseudo, unknown_lan, show_self)
        with session.reading() as derived:
            return json_response(documents.diff(derived, before, after, window, view, chosen))

    @api.get("/api/span", summary="Recordings, the log's extent, events per slice, losses")
    def span(
        buckets: Annotated[
            int, Query(ge=1, le=documents.MAX_BUCKETS, description="Slices of the extent.")
        ] = 200,
    ) -> Response:
        with session.reading() as derived:
            key = f"span:{buckets}"
            text = session.cached(key)
            if text is None:
                text = documents.span(derived, location, buckets)
                session.remember(key, text)
        return json_response(text)

    @api.get("/", include_in_schema=False)
    def page() -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @api.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    api.mount("/static", StaticFiles(directory=STATIC), name="static")

    @api.get("/api/{rest:path}", include_in_schema=False)
    def unknown(rest: str) -> Response:
        raise HTTPException(404, f"no endpoint /api/{rest}")

    return Guard(api, token, limits)


def openapi_of(app: Any) -> dict[str, Any]:
    """The schema ``/openapi.json`` serves (for tests that walk it)."""
    inner: FastAPI = app.app
    schema: dict[str, Any] = json.loads(json.dumps(inner.openapi()))
    return schema
