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

The holders of a socket at a moment E (T, or the socket's end if it ended by T) are those the
latest snapshot by E showed (its holders by the snapshot), else its opener; and, recursively,
the children its holders forked since, by E, while it was held (before its first OWNER
event, or its end). A process holds it by fork when a chain of forks from the opener while
it was held leads to it. At E, the socket is served by:

1. X, when an OWNER event names X, X is a holder by fork, and X closed it by E or held it by
   E (its other holders dropped their copies before X closed it); or when X is no holder by
   fork but closed it by E (it was handed to X: see 3);
2. else, when a snapshot by E showed the socket's holders, the one holder alive at E
   (``snapshot``; the opener: ``opened``; X of 3: ``passed``); with several, the opener
   stays the row's process and the note names them (``shared``);
3. else X, when an OWNER event names X and X is no holder by fork at all: the socket was
   handed to X at a moment the kernel did not show (no event marks a socket passed over a
   unix socket), and the row says so (``passed``), with the bounds the snapshots give: after
   the last one that showed the socket without X, by the first that showed it with X (or
   X's close);
4. else (no snapshot by E showed them) the one holder alive at E, when there is exactly one
   (the opener, or the child that outlived it: ``alone``);
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
# A fork's key in its parent's order: its time, then its place (below 2**32) among forks of
# one time.
_SEQ_SPAN = 1 << 32
# How many holders a note names before it counts the rest.
_NAMED = 10


def _proc(comm: str, pid: str) -> str:
    """SQL: a process as the notes name it, ``comm (pid)``."""
    return f"coalesce({comm}, '?') || ' (' || {pid} || ')'"


def owner_ctes(rows: str, eval_ns: str) -> str:
    """CTEs ending in ``owned``: the rows of CTE ``rows`` (socket rows with ``at_pid``,
    ``at_comm``, ``note``, ``end_ns``) with ``at_pid``/``at_comm`` the process that served the
    socket at ``eval_ns`` (an expression over a row), the note saying what is not known, and
    ``open_pid``, ``open_comm``, ``served_since_ns``, ``served_how`` (how at_pid is known:
    opened, fork, passed, snapshot, alone, shared: the module docstring's cases),
    ``served_closed_ns``, ``served_seen_ns`` (the snapshot the answer rests on: the first of
    those by the moment that showed the holders as they were then) and
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
own_base AS (  -- until_ns: the forks that may have passed it on are before (by the moment,
    -- while it was open)
    SELECT *, CASE WHEN e_ns < life_end THEN e_ns + 1 ELSE life_end END AS until_ns
    FROM (SELECT r.origin_pos, r.origin_ord, r.recording_id, r.pid, r.comm, r.opened_ns,
              r.sock_id, r.netns, r.laddr, r.lport, r.raddr, r.rport,
              coalesce(m.x_ns, r.close_ns, r.missing_ns, {MAX_NS}) AS life_end,
              {eval_ns} AS e_ns
          FROM {rows} r LEFT JOIN own_moved m
            ON m.origin_pos = r.origin_pos AND m.origin_ord = r.origin_ord
          WHERE r.pid IS NOT NULL AND r.opened_ns IS NOT NULL)
),
own_seen AS (  -- the snapshots' holders of the socket during its life, where they changed
    -- (with the socket's moment and opener: what they are compared with)
    SELECT b.origin_pos, b.origin_ord, h.position, h.wall_ns, h.pid, h.comm, b.e_ns,
        b.pid AS opener_pid
    FROM own_base b JOIN snap_holders h ON h.recording_id = b.recording_id
     AND h.netns = b.netns AND h.laddr = b.laddr AND h.lport = b.lport AND h.raddr = b.raddr
     AND h.rport = b.rport AND h.wall_ns >= b.opened_ns AND h.wall_ns < b.life_end
),
own_seen_last AS (  -- the latest of them by the moment
    SELECT s.origin_pos, s.origin_ord, max(s.position) AS s_pos, max(s.wall_ns) AS s_ns
    FROM own_seen s WHERE s.wall_ns <= s.e_ns
    GROUP BY s.origin_pos, s.origin_ord
),
own_seeds AS (  -- whom the holders at the moment descend from: the holders the latest
    -- snapshot by then showed, from then; else the opener, from the open
    SELECT b.origin_pos, b.origin_ord, b.recording_id, b.pid, b.comm, b.opened_ns AS since_ns,
        b.until_ns
    FROM own_base b ANTI JOIN own_seen_last l
      ON l.origin_pos = b.origin_pos AND l.origin_ord = b.origin_ord
    UNION ALL
    SELECT b.origin_pos, b.origin_ord, b.recording_id, s.pid, s.comm, s.wall_ns, b.until_ns
    FROM own_seen_last l
    JOIN own_seen s ON s.origin_pos = l.origin_pos AND s.origin_ord = l.origin_ord
     AND s.position = l.s_pos
    JOIN own_base b ON b.origin_pos = l.origin_pos AND b.origin_ord = l.origin_ord
    WHERE s.pid IS NOT NULL
),
own_fork_order AS (  -- each seed's forks in order, keyed by time then order: a range of
    -- them is found by two as-of look-ups, not by comparing every fork of a busy parent
    SELECT recording_id, ppid, pid, comm, wall_ns, seq,
        CAST(wall_ns AS HUGEINT) * {_SEQ_SPAN} + seq AS fork_key
    FROM (SELECT f.*,
              row_number() OVER (PARTITION BY f.recording_id, f.ppid ORDER BY f.wall_ns, f.position)
                  AS seq
          FROM forks f
          SEMI JOIN own_seeds s ON s.recording_id = f.recording_id AND s.pid = f.ppid)
),
own_children AS (  -- the seeds' children: forked while the seed held it, by the moment
    SELECT s.origin_pos, s.origin_ord, s.recording_id, f.pid, f.comm, f.wall_ns AS since_ns,
        s.until_ns, 1 AS depth
    FROM (SELECT s.*, unnest(range(lo.seq, hi.seq + 1)) AS seq
          -- (the seeds whose process forked at all: an as-of join sorts its every row)
          FROM (SELECT * FROM own_seeds s SEMI JOIN own_fork_order f
                ON f.recording_id = s.recording_id AND f.ppid = s.pid) s
          ASOF JOIN own_fork_order lo ON lo.recording_id = s.recording_id AND lo.ppid = s.pid
           AND CAST(s.since_ns AS HUGEINT) * {_SEQ_SPAN} <= lo.fork_key
          ASOF JOIN own_fork_order hi ON hi.recording_id = s.recording_id AND hi.ppid = s.pid
           AND CAST(s.until_ns AS HUGEINT) * {_SEQ_SPAN} > hi.fork_key
          WHERE lo.seq <= hi.seq) s
    JOIN own_fork_order f ON f.recording_id = s.recording_id AND f.ppid = s.pid AND f.seq = s.seq
),
own_descendants AS (  -- and theirs, a few generations (a shell pipeline)
    SELECT * FROM own_children
    UNION ALL
    SELECT h.origin_pos, h.origin_ord, h.recording_id, f.pid, f.comm, f.wall_ns, h.until_ns,
        h.depth + 1
    FROM own_descendants h JOIN forks f ON f.recording_id = h.recording_id AND f.ppid = h.pid
     AND f.wall_ns >= h.since_ns AND f.wall_ns < h.until_ns
    WHERE h.depth < {MAX_DEPTH}
),
own_opener_forked AS (  -- the sockets whose opener forked while they were open, by the moment
    -- (an opener that is no seed only matters where a snapshot showed another holder)
    SELECT b.origin_pos, b.origin_ord
    FROM (SELECT * FROM own_base b SEMI JOIN own_fork_order f  -- (as own_children's)
          ON f.recording_id = b.recording_id AND f.ppid = b.pid) b
    ASOF JOIN own_fork_order f ON f.recording_id = b.recording_id
     AND f.ppid = b.pid AND CAST(b.opened_ns AS HUGEINT) * {_SEQ_SPAN} <= f.fork_key
    WHERE f.wall_ns < b.until_ns
),
own_followed AS (  -- the sockets that forks, an OWNER event or a snapshot say may have moved
    SELECT DISTINCT origin_pos, origin_ord FROM own_children
    UNION SELECT origin_pos, origin_ord FROM own_opener_forked
    UNION SELECT origin_pos, origin_ord FROM own_moved
    UNION SELECT s.origin_pos, s.origin_ord FROM own_seen s WHERE s.pid <> s.opener_pid
),
own_holders AS (  -- of the sockets followed: each holder by the moment, when it came and left
    SELECT h.origin_pos, h.origin_ord, h.pid, h.comm, min(h.since_ns) AS since_ns,
        min(x.wall_ns) AS exit_ns
    FROM (SELECT origin_pos, origin_ord, recording_id, pid, comm, since_ns FROM own_seeds
          UNION ALL
          SELECT origin_pos, origin_ord, recording_id, pid, comm, since_ns
          FROM own_descendants) h
    SEMI JOIN own_followed k ON k.origin_pos = h.origin_pos AND k.origin_ord = h.origin_ord
    LEFT JOIN exits x ON x.recording_id = h.recording_id AND x.pid = h.pid
     AND x.wall_ns >= h.since_ns
    GROUP BY h.origin_pos, h.origin_ord, h.pid, h.comm
),
own_alive AS (  -- the holders alive at the moment
    SELECT h.origin_pos, h.origin_ord, count(*) AS n_alive, min(h.pid) AS a_pid,
        arg_min(h.comm, h.pid) AS a_comm, arg_min(h.since_ns, h.pid) AS a_since,
        array_to_string(list({_proc("h.comm", "h.pid")} ORDER BY h.since_ns, h.pid)[:{_NAMED}],
                        ', ')
            || CASE WHEN count(*) > {_NAMED} THEN ' and ' || (count(*) - {_NAMED}) || ' more'
                    ELSE '' END AS who
    FROM own_holders h JOIN own_base b
      ON b.origin_pos = h.origin_pos AND b.origin_ord = h.origin_ord
    WHERE h.since_ns <= b.e_ns AND (h.exit_ns IS NULL OR h.exit_ns > b.e_ns)
    GROUP BY h.origin_pos, h.origin_ord
),
own_targets AS (  -- the processes whose fork from the opener is asked for
    SELECT origin_pos, origin_ord, x_pid AS pid FROM own_moved
    UNION SELECT a.origin_pos, a.origin_ord, a.a_pid FROM own_alive a
    SEMI JOIN own_seen_last l ON l.origin_pos = a.origin_pos AND l.origin_ord = a.origin_ord
    WHERE a.n_alive = 1
),
own_lineage AS (  -- from each of them up through their forks, while the socket was open
    SELECT t.origin_pos, t.origin_ord, t.pid AS target, t.pid AS ancestor,
        CAST(NULL AS BIGINT) AS forked_ns, b.life_end AS before_ns, 0 AS depth
    FROM own_targets t
    JOIN own_base b ON b.origin_pos = t.origin_pos AND b.origin_ord = t.origin_ord
    UNION ALL
    SELECT u.origin_pos, u.origin_ord, u.target, f.ppid, coalesce(u.forked_ns, f.wall_ns),
        f.wall_ns, u.depth + 1
    FROM own_lineage u
    JOIN own_base b ON b.origin_pos = u.origin_pos AND b.origin_ord = u.origin_ord
    JOIN forks f ON f.recording_id = b.recording_id AND f.pid = u.ancestor
     AND f.wall_ns >= b.opened_ns AND f.wall_ns <= u.before_ns
     AND (u.depth > 0 OR f.wall_ns < u.before_ns)
    WHERE u.depth < {MAX_DEPTH} AND u.ancestor <> b.pid
),
own_by_fork AS (  -- those that hold it by fork from the opener, since when
    SELECT u.origin_pos, u.origin_ord, u.target AS pid,
        min(coalesce(u.forked_ns, b.opened_ns)) AS since_ns
    FROM own_lineage u
    JOIN own_base b ON b.origin_pos = u.origin_pos AND b.origin_ord = u.origin_ord
    WHERE u.ancestor = b.pid
    GROUP BY u.origin_pos, u.origin_ord, u.target
),
own_facts AS (  -- what is known of each socket followed, at the moment
    SELECT b.origin_pos, b.origin_ord, b.recording_id, b.pid AS open_pid, b.comm AS open_comm,
        b.e_ns, m.x_pid, m.x_comm, m.x_ns, xf.since_ns AS x_since, a.n_alive, a.a_pid,
        a.a_comm, a.a_since, a.who, af.since_ns AS a_forked, l.s_ns,
        l.s_pos IS NOT NULL AND a.n_alive IS NOT NULL AS by_snapshot,
        m.x_pid IS NOT NULL AND xf.since_ns IS NOT NULL
            AND (m.x_ns <= b.e_ns OR xf.since_ns <= b.e_ns) AS by_fork,  -- rule 1
        m.x_pid IS NOT NULL AND xf.since_ns IS NULL AND m.x_ns <= b.e_ns AS passed_by_then
    FROM own_base b SEMI JOIN own_followed k
      ON k.origin_pos = b.origin_pos AND k.origin_ord = b.origin_ord
    LEFT JOIN own_moved m ON m.origin_pos = b.origin_pos AND m.origin_ord = b.origin_ord
    LEFT JOIN own_by_fork xf ON xf.origin_pos = b.origin_pos AND xf.origin_ord = b.origin_ord
     AND xf.pid = m.x_pid
    LEFT JOIN own_alive a ON a.origin_pos = b.origin_pos AND a.origin_ord = b.origin_ord
    LEFT JOIN own_by_fork af ON af.origin_pos = b.origin_pos AND af.origin_ord = b.origin_ord
     AND af.pid = a.a_pid
    LEFT JOIN own_seen_last l ON l.origin_pos = b.origin_pos AND l.origin_ord = b.origin_ord
),
own_decided AS (  -- the module docstring's rules, in order
    SELECT f.*,
        CASE WHEN f.by_fork THEN CASE WHEN f.x_pid = f.open_pid THEN 'opened' ELSE 'fork' END
             WHEN f.passed_by_then THEN 'passed'
             WHEN f.by_snapshot AND f.n_alive = 1 AND f.a_pid = f.open_pid THEN 'opened'
             WHEN f.by_snapshot AND f.n_alive = 1 AND f.a_pid = f.x_pid AND f.x_since IS NULL
                 THEN 'passed'
             WHEN f.by_snapshot AND f.n_alive = 1 THEN 'snapshot'
             WHEN f.by_snapshot AND f.n_alive > 1 THEN 'shared'
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
                   WHEN 'snapshot' THEN d.a_pid WHEN 'alone' THEN d.a_pid END AS p_pid,
        CASE d.how WHEN 'passed' THEN d.x_comm WHEN 'fork' THEN d.x_comm
                   WHEN 'snapshot' THEN d.a_comm WHEN 'alone' THEN d.a_comm END AS p_comm,
        d.how = 'passed' OR (d.how = 'snapshot' AND d.a_forked IS NULL) AS handed
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
            ELSE 'held by ' || d.who
                || CASE WHEN d.e_ns < {MAX_NS} THEN ' at ' || rfc3339(d.e_ns) ELSE '' END
                || CASE WHEN d.by_snapshot
                        THEN ' (the /proc snapshot at ' || rfc3339(d.s_ns) || ' and forks since)'
                        ELSE ' (forked)' END
                || ': which of them serves it is not recorded'
            END) ELSE r.note END AS note),
        coalesce(d.open_pid, r.pid) AS open_pid, coalesce(d.open_comm, r.comm) AS open_comm,
        CASE coalesce(d.how, 'opened') WHEN 'opened' THEN r.opened_ns WHEN 'fork' THEN d.x_since
             WHEN 'alone' THEN d.a_since WHEN 'snapshot' THEN d.a_forked END AS served_since_ns,
        CASE WHEN r.at_pid IS NULL AND d.how IS NULL THEN NULL
             ELSE coalesce(d.how, 'opened') END AS served_how,
        d.x_ns AS served_closed_ns,
        CASE WHEN d.by_snapshot AND NOT d.by_fork AND NOT d.passed_by_then THEN d.s_ns END
            AS served_seen_ns,
        t.after_ns AS handed_after_ns, t.by_ns AS handed_by_ns
    FROM {rows} r LEFT JOIN own_served d
      ON d.origin_pos = r.origin_pos AND d.origin_ord = r.origin_ord
    LEFT JOIN own_handed_after t ON t.origin_pos = r.origin_pos AND t.origin_ord = r.origin_ord
)"""
