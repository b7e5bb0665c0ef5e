"""scope-recorder: record every TCP connection event on a Linux host into a durable log."""

__version__ = "0.1.0"
