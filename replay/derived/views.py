"""What is read from the derived store: the connection table at a moment, processes and NAT at
a moment, and the views scope-query offers. Defined here once, in SQL, for every reader.

A socket's interval (replay.fold, made whole in replay.derived.derive) says when it became
known, and what ended it: its close event, or the snapshot that no longer showed it (unless
its close came before the next snapshot). At a moment T with a window W, the sockets shown
are those known by T that had not ended by T - W; one ended by T is shown as ended then.

Pairing: each socket is one side of a connection. The side that connected is the client; a
socket known only from /proc gets its side from the listening sockets of its snapshot, else
by Scope's rule that the lower local port is the server. Sockets of one host whose
addresses mirror each other (and, on loopback, share a network namespace) are grouped; in a
group the k-th client and the k-th server by open time are one connection when their
lifetimes overlap, and two one-sided rows otherwise. A client socket whose connection
conntrack rewrote (a NAT entry alive at T with the socket's tuple as its original) is
grouped by the tuple as the server saw it: it pairs with the real backend's socket, and the
row says where DNAT sent it and how SNAT showed its source. A server socket whose connection
DNAT on its own host sent to it (a published port), and whose client this host did not
rewrite, is grouped by the tuple as the client dialled it, so that it pairs with a client
recorded on another host.
"""

from __future__ import annotations

from eventlog.events import IPS_DST_NAT, IPS_SRC_NAT, Kind
from replay.derived.owners import owner_ctes
from replay.derived.tables import SHORT_NS, exec_command_line

CLOSE_ONLY_NOTE = "opened before anything recorded"
SHARED_NOTE = "sockets of several hosts have these addresses: not paired across hosts"
# How far apart two hosts' clocks may be for their sockets of one connection to pair: each
# side's times are its own recording's. Default of scope-replay --skew-tolerance.
SKEW_TOLERANCE_NS = 1_000_000_000
MISSING_NOTE = "gone by the next /proc snapshot (its close was not captured)"
_MAX_NS = 9223372036854775807

_KINDS = ", ".join(f"({int(k)}, '{k.name.lower()}')" for k in Kind)


def _skew(client: str, server: str) -> str:
    """SQL: the slack two sockets' times get, the skew tolerance when on different hosts."""
    return f"CASE WHEN {client}.host = {server}.host THEN 0 ELSE skew_ns() END"


# What a socket (``sh``) takes of a NAT entry (``n``) that rewrote its connection, and the
# rank that picks one entry where several match (its own namespace's first).
_NAT_MATCH = """n.reply_src AS n_reply_src, n.reply_sport AS n_reply_sport,
        n.reply_dst AS n_reply_dst, n.reply_dport AS n_reply_dport, n.status AS n_status,
        row_number() OVER (
            PARTITION BY sh.origin_pos, sh.origin_ord
            ORDER BY n.netns IS NOT DISTINCT FROM sh.netns DESC, n.netns, n.ct_id, n.source_pos DESC
        ) AS n_rank"""


