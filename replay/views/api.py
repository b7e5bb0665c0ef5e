"""The views as library calls: a topology at a moment, and the difference between two."""

from __future__ import annotations

from typing import Any

from eventlog.store import LogStore
from replay.derived.store import Derived, open_derived
from replay.moment import Moment, resolve_moment
from replay.table import moment_warnings
from replay.views.diff import topology_diff
from replay.views.scene import build_scene
from replay.views.topology import Options, Topology, View, build_topology


def topology_in(
    derived: Derived, at_text: str, window_text: str, view: View, options: Options | None = None
) -> Topology:
    return _topology(derived, resolve_moment(derived, at_text, window_text), view, options)


def topology_and_warnings(
    derived: Derived, at_text: str, window_text: str, view: View, options: Options | None = None
) -> tuple[Topology, list[str]]:
    """The map at a moment, and what its reader must know of that moment (replay.table)."""
    moment = resolve_moment(derived, at_text, window_text)
    return _topology(derived, moment, view, options), moment_warnings(derived, moment)


def _topology(derived: Derived, moment: Moment, view: View, options: Options | None) -> Topology:
    return build_topology(build_scene(derived, moment), view, options)


def topology_at(
    log: LogStore, at_text: str, window_text: str, view: View, options: Options | None = None
) -> Topology:
    with open_derived(log) as derived:
        return topology_in(derived, at_text, window_text, view, options)


def diff_between(
    log: LogStore,
    before_text: str,
    after_text: str,
    window_text: str,
    view: View,
    options: Options | None = None,
) -> dict[str, Any]:
    with open_derived(log) as derived:
        before = topology_in(derived, before_text, window_text, view, options)
        after = topology_in(derived, after_text, window_text, view, options)
    return topology_diff(before, after)
