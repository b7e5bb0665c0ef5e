"""The views as library calls: a topology at a moment, and the difference between two."""

from __future__ import annotations

from typing import Any

from eventlog.batch import gc_paused
from eventlog.store import LogStore
from replay.engine import Replayer
from replay.table import resolve_moment
from replay.views.diff import topology_diff
from replay.views.scene import build_scene
from replay.views.topology import Options, Topology, View, build_topology


def topology_at(
    store: LogStore,
    at_text: str,
    window_text: str,
    view: View,
    options: Options | None = None,
    use_checkpoints: bool = True,
) -> Topology:
    replayer = Replayer(store, use_checkpoints=use_checkpoints)
    moment = resolve_moment(replayer, at_text, window_text)
    with gc_paused():
        window = replayer.window(moment.at_ns, moment.window_ns)
        scene = build_scene(replayer.reader, window, replayer.runs)
        return build_topology(scene, view, options)


def diff_between(
    store: LogStore,
    before_text: str,
    after_text: str,
    window_text: str,
    view: View,
    options: Options | None = None,
) -> dict[str, Any]:
    before = topology_at(store, before_text, window_text, view, options)
    after = topology_at(store, after_text, window_text, view, options)
    return topology_diff(before, after)