def _pairing(shown: str, nat_alive: str) -> str:
    """CTEs pairing the sockets of CTE ``shown`` into ``connections_rows``; ``nat_alive`` says
    which NAT intervals (``n``) apply to a socket (``sh``)."""
    return f"""
nat_matches AS (  -- a client's connection that conntrack of its host rewrote
    SELECT sh.origin_pos, sh.origin_ord, sh.recording_id AS n_recording, n.ct_id AS n_ct_id,
        {_NAT_MATCH}
    FROM {shown} sh JOIN nat_all n
      ON sh.role <> 'server' AND n.recording_id = sh.recording_id
     AND n.orig_src = sh.local_ip AND n.orig_sport = sh.local_port
     AND n.orig_dst = sh.remote_ip AND n.orig_dport = sh.remote_port AND {nat_alive}
),
client_nat AS (SELECT * FROM nat_matches WHERE n_rank = 1),
server_nat_matches AS (  -- a server's connection that DNAT on its own host sent to it (a
    -- published port): the client dialled the entry's original destination. Not one whose
    -- client socket on this host is translated already.
    SELECT sh.origin_pos, sh.origin_ord, n.orig_src AS n_orig_src,
        n.orig_sport AS n_orig_sport, n.orig_dst AS n_orig_dst, n.orig_dport AS n_orig_dport,
        {_NAT_MATCH}
    FROM {shown} sh JOIN nat_all n
      ON sh.role = 'server' AND n.recording_id = sh.recording_id
     AND n.status & {IPS_DST_NAT} <> 0
     AND n.reply_src = sh.local_ip AND n.reply_sport = sh.local_port
     AND n.reply_dst = sh.remote_ip AND n.reply_dport = sh.remote_port AND {nat_alive}
    ANTI JOIN client_nat x ON x.n_recording = n.recording_id AND x.n_ct_id = n.ct_id
),
keyed AS (  -- what pairs a socket: its side, times, and key as the server's socket sees it
    -- (as its client dialled it, when DNAT on the server's host rewrote it)
    -- (the socket whole: the connection's row is made of its two sockets' rows)
    SELECT sh.*,
        coalesce(m.n_reply_src, v.n_reply_src) AS n_reply_src,
        coalesce(m.n_reply_sport, v.n_reply_sport) AS n_reply_sport,
        coalesce(m.n_reply_dst, v.n_reply_dst) AS n_reply_dst,
        coalesce(m.n_reply_dport, v.n_reply_dport) AS n_reply_dport,
        coalesce(m.n_status, v.n_status) AS n_status,
        CASE WHEN m.n_status IS NOT NULL THEN m.n_reply_dst
             WHEN v.n_status IS NOT NULL THEN v.n_orig_src
             WHEN sh.is_server THEN sh.remote_ip ELSE sh.local_ip END AS c_ip,
        CASE WHEN m.n_status IS NOT NULL THEN m.n_reply_dport
             WHEN v.n_status IS NOT NULL THEN v.n_orig_sport
             WHEN sh.is_server THEN sh.remote_port ELSE sh.local_port END AS c_port,
        CASE WHEN m.n_status IS NOT NULL THEN m.n_reply_src
             WHEN v.n_status IS NOT NULL THEN v.n_orig_dst
             WHEN sh.is_server THEN sh.local_ip ELSE sh.remote_ip END AS s_ip,
        CASE WHEN m.n_status IS NOT NULL THEN m.n_reply_sport
             WHEN v.n_status IS NOT NULL THEN v.n_orig_dport
             WHEN sh.is_server THEN sh.local_port ELSE sh.remote_port END AS s_port,
        CASE WHEN sh.loopback THEN sh.netns END AS loop_ns
    FROM {shown} sh LEFT JOIN client_nat m
      ON m.origin_pos = sh.origin_pos AND m.origin_ord = sh.origin_ord
    LEFT JOIN (SELECT * FROM server_nat_matches WHERE n_rank = 1) v
      ON v.origin_pos = sh.origin_pos AND v.origin_ord = sh.origin_ord
),
shared AS (  -- address pairs that sockets of more than one host have on one side; with
    -- both sides there, which of them pairs across hosts is not known
    SELECT c_ip, c_port, s_ip, s_port,
        bool_or(is_server) AND bool_or(NOT is_server) AS ambiguous
    FROM keyed WHERE loop_ns IS NULL
    GROUP BY c_ip, c_port, s_ip, s_port
    -- (more than one host: the first and last differ; a count of the distinct hosts cost
    -- the query of a moment a tenth of its time)
    HAVING min(host) FILTER (WHERE is_server) <> max(host) FILTER (WHERE is_server)
        OR min(host) FILTER (WHERE NOT is_server) <> max(host) FILTER (WHERE NOT is_server)
),
homed AS (  -- which host a socket pairs within: its own on loopback and where hosts share
    -- the addresses (no guess between them); else any, so a client recorded on one host
    -- pairs with the server recorded on another
    SELECT k.*, coalesce(g.ambiguous, false) AS shared,
        CASE WHEN k.loop_ns IS NOT NULL OR g.c_ip IS NOT NULL THEN k.host END AS pair_host
    FROM keyed k LEFT JOIN shared g
      ON k.loop_ns IS NULL AND g.c_ip = k.c_ip AND g.c_port = k.c_port AND g.s_ip = k.s_ip
     AND g.s_port = k.s_port
),
crowded AS (  -- the groups with more than one socket on a side (few): the rest rank 1;
    -- each numbered, and how many sockets the groups numbered before it have, so that
    -- their sockets are ranked by one ordering of them all (a window partitioned by the
    -- seven keys cost a query on a busy moment a third of its time; by the group's number,
    -- a tenth, in the setting up of its thousand partitions)
    SELECT *, CAST(sum(members) OVER (ORDER BY group_id ROWS UNBOUNDED PRECEDING) - members
                   AS BIGINT) AS ranked_before
    FROM (SELECT *, row_number() OVER () AS group_id FROM (
        SELECT pair_host, c_ip, c_port, s_ip, s_port, loop_ns, is_server, count(*) AS members
        FROM homed GROUP BY pair_host, c_ip, c_port, s_ip, s_port, loop_ns, is_server
        HAVING count(*) > 1))
),
ranks AS (
    SELECT k.origin_pos, k.origin_ord, row_number() OVER (
        ORDER BY g.group_id, coalesce(k.opened_ns, -1), k.origin_pos, k.origin_ord)
        - g.ranked_before AS rk
    FROM homed k JOIN crowded g
      ON g.pair_host IS NOT DISTINCT FROM k.pair_host AND g.c_ip = k.c_ip
     AND g.c_port = k.c_port AND g.s_ip = k.s_ip AND g.s_port = k.s_port
     AND g.loop_ns IS NOT DISTINCT FROM k.loop_ns AND g.is_server = k.is_server
),
ranked AS (
    SELECT k.*, coalesce(r.rk, 1) AS rk FROM homed k
    LEFT JOIN ranks r ON r.origin_pos = k.origin_pos AND r.origin_ord = k.origin_ord
),
matched AS (  -- which client socket is one connection with which server socket, the two
    -- sockets whole (the endpoints as each side saw them)
    SELECT c.origin_pos AS c_pos, c.origin_ord AS c_ord, s.origin_pos AS s_pos,
        s.origin_ord AS s_ord,
        -- the rewrite by the client's host, else by the server's
        coalesce(c.n_status, s.n_status) AS n_status,
        coalesce(c.n_reply_src, s.n_reply_src) AS n_reply_src,
        coalesce(c.n_reply_sport, s.n_reply_sport) AS n_reply_sport,
        coalesce(c.n_reply_dst, s.n_reply_dst) AS n_reply_dst,
        coalesce(c.n_reply_dport, s.n_reply_dport) AS n_reply_dport,
        coalesce(c.shared, s.shared) AS shared,
        c.host AS c_host, s.host AS s_host,
        c.local_ip AS c_v_c_ip, c.local_port AS c_v_c_port, c.remote_ip AS c_v_s_ip,
        c.remote_port AS c_v_s_port, s.remote_ip AS s_v_c_ip, s.remote_port AS s_v_c_port,
        s.local_ip AS s_v_s_ip, s.local_port AS s_v_s_port,
        c.opened_ns AS c_opened, s.opened_ns AS s_opened, c.end_ns AS c_end, s.end_ns AS s_end,
        c.at_pid AS client_pid, c.at_comm AS client_comm, c.netns AS client_netns,
        s.at_pid AS server_pid, s.at_comm AS server_comm, s.netns AS server_netns,
        c.source AS c_source, s.source AS s_source, c.note AS c_note, s.note AS s_note,
        c.unknown AS c_unknown, s.unknown AS s_unknown,
        c.positions AS c_positions, s.positions AS s_positions,
        c.at_sent AS c_sent, c.at_received AS c_received, s.at_sent AS s_sent,
        s.at_received AS s_received, c.recording_id AS c_recording, s.recording_id AS s_recording,
        c.open_pid AS client_open_pid, c.open_comm AS client_open_comm,
        c.opened_ns AS client_open_ns, c.served_since_ns AS client_served_since_ns,
        c.served_how AS client_served_how, c.served_closed_ns AS client_served_closed_ns,
        c.served_seen_ns AS client_served_seen_ns, c.handed_after_ns AS client_handed_after_ns,
        c.handed_by_ns AS client_handed_by_ns,
        s.open_pid AS server_open_pid, s.open_comm AS server_open_comm,
        s.opened_ns AS server_open_ns, s.served_since_ns AS server_served_since_ns,
        s.served_how AS server_served_how, s.served_closed_ns AS server_served_closed_ns,
        s.served_seen_ns AS server_served_seen_ns, s.handed_after_ns AS server_handed_after_ns,
        s.handed_by_ns AS server_handed_by_ns
    FROM (SELECT * FROM ranked WHERE NOT is_server) c
    FULL OUTER JOIN (SELECT * FROM ranked WHERE is_server) s
      ON c.pair_host IS NOT DISTINCT FROM s.pair_host AND c.c_ip = s.c_ip
     AND c.c_port = s.c_port AND c.s_ip = s.s_ip AND c.s_port = s.s_port
     AND c.loop_ns IS NOT DISTINCT FROM s.loop_ns AND c.rk = s.rk
     -- each side's times are its own host's clock: across hosts, within the skew tolerance
     AND coalesce(c.opened_ns, -1) <= coalesce(s.end_ns + {_skew("c", "s")}, {_MAX_NS})
     AND coalesce(s.opened_ns, -1) <= coalesce(c.end_ns + {_skew("c", "s")}, {_MAX_NS})
),
paired AS (  -- and where NAT sent it, as the row says
    SELECT *, c_pos IS NOT NULL AS has_client, s_pos IS NOT NULL AS has_server,
        CASE WHEN n_status & {IPS_DST_NAT} <> 0 THEN n_reply_src END AS real_ip,
        CASE WHEN n_status & {IPS_DST_NAT} <> 0 THEN n_reply_sport END AS real_port,
        CASE WHEN n_status & {IPS_SRC_NAT} <> 0 THEN n_reply_dst END AS snat_ip,
        CASE WHEN n_status & {IPS_SRC_NAT} <> 0 THEN n_reply_dport END AS snat_port
    FROM matched
),
sided AS (
    SELECT *,
        -- the row's first side (by origin) names it and its host
        NOT has_server OR (has_client AND (c_pos < s_pos OR (c_pos = s_pos AND c_ord < s_ord)))
            AS client_first,
        CASE WHEN has_client THEN c_v_c_ip ELSE s_v_c_ip END AS seen_c_ip,
        CASE WHEN has_client THEN c_v_c_port ELSE s_v_c_port END AS seen_c_port,
        CASE WHEN has_client THEN c_v_s_ip ELSE s_v_s_ip END AS seen_s_ip,
        CASE WHEN has_client THEN c_v_s_port ELSE s_v_s_port END AS seen_s_port,
        (has_client AND c_end IS NULL AND NOT c_unknown)
            OR (has_server AND s_end IS NULL AND NOT s_unknown) AS is_open,
        -- no side known to be open or closed: one was open when its recording ended
        coalesce(c_end, s_end) IS NULL
            AND ((has_client AND c_unknown) OR (has_server AND s_unknown)) AS is_unknown
    FROM paired
),
connections_rows AS (
    SELECT
        CASE WHEN client_first THEN c_pos ELSE s_pos END AS first_pos,
        CASE WHEN client_first THEN c_ord ELSE s_ord END AS first_ord,
        CASE WHEN client_first THEN c_pos || '#' || c_ord ELSE s_pos || '#' || s_ord END AS id,
        CASE WHEN is_open THEN 'open' WHEN is_unknown THEN 'unknown' ELSE 'closed' END AS state,
        CASE WHEN has_client AND has_server THEN 'local' WHEN has_client THEN 'outbound'
             ELSE 'inbound' END AS direction,
        CASE WHEN client_first THEN c_host ELSE s_host END AS host,
        CASE WHEN has_client THEN c_host END AS client_host,
        CASE WHEN has_server THEN s_host END AS server_host,
        endpoint(seen_c_ip, seen_c_port) AS client,
        endpoint(seen_s_ip, seen_s_port) AS server,
        least(c_opened, s_opened) AS opened_ns,
        CASE WHEN is_open OR is_unknown THEN NULL ELSE greatest(c_end, s_end) END AS closed_ns,
        client_pid, client_comm, client_netns, server_pid, server_comm, server_netns,
        CASE WHEN real_ip IS NOT NULL THEN endpoint(real_ip, real_port) END AS nat_destination,
        CASE WHEN snat_ip IS NOT NULL THEN endpoint(snat_ip, snat_port) END AS nat_source,
        joined(c_source, s_source, '+') AS source,
        CASE WHEN s_positions IS NULL THEN c_positions WHEN c_positions IS NULL THEN s_positions
             ELSE list_sort(list_distinct(list_concat(c_positions, s_positions))) END
            AS positions,
        joined(joined(c_note, s_note, '; '),
            CASE WHEN shared AND NOT (has_client AND has_server) THEN '{SHARED_NOTE}' END,
            '; ') AS note,
        CASE WHEN has_client THEN c_sent ELSE s_received END AS bytes_sent,
        CASE WHEN has_client THEN c_received ELSE s_sent END AS bytes_received,
        CASE WHEN client_first THEN c_recording ELSE s_recording END AS recording_id,
        false AS failed,
        seen_c_ip AS client_ip, seen_c_port AS client_port,
        coalesce(real_ip, seen_s_ip) AS server_ip, coalesce(real_port, seen_s_port) AS server_port,
        has_client AS client_local, has_server AS server_local,
        client_open_pid, client_open_comm, client_open_ns, client_served_since_ns,
        client_served_how, client_served_closed_ns, client_served_seen_ns,
        client_handed_after_ns, client_handed_by_ns, server_open_pid, server_open_comm,
        server_open_ns, server_served_since_ns, server_served_how, server_served_closed_ns,
        server_served_seen_ns, server_handed_after_ns, server_handed_by_ns
    FROM sided
)"""


