"""Check a JUnit report from `make test` for what CI must not accept.

Fails when no tests ran, when any failed, or (with CI set) when any test was skipped for a
missing capability (eBPF, PostgreSQL, namespaces): CI machines must run all of them.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET

from tests.capabilities import SKIP_PREFIX, in_ci


def main(path: str) -> int:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    capability_skips = [
        f"{case.get('classname')}.{case.get('name')}: {skip.get('message', '')}"
        for case in root.iter("testcase")
        for skip in case.findall("skipped")
        if SKIP_PREFIX in (skip.get("message") or "")
    ]
    problems = []
    if total == 0:
        problems.append("no tests ran")
    if failed:
        problems.append(f"{failed} tests failed")
    if in_ci() and capability_skips:
        problems.append(f"{len(capability_skips)} tests skipped for missing capabilities")
        problems.extend(f"  {line}" for line in capability_skips[:20])
    for line in problems:
        print(f"ci: {line}", file=sys.stderr)
    if not problems:
        print(f"ci: {total} tests ran, none failed or skipped for a missing capability")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
