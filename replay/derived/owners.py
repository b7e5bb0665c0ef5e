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

and what /proc showed: each snapshot names every process holding a connection's socket
(/proc/PID/fd), kept where that changed (``snap_holders``). Processes drop their copies
without the kernel saying so (a parent closing its copy after the fork), and a socket is
handed over a unix socket unseen; a snapshot is the only sign of either.

The holders of a socket are its opener and, recursively, the children its holders forked
while it was held (from its open to its first OWNER event, or its end); the holders by the
snapshot are those the latest snapshot at or before the moment showed, and the children they
forked since. At a moment E (T, or the socket's end if it ended by T), the socket is served by:

1. X, when an OWNER event names X, X is a holder by fork, and X closed it by E or held it by
   E (its other holders dropped their copies before X closed it); or when X is no holder by
   fork but closed it by E (it was handed to X: see 3);
2. else the one holder by the snapshot alive at E (``snapshot``; the opener: ``opened``; X
   of 3: ``passed``), when a snapshot by E showed the socket's holders and one of those (or
   of the children they forked since) is alive at E; with several, the opener stays the
   row's process and the note names them (``shared``);
3. else X, when an OWNER event names X and X is no holder by fork at all: the socket was
   handed to X at a moment the kernel did not show (no event marks a socket passed over a
   unix socket), and the row says so (``passed``), with the bounds the snapshots give: after
   the last one that showed the socket without X, by the first that showed it with X (or
   X's close);
4. else the one holder alive at E, when there is exactly one (the opener, or the child that
   outlived it: ``alone``);
5. else, with several holders alive at E (a parent and the child it forked, neither known to
   have dropped its copy), the opener stays the row's process and the row's note names them
   all: which one serves it is not recorded, and is not guessed (``shared``).

A holder by the snapshot that is no holder by fork was handed the socket too: the row says
so, with the same bounds. Later events may settle an earlier moment (a child that later
closes the socket held it since its fork), so a moment's answer is read with every event of
the log, and the same log gives the same answer.
"""

from __future__ import annotations

MAX_NS = 9223372036854775807
# Forks followed from a socket's opener: a shell pipeline is a few levels deep.
MAX_DEPTH = 8
# Which holders a row of ``own_held`` comes from: the socket's opener, or a snapshot.
_BY_FORK, _BY_SNAPSHOT = 0, 1


def _proc(comm: str, pid: str) -> str:
    """SQL: a process as the notes name it, ``comm (pid)``."""
    return f"coalesce({comm}, '?') || ' (' || {pid} || ')'"


def owner_ctes(rows: str, eval_ns: str) -> str:
    """CTEs ending in ``owned``: the rows of CTE ``rows`` (socket rows with ``at_pid``,
    ``at_comm``, ``note``, ``end_ns``) with ``at_pid``/``at_comm`` the process that served the
    socket at ``eval_ns`` (an expression over a row), the note saying what is not known, and
    ``open_pid``, ``open_comm``, ``served_since_ns``, ``served_how`` (how at_pid is known:
    opened, fork, passed, snapshot, alone, shared: the module docstring's cases),
    ``served_closed_ns``, ``served_seen_ns`` (the snapshot the answer rests on) and
    ``handed_after_ns``/``handed_by_ns`` (when a socket handed over, not by a fork, was: after
    that, by that). The enclosing WITH must be RECURSIVE."""
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
        r.netns, r.laddr, r.lport, r.raddr, r.rport,
        coalesce(m.x_ns, r.close_ns, r.missing_ns, {MAX_NS}) AS life_end, {eval_ns} AS e_ns
    FROM {rows} r LEFT JOIN own_moved m
      ON m.origin_pos = r.origin_pos AND m.origin_ord = r.origin_ord
    WHERE r.pid IS NOT NULL AND r.opened_ns IS NOT NULL
),
own_seen AS (  -- the snapshots' holders of the socket during its life, where they changed
    SELECT b.origin_pos, b.origin_ord, h.position, h.wall_ns, h.pid, h.comm
    FROM own_base b JOIN snap_holders h ON h.recording_id = b.recording_id
     AND h.netns = b.netns AND h.laddr = b.laddr AND h.lport = b.lport AND h.raddr = b.raddr
     AND h.rport = b.rport AND h.wall_ns >= b.opened_ns AND h.wall_ns < b.life_end
),
own_seen_last AS (  -- the latest of them by the moment
    SELECT s.origin_pos, s.origin_ord, max(s.position) AS s_pos, max(s.wall_ns) AS s_ns
    FROM own_seen s JOIN own_base b ON b.origin_pos = s.origin_pos AND b.origin_ord = s.origin_ord
    WHERE s.wall_ns <= b.e_ns
    GROUP BY s.origin_pos, s.origin_ord
),
own_held AS (  -- the opener and every child a holder forked while the socket was open; and
    -- the holders the latest snapshot by the moment showed, and the children they forked since
    SELECT origin_pos, origin_ord, recording_id, {_BY_FORK} AS seed, pid, comm,
        opened_ns AS since_ns, life_end, 0 AS depth
    FROM own_base
    UNION ALL
    SELECT b.origin_pos, b.origin_ord, b.recording_id, {_BY_SNAPSHOT}, s.pid, s.comm, s.wall_ns,
        b.life_end, 0
    FROM own_seen_last l
    JOIN own_seen s ON s.origin_pos = l.origin_pos AND s.origin_ord = l.origin_ord
     AND s.position = l.s_pos
    JOIN own_base b ON b.origin_pos = l.origin_pos AND b.origin_ord = l.origin_ord
    WHERE s.pid IS NOT NULL
    UNION ALL
    SELECT h.origin_pos, h.origin_ord, h.recording_id, h.seed, f.pid, f.comm, f.wall_ns,
        h.life_end, h.depth + 1
    FROM own_held h JOIN forks f ON f.recording_id = h.recording_id AND f.ppid = h.pid
     AND f.wall_ns >= h.since_ns AND f.wall_ns < h.life_end
    WHERE h.depth < {MAX_DEPTH}
),
own_followed AS (  -- the sockets that forks, an OWNER event or a snapshot say may have moved
    SELECT DISTINCT origin_pos, origin_ord FROM own_held WHERE depth > 0
    UNION SELECT origin_pos, origin_ord FROM own_moved
    UNION SELECT s.origin_pos, s.origin_ord FROM own_seen s
    JOIN own_base b ON b.origin_pos = s.origin_pos AND b.origin_ord = s.origin_ord
    WHERE s.pid <> b.pid
),
own_holders AS (  -- of the sockets followed: each holder, when it came and left
    SELECT h.origin_pos, h.origin_ord, h.seed, h.pid, h.comm, min(h.since_ns) AS since_ns,
        min(x.wall_ns) AS exit_ns
    FROM own_held h SEMI JOIN own_followed k
      ON k.origin_pos = h.origin_pos AND k.origin_ord = h.origin_ord
    LEFT JOIN exits x ON x.recording_id = h.recording_id AND x.pid = h.pid
     AND x.wall_ns >= h.since_ns
    GROUP BY h.origin_pos, h.origin_ord, h.seed, h.pid, h.comm
),
own_alive AS (  -- the holders alive at the moment, by fork and by the snapshot
    SELECT h.origin_pos, h.origin_ord, h.seed, count(*) AS n_alive, min(h.pid) AS a_pid,
        arg_min(h.comm, h.pid) AS a_comm, arg_min(h.since_ns, h.pid) AS a_since,
        string_agg({_proc("h.comm", "h.pid")}, ', ' ORDER BY h.since_ns, h.pid) AS who
    FROM own_holders h JOIN own_base b
      ON b.origin_pos = h.origin_pos AND b.origin_ord = h.origin_ord
    WHERE h.since_ns <= b.e_ns AND (h.exit_ns IS NULL OR h.exit_ns > b.e_ns)
    GROUP BY h.origin_pos, h.origin_ord, h.seed
),
own_facts AS (  -- what is known of each socket followed, at the moment
    SELECT b.origin_pos, b.origin_ord, b.recording_id, b.pid AS open_pid, b.comm AS open_comm,
        b.e_ns, m.x_pid, m.x_comm, m.x_ns, xh.since_ns AS x_since, a.n_alive, a.a_pid,
        a.a_comm, a.a_since, a.who, sa.n_alive AS s_alive, sa.a_pid AS s_pid,
        sa.a_comm AS s_comm, sh.since_ns AS s_since, sa.who AS s_who, l.s_ns,
        m.x_pid IS NOT NULL AND xh.since_ns IS NOT NULL
            AND (m.x_ns <= b.e_ns OR xh.since_ns <= b.e_ns) AS by_fork,  -- rule 1
        m.x_pid IS NOT NULL AND xh.since_ns IS NULL AND m.x_ns <= b.e_ns AS passed_by_then
    FROM own_base b SEMI JOIN own_followed k
      ON k.origin_pos = b.origin_pos AND k.origin_ord = b.origin_ord
    LEFT JOIN own_moved m ON m.origin_pos = b.origin_pos AND m.origin_ord = b.origin_ord
    LEFT JOIN own_holders xh ON xh.origin_pos = b.origin_pos AND xh.origin_ord = b.origin_ord
     AND xh.seed = {_BY_FORK} AND xh.pid = m.x_pid
    LEFT JOIN own_alive a ON a.origin_pos = b.origin_pos AND a.origin_ord = b.origin_ord
     AND a.seed = {_BY_FORK}
    LEFT JOIN own_alive sa ON sa.origin_pos = b.origin_pos AND sa.origin_ord = b.origin_ord
     AND sa.seed = {_BY_SNAPSHOT}
    LEFT JOIN own_holders sh ON sh.origin_pos = b.origin_pos AND sh.origin_ord = b.origin_ord
     AND sh.seed = {_BY_FORK} AND sh.pid = sa.a_pid
    LEFT JOIN own_seen_last l ON l.origin_pos = b.origin_pos AND l.origin_ord = b.origin_ord
),
own_decided AS (  -- the module docstring's rules, in order
    SELECT f.*, NOT f.by_fork AND NOT f.passed_by_then AND f.s_alive IS NOT NULL AS by_snapshot,
        CASE WHEN f.by_fork THEN CASE WHEN f.x_pid = f.open_pid THEN 'opened' ELSE 'fork' END
             WHEN f.passed_by_then THEN 'passed'
             WHEN f.s_alive = 1 AND f.s_pid = f.open_pid THEN 'opened'
             WHEN f.s_alive = 1 AND f.s_pid = f.x_pid AND f.x_since IS NULL THEN 'passed'
             WHEN f.s_alive = 1 THEN 'snapshot'
             WHEN f.s_alive > 1 THEN 'shared'
             WHEN f.x_pid IS NOT NULL AND f.x_since IS NULL THEN 'passed'
             WHEN f.n_alive = 1 AND f.a_pid = f.open_pid THEN 'opened'
             WHEN f.n_alive = 1 THEN 'alone'
             WHEN f.n_alive > 1 THEN 'shared'
             ELSE 'opened' END AS how
    FROM own_facts f
),
own_served AS (  -- the process decided on, and whether it was handed the socket (not by fork)
    SELECT d.*,
        CASE d.how WHEN 'passed' THEN d.x_pid WHEN 'fork' THEN d.x_pid
                   WHEN 'snapshot' THEN d.s_pid WHEN 'alone' THEN d.a_pid END AS p_pid,
        CASE d.how WHEN 'passed' THEN d.x_comm WHEN 'fork' THEN d.x_comm
                   WHEN 'snapshot' THEN d.s_comm WHEN 'alone' THEN d.a_comm END AS p_comm,
        d.how = 'passed' OR (d.how = 'snapshot' AND d.s_since IS NULL) AS handed
    FROM own_decided d
),
own_handed AS (  -- when a socket handed over was: by the first snapshot that showed its new
    -- holder (or that holder's close), after the one before, if that showed the socket
    SELECT v.origin_pos, v.origin_ord,
        least(min(s.wall_ns) FILTER (WHERE s.pid = v.p_pid),
              CASE WHEN v.p_pid = v.x_pid THEN v.x_ns END) AS by_ns,
        min(s.wall_ns) AS first_seen_ns
    FROM own_served v
    LEFT JOIN own_seen s ON s.origin_pos = v.origin_pos AND s.origin_ord = v.origin_ord
    WHERE v.handed
    GROUP BY v.origin_pos, v.origin_ord, v.p_pid, v.x_pid, v.x_ns
),
own_handed_after AS (
    SELECT h.origin_pos, h.origin_ord, h.by_ns,
        CASE WHEN h.first_seen_ns < h.by_ns THEN (
            SELECT max(k.wall_ns) FROM snap_marks k
            WHERE k.recording_id = v.recording_id AND k.wall_ns < h.by_ns) END AS after_ns
    FROM own_handed h JOIN own_served v
      ON v.origin_pos = h.origin_pos AND v.origin_ord = h.origin_ord
),
owned AS (
    SELECT r.* REPLACE (
        CASE WHEN d.p_pid IS NOT NULL THEN d.p_pid ELSE r.at_pid END AS at_pid,
        CASE WHEN d.p_pid IS NOT NULL THEN d.p_comm ELSE r.at_comm END AS at_comm,
        CASE WHEN d.handed OR d.how = 'shared' THEN concat_ws('; ', r.note,
            CASE WHEN d.handed THEN 'handed from ' || {_proc("d.open_comm", "d.open_pid")}
                || ' to ' || {_proc("d.p_comm", "d.p_pid")}
                || ' at a moment not recorded (not by a fork)'
                || CASE WHEN t.after_ns IS NOT NULL THEN ', after ' || rfc3339(t.after_ns)
                        ELSE '' END
                || CASE WHEN t.by_ns IS NOT NULL THEN ', by ' || rfc3339(t.by_ns) ELSE '' END
            ELSE 'held by ' || CASE WHEN d.by_snapshot THEN d.s_who ELSE d.who END
                || CASE WHEN d.e_ns < {MAX_NS} THEN ' at ' || rfc3339(d.e_ns) ELSE '' END
                || CASE WHEN d.by_snapshot
                        THEN ' (the /proc snapshot at ' || rfc3339(d.s_ns) || ' and forks since)'
                        ELSE ' (forked)' END
                || ': which of them serves it is not recorded'
            END) ELSE r.note END AS note),
        coalesce(d.open_pid, r.pid) AS open_pid, coalesce(d.open_comm, r.comm) AS open_comm,
        CASE coalesce(d.how, 'opened') WHEN 'opened' THEN r.opened_ns WHEN 'fork' THEN d.x_since
             WHEN 'alone' THEN d.a_since WHEN 'snapshot' THEN d.s_since END AS served_since_ns,
        CASE WHEN r.at_pid IS NULL AND d.how IS NULL THEN NULL
             ELSE coalesce(d.how, 'opened') END AS served_how,
        d.x_ns AS served_closed_ns,
        CASE WHEN d.by_snapshot THEN d.s_ns END AS served_seen_ns,
        t.after_ns AS handed_after_ns, t.by_ns AS handed_by_ns
    FROM {rows} r LEFT JOIN own_served d
      ON d.origin_pos = r.origin_pos AND d.origin_ord = r.origin_ord
    LEFT JOIN own_handed_after t ON t.origin_pos = r.origin_pos AND t.origin_ord = r.origin_ord
)"""