def _failed(where: str) -> str:
    """Failed connects, as rows of the table: local when refused by this host (loopback), as
    a connection that succeeded there would be."""
    return f"""
    SELECT e.position AS first_pos, 0 AS first_ord, e.position || '#0' AS id, 'failed' AS state,
        CASE WHEN coalesce(a.loopback, false) THEN 'local' ELSE 'outbound' END AS direction,
        coalesce(r.host, '?') AS host, coalesce(r.host, '?') AS client_host,
        CAST(NULL AS VARCHAR) AS server_host,
        endpoint(coalesce(e.laddr_text, '?'), e.lport) AS client,
        endpoint(coalesce(e.raddr_text, '?'), e.rport) AS server,
        e.wall_ns AS opened_ns, e.wall_ns AS closed_ns,
        e.pid AS client_pid, e.comm AS client_comm, e.netns AS client_netns,
        CAST(NULL AS INTEGER) AS server_pid, CAST(NULL AS VARCHAR) AS server_comm,
        CAST(NULL AS BIGINT) AS server_netns, CAST(NULL AS VARCHAR) AS nat_destination,
        CAST(NULL AS VARCHAR) AS nat_source, 'events' AS source, [e.position] AS positions,
        CASE WHEN coalesce(json_extract_string(e.extra, '$.error'), '') NOT IN ('', '0', 'false')
             THEN 'connect failed: errno ' || json_extract_string(e.extra, '$.error')
             ELSE 'connect failed' END AS note,
        CAST(NULL AS BIGINT) AS bytes_sent, CAST(NULL AS BIGINT) AS bytes_received,
        e.recording_id, true AS failed,
        coalesce(e.laddr_text, '?') AS client_ip, coalesce(e.lport, 0) AS client_port,
        coalesce(e.raddr_text, '?') AS server_ip, coalesce(e.rport, 0) AS server_port,
        true AS client_local, false AS server_local,
        e.pid AS client_open_pid, e.comm AS client_open_comm, e.wall_ns AS client_open_ns,
        e.wall_ns AS client_served_since_ns,
        CASE WHEN e.pid IS NOT NULL THEN 'opened' END AS client_served_how,
        CAST(NULL AS BIGINT) AS client_served_closed_ns,
        CAST(NULL AS BIGINT) AS client_served_seen_ns,
        CAST(NULL AS BIGINT) AS client_handed_after_ns,
        CAST(NULL AS BIGINT) AS client_handed_by_ns,
        CAST(NULL AS INTEGER) AS server_open_pid, CAST(NULL AS VARCHAR) AS server_open_comm,
        CAST(NULL AS BIGINT) AS server_open_ns, CAST(NULL AS BIGINT) AS server_served_since_ns,
        CAST(NULL AS VARCHAR) AS server_served_how,
        CAST(NULL AS BIGINT) AS server_served_closed_ns,
        CAST(NULL AS BIGINT) AS server_served_seen_ns,
        CAST(NULL AS BIGINT) AS server_handed_after_ns,
        CAST(NULL AS BIGINT) AS server_handed_by_ns
    FROM ev e LEFT JOIN recordings_raw r ON r.id = e.recording_id
    LEFT JOIN addr a ON a.id = e.raddr
    WHERE e.kind = {int(Kind.CONNECT_FAILED)} AND {where}"""


