"""scope-record: capture every TCP connection event on a Linux host into the event log."""

from eventlog import __version__

__all__ = ["__version__"]
