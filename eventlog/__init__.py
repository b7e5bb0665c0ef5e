"""The event log: the one source of truth that recording writes and every reader folds.

What it holds (``events``, ``schema``), where it lives and how it is opened (``location``,
``store``), how it is written (``writer``, ``batch``, ``sqlite``, ``postgres``, the C append
path in ``_native.c``) and read (``reader``), how its monotonic times become wall times
(``clock``), and the one error tree every command reports through (``errors``, ``cliutil``).
Recording (``recorder``) and replay (``replay``) both build on it; it imports neither.
"""

__version__ = "0.1.0"
