"""Who held a socket at a moment: the process that opened it, until the socket moved.

Pre-fork servers accept in one process and serve in another: a child forked after the
accept (PostgreSQL's backends, sshd, Apache prefork), or a worker the socket was handed to
over a unix socket (SCM_RIGHTS). The log says what the kernel showed of that, as events:

- FORK (parent -> child, at t): the child holds every socket its parent held then;
- EXIT of a holder: it holds nothing after;
- OWNER (pid X, at t): X closed the socket (ESTABLISHED -> FIN_WAIT1 or CLOSE_WAIT -> LAST_ACK,
  which only close() and shutdown() cause, in the context of the process that dropped the
  last reference), and X is not the process that opened it, or is but a process that forks.
  X was then its only holder, and nobody held it after. (A socket its opener closed before
  its first fork is not reported: that fork's child counts as holding it until its end.)

The holders of a socket are its opener and, recursively, the children its holders forked
while it was held (from its open to its first OWNER event, or its end). At a moment E (T, or the socket's end if it ended by T), the socket is
served by:

1. X, when an OWNER event names X and X closed it by E, or held it by E through a fork (its
   other holders dropped their copies before X closed it), or is no holder by fork at all:
   then the socket was handed to X at a moment the kernel did not show (no event marks a
   socket passed over a unix socket), and the row says so;
2. else the one holder alive at E, when there is exactly one (the opener, or the child that
   outlived it);
3. else, with several holders alive at E (a parent and the child it forked, neither known to
   have dropped its copy), the opener stays the row's process and the row's note names them
   all: which one serves it is not recorded, and is not guessed.

Later events may settle an earlier moment (a child that later closes the socket held it since
its fork), so a moment's answer is read with every event of the log, and the same log gives
the same answer. /proc snapshots are not used here yet: they name one process per socket.
"""

from __future__ import annotations

MAX_NS = 9223372036854775807
# Forks followed from a socket's opener: a shell pipeline is a few levels deep.
MAX_DEPTH = 8


