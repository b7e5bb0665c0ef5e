"""The derived store: the log folded once, incrementally, into what every reader answers from.

``store`` (where it lives, when it is current), ``copy`` (the log decoded into it), ``derive``
(the fold's intervals, made whole), ``tables`` and ``views`` (its tables, and what is read
from them). The fold itself, the definition of what replay knows, is ``replay.fold``.
"""