# A socket as shown at T (``t_ns``), from a row of ``sockets`` that had ended by T by
# ``ended_by``: its end, owner, bytes, note and positions as of T. A socket still open when
# its recording ended (stopped or crashed) is not open after that: once a later recording of
# its host has begun it ended with its recording ('recording'); before, it is 'unknown'.
_AT_T = f"""
    CASE ended_by WHEN 'close' THEN close_ns WHEN 'missing' THEN missing_ns
                  WHEN 'recording' THEN rec_end_ns END AS end_ns,
    ended_by IS NOT DISTINCT FROM 'unknown' AS unknown,
    CASE WHEN ended_by = 'close' AND pid IS NULL AND close_pid IS NOT NULL THEN close_pid
         ELSE pid END AS at_pid,
    CASE WHEN ended_by = 'close' AND pid IS NULL AND close_pid IS NOT NULL THEN close_comm
         ELSE comm END AS at_comm,
    CASE WHEN ended_by = 'close' THEN bytes_sent END AS at_sent,
    CASE WHEN ended_by = 'close' THEN bytes_received END AS at_received,
    CASE WHEN close_only THEN '{CLOSE_ONLY_NOTE}'
         WHEN ended_by = 'missing' THEN '{MISSING_NOTE}'
         WHEN ended_by = 'recording' THEN 'open when recording ' || recording_id || ' ended at '
             || rfc3339(rec_end_ns) || '; recording ' || next_id || ' began at '
             || rfc3339(next_ns) || ' (what became of it between is not known)'
         WHEN ended_by = 'unknown' THEN 'unknown since ' || rfc3339(rec_end_ns) || ', when '
             || 'recording ' || recording_id || ' ended with it open' END AS note,
    CASE WHEN close_only THEN [origin_pos] WHEN ended_by = 'close' THEN [origin_pos, close_pos]
         WHEN ended_by = 'missing' THEN [origin_pos, missing_pos] ELSE [origin_pos] END
        AS positions
"""

