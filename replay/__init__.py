"""Replay: rebuild connection tables and topologies at any moment from the event log."""
