"""The maps read only some fields of the connection table (replay.views.scene.MAP_FIELDS):
every view, with every option, must be the same as from whole rows, so a rule that starts
reading another field fails here until the field is declared."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from eventlog.store import Purpose, open_log
from replay.derived.store import open_derived
from replay.moment import resolve_moment
from replay.table import ConnectionRow
from replay.views.render import render_json
from replay.views.scene import MAP_FIELDS, build_scene
from replay.views.topology import Options, View, build_topology
from tests.integration.replay.test_views_golden import scenario, services_scenario
from tests.logbuilder import Builder, built_log

OPTIONS = [
    Options(),
    Options(show_unconnected=True, show_uncontained=True, show_unknown_lan=True),
    Options(show_self=True),
]


@pytest.mark.parametrize("write", [scenario, services_scenario])
def test_every_view_is_the_same_from_the_map_fields_alone(
    tmp_path: Path, write: Callable[[Builder], None]
) -> None:
    with built_log(tmp_path / "v.db") as (location, b):
        write(b)
    assert set(MAP_FIELDS) < set(ConnectionRow._fields)
    with open_log(location, Purpose.READ) as store, open_derived(store, tmp_path / "d") as derived:
        moment = resolve_moment(derived, "+5s", "15s")
        partial = build_scene(derived, moment)
        whole = build_scene(derived, moment, ConnectionRow._fields)
    assert partial.connections and partial.connections != whole.connections
    for view in View:
        for options in OPTIONS:
            expected = render_json(build_topology(whole, view, options))
            assert render_json(build_topology(partial, view, options)) == expected, (view, options)
