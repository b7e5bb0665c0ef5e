from collections.abc import Callable
from typing import Any

def pair_rows(
    views: list[Any],
    row_type: Callable[..., Any],
    field_names: tuple[str, ...],
    address_text: Callable[[bytes | None], str],
    is_loopback: Callable[[bytes | None], bool],
    plain: bool = False,
    frozen: bool = False,
    /,
) -> list[Any] | None: ...
def sorted_rows(rows: list[Any], /) -> list[Any] | None: ...
