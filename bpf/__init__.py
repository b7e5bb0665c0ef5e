"""The kernel side: the eBPF programs and the layout of the records they hand over.

Shipped as package data beside the Python packages, so that an installed recorder compiles
the same program text that this tree holds (``program_text``) and finds its header.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import as_file, files
from pathlib import Path

PROGRAM = "tcp_events.c"  # the programs, compiled by bcc at start
HEADER = "tcp_events.h"  # the records' layout, shared with eventlog/_native.c


def directory() -> Path:
    """Where the program and its header are (a directory on disk: bcc includes from it)."""
    with as_file(files(__name__) / PROGRAM) as program:
        return Path(program).parent


def program_text() -> str:
    return (files(__name__) / PROGRAM).read_text()


@cache
def header_define(name: str) -> int:
    """An integer the header defines (``#define NAME value``): read from it, so that user
    space sizes what the programs hand over by the very numbers they were compiled with."""
    text = (files(__name__) / HEADER).read_text()
    found = re.search(rf"^#define {re.escape(name)} (\d+)\b", text, re.MULTILINE)
    if found is None:
        raise LookupError(f"{HEADER} defines no integer {name}")
    return int(found.group(1))
