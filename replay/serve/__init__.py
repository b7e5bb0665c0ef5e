"""`scope-replay serve`: the map in a browser, over the one reading engine (replay.derived)."""