def owner_ctes(rows: str, eval_ns: str) -> str:
    """CTEs ending in ``owned``: the rows of CTE ``rows`` (socket rows with ``at_pid``,
    ``at_comm``, ``note``, ``end_ns``) with ``at_pid``/``at_comm`` the process that served the
    socket at ``eval_ns`` (an expression over a row), the note saying what is not known, and
    ``open_pid``, ``open_comm``, ``served_since_ns``, ``served_how`` (how at_pid is known:
    opened, fork, passed, alone, shared: the module docstring's cases) and
    ``served_closed_ns``. The enclosing WITH must be RECURSIVE."""
    return f"""
own_moved AS (  -- the process that dropped its last reference, if recorded
    SELECT r.origin_pos, r.origin_ord, arg_min(w.pid, w.position) AS x_pid,
        arg_min(w.comm, w.position) AS x_comm, min(w.wall_ns) AS x_ns
    FROM {rows} r JOIN owners w ON w.recording_id = r.recording_id AND w.sock_id = r.sock_id
     AND w.wall_ns >= r.opened_ns
    WHERE r.pid IS NOT NULL
    GROUP BY r.origin_pos, r.origin_ord
),
own_base AS (
    SELECT r.origin_pos, r.origin_ord, r.recording_id, r.pid, r.comm, r.opened_ns, r.sock_id,
        coalesce(m.x_ns, r.close_ns, r.missing_ns, {MAX_NS}) AS life_end, {eval_ns} AS e_ns
    FROM {rows} r LEFT JOIN own_moved m
      ON m.origin_pos = r.origin_pos AND m.origin_ord = r.origin_ord
    WHERE r.pid IS NOT NULL AND r.opened_ns IS NOT NULL
),
own_held AS (  -- the opener, and every child a holder forked while the socket was open
    SELECT origin_pos, origin_ord, recording_id, pid, comm, opened_ns AS since_ns, life_end,
        0 AS depth
    FROM own_base
    UNION ALL
    SELECT h.origin_pos, h.origin_ord, h.recording_id, f.pid, f.comm, f.wall_ns, h.life_end,
        h.depth + 1
    FROM own_held h JOIN forks f ON f.recording_id = h.recording_id AND f.ppid = h.pid
     AND f.wall_ns >= h.since_ns AND f.wall_ns < h.life_end
    WHERE h.depth < {MAX_DEPTH}
),
own_forked AS (SELECT DISTINCT origin_pos, origin_ord FROM own_held WHERE depth > 0),
own_followed AS (
    SELECT origin_pos, origin_ord FROM own_forked
    UNION SELECT origin_pos, origin_ord FROM own_moved
),
own_holders AS (  -- of the sockets followed: each holder, when it came and left
    SELECT h.origin_pos, h.origin_ord, h.pid, h.comm, min(h.since_ns) AS since_ns,
        min(x.wall_ns) AS exit_ns
    FROM own_held h SEMI JOIN own_followed k
      ON k.origin_pos = h.origin_pos AND k.origin_ord = h.origin_ord
    LEFT JOIN exits x ON x.recording_id = h.recording_id AND x.pid = h.pid
     AND x.wall_ns >= h.since_ns
    GROUP BY h.origin_pos, h.origin_ord, h.pid, h.comm
),
own_alive AS (  -- the holders alive at the moment
    SELECT h.origin_pos, h.origin_ord, count(*) AS n_alive, min(h.pid) AS a_pid,
        arg_min(h.comm, h.pid) AS a_comm, arg_min(h.since_ns, h.pid) AS a_since,
        string_agg(coalesce(h.comm, '?') || ' (' || h.pid || ')', ', '
                   ORDER BY h.since_ns, h.pid) AS who
    FROM own_holders h JOIN own_base b
      ON b.origin_pos = h.origin_pos AND b.origin_ord = h.origin_ord
    WHERE h.since_ns <= b.e_ns AND (h.exit_ns IS NULL OR h.exit_ns > b.e_ns)
    GROUP BY h.origin_pos, h.origin_ord
),
own_decided AS (
    SELECT b.origin_pos, b.origin_ord, b.pid AS open_pid, b.comm AS open_comm, b.e_ns,
        m.x_pid, m.x_comm, m.x_ns, xh.since_ns AS x_since, a.n_alive, a.a_pid, a.a_comm,
        a.a_since, a.who,
        CASE WHEN m.x_pid IS NOT NULL AND xh.since_ns IS NULL THEN 'passed'
             WHEN m.x_pid IS NOT NULL AND (m.x_ns <= b.e_ns OR xh.since_ns <= b.e_ns)
                 THEN CASE WHEN m.x_pid = b.pid THEN 'opened' ELSE 'fork' END
             WHEN a.n_alive = 1 AND a.a_pid = b.pid THEN 'opened'
             WHEN a.n_alive = 1 THEN 'alone'
             WHEN a.n_alive > 1 THEN 'shared'
             ELSE 'opened' END AS how
    FROM own_base b SEMI JOIN own_followed k
      ON k.origin_pos = b.origin_pos AND k.origin_ord = b.origin_ord
    LEFT JOIN own_moved m ON m.origin_pos = b.origin_pos AND m.origin_ord = b.origin_ord
    LEFT JOIN own_holders xh ON xh.origin_pos = b.origin_pos AND xh.origin_ord = b.origin_ord
     AND xh.pid = m.x_pid
    LEFT JOIN own_alive a ON a.origin_pos = b.origin_pos AND a.origin_ord = b.origin_ord
),
owned AS (
    SELECT r.* REPLACE (
        CASE d.how WHEN 'passed' THEN d.x_pid WHEN 'fork' THEN d.x_pid
                   WHEN 'alone' THEN d.a_pid ELSE r.at_pid END AS at_pid,
        CASE d.how WHEN 'passed' THEN d.x_comm WHEN 'fork' THEN d.x_comm
                   WHEN 'alone' THEN d.a_comm ELSE r.at_comm END AS at_comm,
        CASE WHEN d.how NOT IN ('passed', 'shared') OR d.how IS NULL THEN r.note
             ELSE concat_ws('; ', r.note, CASE d.how
            WHEN 'passed' THEN 'handed from ' || coalesce(d.open_comm, '?') || ' ('
                || d.open_pid || ') to ' || coalesce(d.x_comm, '?') || ' (' || d.x_pid
                || ') at a moment not recorded (not by a fork), by ' || rfc3339(d.x_ns)
            WHEN 'shared' THEN 'held by ' || d.who
                || CASE WHEN d.e_ns < {MAX_NS} THEN ' at ' || rfc3339(d.e_ns) ELSE '' END
                || ' (forked): which of them serves it is not recorded'
            END) END AS note),
        coalesce(d.open_pid, r.pid) AS open_pid, coalesce(d.open_comm, r.comm) AS open_comm,
        CASE coalesce(d.how, 'opened') WHEN 'opened' THEN r.opened_ns WHEN 'fork' THEN d.x_since
             WHEN 'alone' THEN d.a_since END AS served_since_ns,
        CASE WHEN r.at_pid IS NULL AND d.how IS NULL THEN NULL
             ELSE coalesce(d.how, 'opened') END AS served_how,
        d.x_ns AS served_closed_ns
    FROM {rows} r LEFT JOIN own_decided d
      ON d.origin_pos = r.origin_pos AND d.origin_ord = r.origin_ord
)"""