# The sockets of the pairs in ``pairs`` (replay.derived.tables), as rows of the socket tables:
# all but their times is in their two events.
_PAIR_ROWS = """
    SELECT o.position AS origin_pos, 0 AS origin_ord, o.recording_id,
        o.kind <> {connect} AS is_server, o.pid, o.comm, o.netns, o.laddr,
        coalesce(o.lport, 0) AS lport, o.raddr, coalesce(o.rport, 0) AS rport, p.known_ns,
        p.known_ns AS opened_ns, p.close_ns, p.close_pos, c.pid AS close_pid,
        c.comm AS close_comm, c.bytes_sent, c.bytes_received, CAST(NULL AS BIGINT) AS missing_ns,
        CAST(NULL AS BIGINT) AS missing_pos,
        CASE WHEN json_extract_string(o.extra, '$.source') = 'proc' THEN 'proc'
             ELSE 'events' END AS source,
        false AS close_only, o.sock_id
    FROM {pairs} p JOIN ev o ON o.position = p.open_pos JOIN ev c ON c.position = p.close_pos
"""


def _pair_rows(pairs: str) -> str:
    return _PAIR_ROWS.format(pairs=pairs, connect=int(Kind.CONNECT))


# The sockets of CTE ``rows`` with their host, side and addresses in words.
_NAMED = """
    SELECT k.*, coalesce(r.host, '?') AS host,
        CASE WHEN k.is_server THEN 'server' ELSE 'client' END AS role,
        coalesce(a1.text, '?') AS local_ip, k.lport AS local_port,
        coalesce(a2.text, '?') AS remote_ip, k.rport AS remote_port,
        coalesce(a1.loopback, false) OR coalesce(a2.loopback, false) AS loopback
    FROM {rows} k LEFT JOIN recordings_raw r ON r.id = k.recording_id
    LEFT JOIN addr a1 ON a1.id = k.laddr LEFT JOIN addr a2 ON a2.id = k.raddr
"""

_NAT_AT_T = "n.start_ns <= t_ns AND (n.end_ns IS NULL OR n.end_ns > t_ns)"
# Conntrack's events carry no kernel time: the recorder stamps them as it reads them, which
# can be after a short connection's close (measured: 0.2 ms after a 0.3 ms connection). A NAT
# entry seen this long after a socket's end may still be its connection's.
NAT_SEEN_LATE_NS = 1_000_000_000
# Over a socket's whole life: the NAT intervals that overlap it, or began as late as that.
_NAT_DURING_SOCKET = (
    f"n.start_ns <= coalesce(sh.end_ns + {NAT_SEEN_LATE_NS}, {_MAX_NS})"
    " AND (n.end_ns IS NULL OR n.end_ns > sh.known_ns)"
)

_OUTPUT = """
    SELECT id, state, direction, host, client_host, server_host, client, server,
        make_timestamp_ns(opened_ns) AS opened_at, make_timestamp_ns(closed_ns) AS closed_at,
        CASE WHEN state <> 'failed' THEN closed_ns - opened_ns END AS duration_ns,
        client_pid, client_comm, client_netns, server_pid, server_comm, server_netns,
        nat_destination, nat_source, source, note, bytes_sent, bytes_received, opened_ns,
        closed_ns, recording_id, failed, positions, client_ip, client_port, server_ip,
        server_port, client_local, server_local, client_open_pid, client_open_comm,
        client_open_ns, client_served_since_ns, client_served_how, client_served_closed_ns,
        client_served_seen_ns, client_handed_after_ns, client_handed_by_ns,
        server_open_pid, server_open_comm, server_open_ns, server_served_since_ns,
        server_served_how, server_served_closed_ns, server_served_seen_ns,
        server_handed_after_ns, server_handed_by_ns
    FROM ({rows}) u
    ORDER BY coalesce(opened_ns, -1), coalesce(closed_ns, 0), first_pos, first_ord
"""

