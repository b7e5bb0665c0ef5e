"""Every endpoint of the OpenAPI schema, with parameters that hypothesis makes from the
schema's own description of them (and arbitrary text besides): never a 500, always JSON."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.serve.conftest import Served

pytestmark = pytest.mark.slow

# What the API reads as times and durations, to reach past the parsers now and then.
MOMENTS = st.sampled_from(["-0s", "+1s", "+3.5s", "-2s", "0", "1796518119.5",
                           "2026-12-06T00:48:39Z", "+99999999999h", "-1e9s"])  # fmt: skip
DURATIONS = st.sampled_from(["0s", "15s", "1h", "500ms", "36500d", "1.5", "-3s"])


PATHS = [
    "/api/connections", "/api/diff/{view}", "/api/node/{view}/{node_id}",
    "/api/span", "/api/topology", "/api/topology/{view}",
]  # fmt: skip


def strategy(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    """Text for a parameter: what its schema allows, or anything."""
    anything = st.text(max_size=80)
    if "enum" in schema:
        return st.one_of(st.sampled_from([str(v) for v in schema["enum"]]), anything)
    if "$ref" in schema or "allOf" in schema:
        return st.one_of(st.sampled_from(["processes", "hosts", "show", "hide"]), anything)
    kind = schema.get("type")
    if kind == "integer":
        low, high = schema.get("minimum", -(2**70)), schema.get("maximum", 2**70)
        return st.one_of(st.integers(low - 5, high + 5).map(str), anything)
    if kind == "boolean":
        return st.one_of(st.sampled_from(["true", "false", "1", "0"]), anything)
    return st.one_of(MOMENTS, DURATIONS, anything)


def test_the_schema_lists_every_endpoint(served: Served) -> None:
    schema = httpx.get(served.url + "/openapi.json").json()
    assert sorted(schema["paths"]) == PATHS


@pytest.mark.parametrize("path", PATHS)
def test_no_parameters_make_a_500(served: Served, path: str) -> None:
    schema = httpx.get(served.url + "/openapi.json").json()
    components = schema.get("components", {}).get("schemas", {})

    def resolved(parameter: dict[str, Any]) -> dict[str, Any]:
        found: dict[str, Any] = parameter.get("schema", {})
        if "$ref" in found:
            found = {**components[found["$ref"].rsplit("/", 1)[-1]], "$ref": found["$ref"]}
        return found

    parameters = schema["paths"][path]["get"].get("parameters", [])
    values = {p["name"]: strategy(resolved(p)) for p in parameters}
    present = {p["name"]: (st.just(True) if p.get("required") else st.booleans())
               for p in parameters}  # fmt: skip

    with httpx.Client(base_url=served.url, timeout=60) as client:

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.fixed_dictionaries(values), st.fixed_dictionaries(present))
        def check(chosen: dict[str, str], keep: dict[str, bool]) -> None:
            concrete = path
            query = {}
            for name, value in chosen.items():
                if f"{{{name}}}" in concrete:
                    concrete = concrete.replace(f"{{{name}}}", quote(value, safe="") or "x")
                elif keep[name]:
                    query[name] = value
            answer = client.get(concrete, params=query)
            assert answer.status_code < 500, (concrete, query, answer.text)
            body = answer.json()
            if answer.status_code >= 400:
                assert isinstance(body["error"], str)

        check()