VIEWS_SQL = f"""
CREATE OR REPLACE MACRO endpoint(ip, port) AS
    CASE WHEN contains(ip, ':') THEN '[' || ip || ']:' || port ELSE ip || ':' || port END;
-- Two texts (either may be missing) as one, in order, once each, with a separator between.
CREATE OR REPLACE MACRO joined(a, b, separator) AS
    CASE WHEN a IS NULL THEN b WHEN b IS NULL OR a = b THEN a
         WHEN a < b THEN a || separator || b ELSE b || separator || a END;

-- The skew tolerance between hosts' clocks when pairing their sockets (SKEW_TOLERANCE_NS).
CREATE OR REPLACE MACRO skew_ns() AS {SKEW_TOLERANCE_NS};
CREATE OR REPLACE MACRO rfc3339(ns) AS strftime(make_timestamp_ns(ns), '%Y-%m-%dT%H:%M:%S.%nZ');
-- Recordings that have ended (stopped or crashed), and the next recording of their host: by
-- a join, not a window (a partitioned window costs milliseconds to set up, on a few rows, in
-- every query of a moment).
CREATE OR REPLACE VIEW recording_ends AS
SELECT r.id AS recording_id, r.ended_wall_ns AS end_ns,
    list(n.id ORDER BY n.started_wall_ns, n.id)[1] AS next_id,
    min(n.started_wall_ns) AS next_ns
FROM recordings_raw r LEFT JOIN recordings_raw n
  ON n.host IS NOT DISTINCT FROM r.host
 AND (n.started_wall_ns > r.started_wall_ns
      OR (n.started_wall_ns = r.started_wall_ns AND n.id > r.id))
WHERE r.stop_reason IS NOT NULL
GROUP BY r.id, r.ended_wall_ns;

CREATE OR REPLACE VIEW socket_all AS
    SELECT * FROM socket_short UNION ALL SELECT * FROM socket_long
    UNION ALL SELECT * FROM socket_open
    UNION ALL {_pair_rows("(SELECT * FROM pairs_short UNION ALL SELECT * FROM pairs_long)")};
CREATE OR REPLACE VIEW nat_all AS
    SELECT * FROM nat_iv UNION ALL SELECT * FROM nat_open;
CREATE OR REPLACE VIEW process_all AS
    SELECT * FROM process_iv UNION ALL SELECT * FROM process_open;

-- Every socket's interval, in words: when it became known and what ended it.
CREATE OR REPLACE VIEW sockets AS
SELECT origin_pos, origin_ord, recording_id, host, role, pid, comm, netns, local_ip,
    local_port, remote_ip, remote_port, make_timestamp_ns(known_ns) AS known_at,
    make_timestamp_ns(opened_ns) AS opened_at, make_timestamp_ns(close_ns) AS closed_at,
    make_timestamp_ns(missing_ns) AS missing_at, close_pos, missing_pos, source,
    bytes_sent, bytes_received
FROM ({_NAMED.format(rows="socket_all")});

-- The connection table at t_ns with a window of w_ns (as scope-replay --at --window). A
-- short-lived socket shown at t_ns became known within SHORT_NS of its end, so only those
-- known since t_ns - w_ns - SHORT_NS are looked at (socket_short is in known_ns order).
CREATE OR REPLACE MACRO connections_at_ns(t_ns, w_ns) AS TABLE
WITH RECURSIVE pairs AS (
    SELECT * FROM pairs_short
    WHERE known_ns >= t_ns - w_ns - {SHORT_NS} AND known_ns <= t_ns AND close_ns > t_ns - w_ns
    UNION ALL
    SELECT * FROM pairs_long WHERE known_ns <= t_ns AND close_ns > t_ns - w_ns
),
candidates AS (
    SELECT * FROM socket_short
    WHERE known_ns >= t_ns - w_ns - {SHORT_NS} AND known_ns <= t_ns
    -- (one closed by the window's start ended then: it is not shown, whatever else it has)
    UNION ALL SELECT * FROM socket_long
    WHERE known_ns <= t_ns AND (close_ns IS NULL OR close_ns > t_ns - w_ns)
    UNION ALL SELECT * FROM socket_open WHERE known_ns <= t_ns
    UNION ALL {_pair_rows("pairs")}
),
live AS (
    SELECT c.*, x.end_ns AS rec_end_ns, x.next_id, x.next_ns,
        CASE WHEN close_ns <= t_ns THEN 'close' WHEN missing_ns <= t_ns THEN 'missing'
             WHEN x.end_ns < t_ns AND x.next_ns <= t_ns THEN 'recording'
             WHEN x.end_ns < t_ns THEN 'unknown' END AS ended_by
    FROM candidates c LEFT JOIN recording_ends x ON x.recording_id = c.recording_id
),
at_t AS (SELECT *, {_AT_T} FROM live),
kept AS (SELECT * FROM at_t WHERE end_ns IS NULL OR end_ns > t_ns - w_ns),
{owner_ctes("kept", "CASE WHEN end_ns IS NOT NULL AND end_ns <= t_ns THEN end_ns ELSE t_ns END")},
shown AS ({_NAMED.format(rows="owned")}),
{_pairing("shown", _NAT_AT_T)}
{
    _OUTPUT.format(
        rows="SELECT * FROM connections_rows UNION ALL "
        + _failed("e.wall_ns > t_ns - w_ns AND e.wall_ns <= t_ns")
    )
};

CREATE OR REPLACE MACRO connections_at(t, w) AS TABLE
    SELECT * FROM connections_at_ns(
        epoch_ns(CAST(t AS TIMESTAMP_NS)),
        CAST(round(epoch(CAST(w AS INTERVAL)) * 1000000) AS BIGINT) * 1000);

-- Every connection over the whole log: each socket as it ended (or is now).
CREATE OR REPLACE VIEW connections AS
WITH RECURSIVE live AS (
    SELECT s.*, x.end_ns AS rec_end_ns, x.next_id, x.next_ns,
        CASE WHEN close_ns IS NOT NULL THEN 'close' WHEN missing_ns IS NOT NULL THEN 'missing'
             WHEN x.next_ns IS NOT NULL THEN 'recording'
             WHEN x.end_ns IS NOT NULL THEN 'unknown' END AS ended_by
    FROM socket_all s LEFT JOIN recording_ends x ON x.recording_id = s.recording_id
),
ended AS (SELECT *, {_AT_T} FROM live),
{owner_ctes("ended", f"coalesce(end_ns, {_MAX_NS})")},
shown AS ({_NAMED.format(rows="owned")}),
{_pairing("shown", _NAT_DURING_SOCKET)}
{_OUTPUT.format(rows="SELECT * FROM connections_rows UNION ALL " + _failed("true"))};

-- How far apart two recorded hosts' clocks read, as the connections paired between them
-- measure it: the median, over those both of whose sockets the kernel reported opening, of
-- ``other_host``'s open time minus ``host``'s (each side's time is its own recording's
-- clock). The two opens of one connection are about a network round trip apart, so an
-- offset well beyond that is a clock that is off.
CREATE OR REPLACE VIEW clock_offsets AS
SELECT least(client_host, server_host) AS host, greatest(client_host, server_host) AS other_host,
    count(*) AS connections,
    quantile_disc(CASE WHEN client_host < server_host THEN server_open_ns - client_open_ns
                       ELSE client_open_ns - server_open_ns END, 0.5) AS offset_ns
FROM connections
WHERE client_host <> server_host AND source = 'events'
    AND client_open_ns IS NOT NULL AND server_open_ns IS NOT NULL
GROUP BY ALL ORDER BY ALL;

-- The processes alive at t_ns, as their latest sighting by then describes them: the EXEC or
-- snapshot row that began their segment, or their recording's last snapshot before t_ns.
CREATE OR REPLACE MACRO processes_at_ns(t_ns) AS TABLE
WITH alive AS (
    SELECT * FROM process_all WHERE start_ns <= t_ns AND (end_ns IS NULL OR end_ns > t_ns)
),
last_snapshot AS (
    SELECT recording_id, max(position) AS position FROM snap_marks WHERE wall_ns <= t_ns
    GROUP BY recording_id
)
SELECT a.recording_id, coalesce(r.host, '?') AS host, a.pid,
    CASE WHEN p.pid IS NULL THEN a.comm ELSE p.comm END AS comm,
    CASE WHEN p.pid IS NULL THEN a.ppid ELSE p.ppid END AS ppid,
    CASE WHEN p.pid IS NULL THEN a.cmdline ELSE p.cmdline END AS cmdline,
    CASE WHEN p.pid IS NULL THEN a.cgroup ELSE p.cgroup END AS cgroup,
    CASE WHEN p.pid IS NULL THEN a.netns ELSE p.netns END AS netns,
    a.cgroup_id, a.cgroup_v1_id
FROM alive a
LEFT JOIN last_snapshot s ON s.recording_id = a.recording_id AND s.position > a.source_pos
LEFT JOIN snap_proc p ON p.position = s.position AND p.pid = a.pid
LEFT JOIN recordings_raw r ON r.id = a.recording_id
ORDER BY a.recording_id, a.pid;

-- What container runtimes said of their containers (recorder.containers), a row a record.
CREATE OR REPLACE VIEW containers AS
SELECT e.position, e.recording_id, coalesce(r.host, '?') AS host, make_timestamp_ns(e.wall_ns) AS ts,
    e.wall_ns, json_extract_string(e.extra, '$.action') AS action,
    json_extract_string(e.extra, '$.id') AS id, json_extract_string(e.extra, '$.name') AS name,
    json_extract_string(e.extra, '$.image') AS image,
    json_extract_string(e.extra, '$.image_id') AS image_id,
    CAST(json_extract(e.extra, '$.labels') AS JSON) AS labels, e.pid, e.netns,
    CAST(json_extract(e.extra, '$.cgroup_id') AS BIGINT) AS cgroup_id,
    CAST(json_extract(e.extra, '$.cgroup_v1_id') AS BIGINT) AS cgroup_v1_id,
    json_extract_string(e.extra, '$.cgroup') AS cgroup,
    json_extract_string(e.extra, '$.runtime') AS runtime
FROM ev e LEFT JOIN recordings_raw r ON r.id = e.recording_id
WHERE e.kind = {int(Kind.CONTAINER)};

-- Each container as of t_ns: named as its latest record by then says (its first record, for
-- a moment before any), with the cgroup, pid and netns its records last knew; ``state`` is
-- the latest action by then (NULL: none yet).
CREATE OR REPLACE MACRO containers_at_ns(t_ns) AS TABLE
SELECT host, id,
    coalesce(arg_max(name, position) FILTER (WHERE wall_ns <= t_ns), arg_min(name, position))
        AS name,
    coalesce(arg_max(image, position) FILTER (WHERE wall_ns <= t_ns), arg_min(image, position))
        AS image,
    coalesce(arg_max(image_id, position) FILTER (WHERE wall_ns <= t_ns),
        arg_min(image_id, position)) AS image_id,
    coalesce(arg_max(CAST(labels AS VARCHAR), position) FILTER (WHERE wall_ns <= t_ns),
        arg_min(CAST(labels AS VARCHAR), position)) AS labels,
    arg_max(action, position) FILTER (WHERE wall_ns <= t_ns) AS state,
    arg_max(cgroup_id, position) FILTER (WHERE cgroup_id IS NOT NULL) AS cgroup_id,
    arg_max(cgroup_v1_id, position) FILTER (WHERE cgroup_v1_id IS NOT NULL) AS cgroup_v1_id,
    arg_max(netns, position) FILTER (WHERE netns IS NOT NULL) AS netns,
    arg_max(pid, position) FILTER (WHERE pid IS NOT NULL) AS pid,
    arg_max(runtime, position) AS runtime
FROM containers GROUP BY host, id ORDER BY host, id;

CREATE OR REPLACE MACRO containers_at(t) AS TABLE
SELECT * FROM containers_at_ns(epoch_ns(CAST(t AS TIMESTAMP_NS)));

CREATE OR REPLACE VIEW conntrack AS
SELECT position, recording_id, make_timestamp_ns(wall_ns) AS ts, change, netns, orig_src,
    orig_sport, orig_dst, orig_dport, reply_src, reply_sport, reply_dst, reply_dport, status,
    tcp_state, ct_id, zone, mark
FROM conntrack_raw;

-- The event kinds by name: a table, so that a filter on a name reaches the events' scan.
CREATE OR REPLACE TABLE kinds AS SELECT * FROM (VALUES {_KINDS}) t(code, name);

CREATE OR REPLACE VIEW events AS
SELECT e.position, e.recording_id, r.host, k.name AS kind, e.kind AS kind_code,
    make_timestamp_ns(e.wall_ns) AS ts, e.wall_ns, e.mono_ns, e.pid, e.comm, e.netns,
    CAST(e.family AS VARCHAR) AS family, e.laddr_text AS laddr, e.lport, e.raddr_text AS raddr,
    e.rport,
    e.sock_id, e.bytes_sent, e.bytes_received, e.extra
FROM ev e LEFT JOIN kinds k ON k.code = e.kind LEFT JOIN recordings_raw r ON r.id = e.recording_id;

CREATE OR REPLACE VIEW recordings AS
SELECT r.id, r.host, r.machine_id, r.boot_id, r.kernel, r.version, r.mode,
    make_timestamp_ns(r.started_wall_ns) AS started_at,
    make_timestamp_ns(r.started_wall_ns
        + (coalesce(r.stopped_mono_ns, r.last_mono_ns) - r.started_mono_ns)) AS ended_at,
    r.stop_reason, r.stop_detail, r.conntrack
FROM recordings_raw r;

CREATE OR REPLACE VIEW losses AS
SELECT l.id, l.recording_id, l.lost, make_timestamp_ns(l.first_wall_ns) AS first_at,
    make_timestamp_ns(l.last_wall_ns) AS last_at, l.after_position, l.reason
FROM losses_raw l;

CREATE OR REPLACE VIEW snapshots AS
SELECT m.position, m.recording_id, r.host, make_timestamp_ns(m.wall_ns) AS ts,
    CAST(json_extract(m.extra, '$.initial') AS BOOLEAN) AS initial,
    CAST(json_extract(m.extra, '$.walk_ns') AS BIGINT) AS walk_ns,
    m.connections, m.processes, m.conntrack_entries
FROM snap_marks m LEFT JOIN recordings_raw r ON r.id = m.recording_id;

-- Process lives: from a start (FORK, EXEC, or the first snapshot showing it) to its EXIT, by pid.
CREATE OR REPLACE VIEW processes AS
WITH sightings AS (
    SELECT e.recording_id, e.pid, e.wall_ns AS at_ns, e.kind, e.wall_ns AS start_ns,
        e.comm, CAST(json_extract(e.extra, '$.ppid') AS INTEGER) AS ppid,
        {exec_command_line("e")} AS cmdline, CAST(NULL AS VARCHAR) AS cgroup
    FROM ev e
    WHERE e.kind IN ({int(Kind.EXEC)}, {int(Kind.EXIT)}, {int(Kind.FORK)})
    UNION ALL
    SELECT m.recording_id, p.pid, m.wall_ns, {int(Kind.SNAPSHOT)},
        p.start_mono_ns + (m.wall_ns - m.mono_ns), p.comm, p.ppid, p.cmdline, p.cgroup
    FROM snap_proc p JOIN snap_marks m ON m.position = p.position
),
numbered AS (
    SELECT *, coalesce(sum(CASE WHEN kind = {int(Kind.EXIT)} THEN 1 ELSE 0 END) OVER (
        PARTITION BY recording_id, pid ORDER BY at_ns, kind
        ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS generation
    FROM sightings
),
lives AS (
    SELECT recording_id, pid, generation,
        min(start_ns) FILTER (WHERE kind <> {int(Kind.EXIT)}) AS started_ns,
        max(at_ns) FILTER (WHERE kind = {int(Kind.EXIT)}) AS exited_ns,
        arg_max(comm, at_ns) AS comm,
        arg_max(ppid, at_ns) FILTER (WHERE ppid IS NOT NULL) AS ppid,
        arg_max(cmdline, at_ns) FILTER (WHERE cmdline IS NOT NULL) AS cmdline,
        arg_max(cgroup, at_ns) FILTER (WHERE cgroup IS NOT NULL) AS cgroup
    FROM numbered GROUP BY recording_id, pid, generation
)
SELECT l.recording_id, r.host, l.pid, l.ppid, l.comm, l.cmdline, g.container_id, g.runtime,
    l.cgroup, make_timestamp_ns(l.started_ns) AS started_at,
    make_timestamp_ns(l.exited_ns) AS exited_at
FROM lives l LEFT JOIN recordings_raw r ON r.id = l.recording_id
LEFT JOIN cgroups g ON g.cgroup = l.cgroup;
"""

PUBLIC_VIEWS = (
    "events", "connections", "sockets", "processes", "conntrack", "recordings", "losses",
    "snapshots", "containers", "clock_offsets",
)  # fmt: skip
MACROS = {
    "connections_at(t TIMESTAMP, w INTERVAL)": "the connection table at t, as scope-replay --at t --window w",
    "connections_at_ns(t_ns BIGINT, w_ns BIGINT)": "the same with nanosecond integers",
    "processes_at_ns(t_ns BIGINT)": "the processes alive at t_ns",
    "containers_at(t TIMESTAMP)": "each container as of t: its name then, image, labels, state",
}
