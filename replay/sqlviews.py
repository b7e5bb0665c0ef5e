"""The views scope-query offers, over the mirror's tables (see replay.mirror).

``connections_at(T, W)`` pairs the sockets known at T into connections with the same rules as
``scope-replay --at T --window W`` (replay.connections): a socket is in the window if it was
known by T and had not ended by T - W; the k-th client and k-th server of one address pair
(by open time) are one connection when their lives overlap. Its answers equal replay's.
"""

from __future__ import annotations

from eventlog.events import IPS_DST_NAT, IPS_NAT_MASK, IPS_SRC_NAT, Kind
from replay.connections import MISSING_NOTE

_KIND_NAME = (
    "CASE e.kind " + " ".join(f"WHEN {int(k)} THEN '{k.name.lower()}'" for k in Kind) + " END"
)


def _endpoint(ip: str, port: str) -> str:
    return f"CASE WHEN contains({ip}, ':') THEN '[' || {ip} || ']:' || {port} ELSE {ip} || ':' || {port} END"


def _pairing(shown: str, nat_alive: str) -> str:
    """SQL turning the sockets of CTE ``shown`` (with an ``end_ns`` column) into connections.

    A client socket whose connection conntrack rewrote (a NAT segment for which
    ``nat_alive`` holds, aliased ``n`` beside the socket ``sh``) is keyed by the tuple the
    server saw, so it pairs with the real backend's socket, as replay.connections does.
    """
    return f"""
nat_matches AS (
    SELECT sh.origin_pos, sh.origin_ord, n.reply_src AS n_reply_src,
        n.reply_sport AS n_reply_sport, n.reply_dst AS n_reply_dst,
        n.reply_dport AS n_reply_dport, n.status AS n_status,
        row_number() OVER (
            PARTITION BY sh.origin_pos, sh.origin_ord
            ORDER BY n.netns IS NOT DISTINCT FROM sh.netns DESC, n.netns, n.ct_id, n.position DESC
        ) AS n_rank
    FROM {shown} sh JOIN nat_segments n
      ON sh.role IS DISTINCT FROM 'server' AND n.recording_id = sh.recording_id
     AND n.orig_src = sh.local_ip AND n.orig_sport = sh.local_port
     AND n.orig_dst = sh.remote_ip AND n.orig_dport = sh.remote_port AND {nat_alive}
),
natted AS (
    SELECT sh.*, m.* EXCLUDE (origin_pos, origin_ord, n_rank)
    FROM {shown} sh LEFT JOIN (SELECT * FROM nat_matches WHERE n_rank = 1) m
      ON m.origin_pos = sh.origin_pos AND m.origin_ord = sh.origin_ord
),
keyed AS (
    SELECT * REPLACE (
            coalesce(note, CASE WHEN end_ns IS NOT NULL AND end_ns = missing_ns
                                 AND (close_ns IS NULL OR close_ns <> end_ns)
                                THEN '{MISSING_NOTE}' END) AS note),
        role = 'server' AS is_server,
        CASE WHEN role = 'server' THEN remote_ip ELSE local_ip END AS v_c_ip,
        CASE WHEN role = 'server' THEN remote_port ELSE local_port END AS v_c_port,
        CASE WHEN role = 'server' THEN local_ip ELSE remote_ip END AS v_s_ip,
        CASE WHEN role = 'server' THEN local_port ELSE remote_port END AS v_s_port,
        CASE WHEN role = 'server' THEN remote_ip WHEN n_status IS NOT NULL THEN n_reply_dst
             ELSE local_ip END AS c_ip,
        CASE WHEN role = 'server' THEN remote_port WHEN n_status IS NOT NULL THEN n_reply_dport
             ELSE local_port END AS c_port,
        CASE WHEN role = 'server' THEN local_ip WHEN n_status IS NOT NULL THEN n_reply_src
             ELSE remote_ip END AS s_ip,
        CASE WHEN role = 'server' THEN local_port WHEN n_status IS NOT NULL THEN n_reply_sport
             ELSE remote_port END AS s_port,
        CASE WHEN local_ip LIKE '127.%' OR local_ip = '::1' OR remote_ip LIKE '127.%'
                  OR remote_ip = '::1' THEN netns END AS loop_ns
    FROM natted
),
ranked AS (
    SELECT *, row_number() OVER (
        PARTITION BY host, c_ip, c_port, s_ip, s_port, loop_ns, is_server
        ORDER BY coalesce(opened_ns, -1), origin_pos, origin_ord) AS rk
    FROM keyed
),
paired AS (
    SELECT c.origin_pos AS c_pos, c.origin_ord AS c_ord, s.origin_pos AS s_pos, s.origin_ord AS s_ord,
        coalesce(c.host, s.host) AS host,
        -- Endpoints as the client used them when its socket is ours (before any NAT).
        coalesce(c.v_c_ip, s.v_c_ip) AS c_ip, coalesce(c.v_c_port, s.v_c_port) AS c_port,
        coalesce(c.v_s_ip, s.v_s_ip) AS s_ip, coalesce(c.v_s_port, s.v_s_port) AS s_port,
        CASE WHEN c.n_status & {IPS_DST_NAT} <> 0 THEN c.n_reply_src END AS real_ip,
        CASE WHEN c.n_status & {IPS_DST_NAT} <> 0 THEN c.n_reply_sport END AS real_port,
        CASE WHEN c.n_status & {IPS_SRC_NAT} <> 0 THEN c.n_reply_dst END AS snat_ip,
        CASE WHEN c.n_status & {IPS_SRC_NAT} <> 0 THEN c.n_reply_dport END AS snat_port,
        c.origin_pos IS NOT NULL AS has_client, s.origin_pos IS NOT NULL AS has_server,
        c.opened_ns AS c_opened, s.opened_ns AS s_opened, c.end_ns AS c_end, s.end_ns AS s_end,
        c.pid AS client_pid, c.comm AS client_comm, c.netns AS client_netns,
        s.pid AS server_pid, s.comm AS server_comm, s.netns AS server_netns,
        c.source AS c_source, s.source AS s_source, c.note AS c_note, s.note AS s_note,
        coalesce(c.bytes_sent, s.bytes_received) AS bytes_sent,
        coalesce(c.bytes_received, s.bytes_sent) AS bytes_received,
        coalesce(c.recording_id, s.recording_id) AS recording_id
    FROM (SELECT * FROM ranked WHERE NOT is_server) c
    FULL OUTER JOIN (SELECT * FROM ranked WHERE is_server) s
      ON c.host = s.host AND c.c_ip = s.c_ip AND c.c_port = s.c_port AND c.s_ip = s.s_ip
     AND c.s_port = s.s_port AND c.loop_ns IS NOT DISTINCT FROM s.loop_ns AND c.rk = s.rk
     AND coalesce(c.opened_ns, -1) <= coalesce(s.end_ns, 9223372036854775807)
     AND coalesce(s.opened_ns, -1) <= coalesce(c.end_ns, 9223372036854775807)
),
connections_rows AS (
    SELECT
        CASE WHEN s_pos IS NULL OR (c_pos IS NOT NULL AND (c_pos < s_pos OR (c_pos = s_pos AND c_ord < s_ord)))
             THEN c_pos || '.' || c_ord ELSE s_pos || '.' || s_ord END AS id,
        CASE WHEN (has_client AND c_end IS NULL) OR (has_server AND s_end IS NULL)
             THEN 'open' ELSE 'closed' END AS state,
        CASE WHEN has_client AND has_server THEN 'local' WHEN has_client THEN 'outbound'
             ELSE 'inbound' END AS direction,
        host,
        {_endpoint("c_ip", "c_port")} AS client,
        {_endpoint("s_ip", "s_port")} AS server,
        least(c_opened, s_opened) AS opened_ns,
        CASE WHEN (has_client AND c_end IS NULL) OR (has_server AND s_end IS NULL) THEN NULL
             ELSE greatest(c_end, s_end) END AS closed_ns,
        client_pid, client_comm, client_netns, server_pid, server_comm, server_netns,
        CASE WHEN real_ip IS NOT NULL THEN {_endpoint("real_ip", "real_port")} END AS nat_destination,
        CASE WHEN snat_ip IS NOT NULL THEN {_endpoint("snat_ip", "snat_port")} END AS nat_source,
        array_to_string(list_sort(list_distinct(list_filter([c_source, s_source], lambda x: x IS NOT NULL))), '+') AS source,
        nullif(array_to_string(list_sort(list_distinct(list_filter([c_note, s_note], lambda x: x IS NOT NULL))), '; '), '') AS note,
        bytes_sent, bytes_received, recording_id, false AS failed,
        c_ip AS client_ip, c_port AS client_port, coalesce(real_ip, s_ip) AS server_ip,
        coalesce(real_port, s_port) AS server_port
    FROM paired
)"""


def _failed(where: str) -> str:
    return f"""
    SELECT e.position || '.0' AS id, 'failed' AS state, 'outbound' AS direction, r.host,
        {_endpoint("e.laddr", "e.lport")} AS client, {_endpoint("e.raddr", "e.rport")} AS server,
        e.wall_ns AS opened_ns, e.wall_ns AS closed_ns,
        e.pid AS client_pid, e.comm AS client_comm, e.netns AS client_netns,
        CAST(NULL AS INTEGER) AS server_pid, CAST(NULL AS VARCHAR) AS server_comm,
        CAST(NULL AS BIGINT) AS server_netns, CAST(NULL AS VARCHAR) AS nat_destination,
        CAST(NULL AS VARCHAR) AS nat_source, 'events' AS source,
        CASE WHEN json_extract(e.extra, '$.error') IS NOT NULL
             THEN 'connect failed: errno ' || json_extract(e.extra, '$.error')
             ELSE 'connect failed' END AS note,
        CAST(NULL AS BIGINT) AS bytes_sent, CAST(NULL AS BIGINT) AS bytes_received,
        e.recording_id, true AS failed,
        e.laddr AS client_ip, e.lport AS client_port, e.raddr AS server_ip, e.rport AS server_port
    FROM ev e LEFT JOIN recordings_raw r ON r.id = e.recording_id
    WHERE e.kind = {int(Kind.CONNECT_FAILED)} AND {where}"""


# Which NAT segments (``n``) apply to a socket (``sh``): the one alive at T, for the table at
# a moment; any that overlaps the socket's life, for the connections view.
_NAT_AT_T = "n.wall_ns <= t_ns AND (n.end_ns IS NULL OR n.end_ns > t_ns)"
_NAT_DURING_SOCKET = (
    "n.wall_ns <= coalesce(sh.end_ns, 9223372036854775807) "
    "AND (n.end_ns IS NULL OR n.end_ns > coalesce(sh.known_ns, sh.opened_ns, -1))"
)

_OUTPUT = """
    SELECT id, state, direction, host, client, server,
        make_timestamp_ns(opened_ns) AS opened_at, make_timestamp_ns(closed_ns) AS closed_at,
        CASE WHEN state <> 'failed' THEN closed_ns - opened_ns END AS duration_ns,
        client_pid, client_comm, client_netns, server_pid, server_comm, server_netns,
        nat_destination, nat_source,
        source, note, bytes_sent, bytes_received, opened_ns, closed_ns, recording_id, failed,
        client_ip, client_port, server_ip, server_port
    FROM ({rows}) u
    ORDER BY coalesce(opened_ns, -1), coalesce(closed_ns, 0), id
"""

VIEWS_SQL = f"""
CREATE OR REPLACE VIEW sockets AS
    SELECT * FROM sockets_closed UNION ALL SELECT * FROM sockets_open;

CREATE OR REPLACE VIEW ct_all AS
SELECT e.position, e.recording_id, e.wall_ns, 'snapshot' AS change,
    t.netns, t.orig_src, t.orig_sport, t.orig_dst, t.orig_dport, t.reply_src, t.reply_sport,
    t.reply_dst, t.reply_dport, t.status, t.tcp_state, t.ct_id, t.zone, t.mark
FROM snap_ct t JOIN ev e ON e.position = t.position
UNION ALL
SELECT e.position, e.recording_id, e.wall_ns,
    CASE e.kind WHEN {int(Kind.CT_NEW)} THEN 'new' WHEN {int(Kind.CT_UPDATE)} THEN 'update' ELSE 'destroy' END,
    e.netns, e.laddr, e.lport, e.raddr, e.rport,
    json_extract_string(e.extra, '$.reply_src'), CAST(json_extract(e.extra, '$.reply_sport') AS INTEGER),
    json_extract_string(e.extra, '$.reply_dst'), CAST(json_extract(e.extra, '$.reply_dport') AS INTEGER),
    CAST(json_extract(e.extra, '$.status') AS INTEGER), CAST(json_extract(e.extra, '$.tcp_state') AS SMALLINT),
    CAST(json_extract(e.extra, '$.ct_id') AS BIGINT), CAST(json_extract(e.extra, '$.zone') AS INTEGER),
    CAST(json_extract(e.extra, '$.mark') AS BIGINT)
FROM ev e WHERE e.kind IN ({int(Kind.CT_NEW)}, {int(Kind.CT_UPDATE)}, {int(Kind.CT_DESTROY)});

CREATE OR REPLACE VIEW conntrack AS
SELECT position, recording_id, make_timestamp_ns(wall_ns) AS ts, change, netns, orig_src,
    orig_sport, orig_dst, orig_dport, reply_src, reply_sport, reply_dst, reply_dport, status,
    tcp_state, ct_id, zone, mark
FROM ct_all;

-- Each NAT entry's content from one sighting (dump, new, update) until the next sighting, its
-- destroy, or the first later dump of its namespace that no longer lists it: the state
-- replay.fold keeps for conntrack, as intervals [wall_ns, end_ns).
CREATE OR REPLACE VIEW nat_segments AS
WITH seq AS (
    SELECT *, lead(position) OVER w AS next_position, lead(wall_ns) OVER w AS next_wall_ns
    FROM ct_all
    WINDOW w AS (PARTITION BY recording_id, netns, ct_id ORDER BY position)
),
dumps AS (
    SELECT e.position, e.wall_ns, e.recording_id, e.extra
    FROM ev e
    WHERE e.kind = {int(Kind.SNAPSHOT)}
      AND coalesce(CAST(json_extract(e.extra, '$.conntrack') AS BOOLEAN), false)
),
dumped_namespaces AS (
    SELECT position, wall_ns, recording_id,
        unnest(CAST(json_extract(extra, '$.namespace_list') AS BIGINT[])) AS netns
    FROM dumps
    UNION ALL
    SELECT d.position, d.wall_ns, d.recording_id, k.netns
    FROM dumps d JOIN (SELECT DISTINCT recording_id, netns FROM ct_all) k
      ON k.recording_id = d.recording_id
    WHERE json_extract(d.extra, '$.namespace_list') IS NULL
)
SELECT s.*, CASE WHEN s.next_wall_ns IS NULL THEN m.wall_ns
                 WHEN m.wall_ns IS NULL THEN s.next_wall_ns
                 ELSE least(s.next_wall_ns, m.wall_ns) END AS end_ns
FROM seq s ASOF LEFT JOIN dumped_namespaces m
  ON m.recording_id = s.recording_id AND m.netns = s.netns AND m.position > s.position
WHERE s.change <> 'destroy' AND s.status & {IPS_NAT_MASK} <> 0;

CREATE OR REPLACE VIEW events AS
SELECT e.position, e.recording_id, r.host, {_KIND_NAME} AS kind, e.kind AS kind_code,
    make_timestamp_ns(e.wall_ns) AS ts, e.wall_ns, e.mono_ns, e.pid, e.comm, e.netns, e.family,
    e.laddr, e.lport, e.raddr, e.rport, e.sock_id, e.bytes_sent, e.bytes_received, e.extra
FROM ev e LEFT JOIN recordings_raw r ON r.id = e.recording_id;

CREATE OR REPLACE MACRO connections_at_ns(t_ns, w_ns) AS TABLE
WITH live AS (
    SELECT s.*, CASE WHEN s.close_ns <= t_ns THEN s.close_ns
                     WHEN s.missing_ns <= t_ns THEN s.missing_ns END AS end_ns
    FROM sockets s WHERE s.known_ns <= t_ns
),
shown AS (SELECT * FROM live WHERE end_ns IS NULL OR end_ns > t_ns - w_ns),
{_pairing("shown", _NAT_AT_T)}
{_OUTPUT.format(rows="SELECT * FROM connections_rows UNION ALL " + _failed("e.wall_ns > t_ns - w_ns AND e.wall_ns <= t_ns"))};

CREATE OR REPLACE MACRO connections_at(t, w) AS TABLE
    SELECT * FROM connections_at_ns(
        epoch_ns(CAST(t AS TIMESTAMP_NS)),
        CAST(round(epoch(CAST(w AS INTERVAL)) * 1000000) AS BIGINT) * 1000);

CREATE OR REPLACE VIEW connections AS
WITH shown AS (SELECT *, coalesce(close_ns, missing_ns) AS end_ns FROM sockets),
{_pairing("shown", _NAT_DURING_SOCKET)}
{_OUTPUT.format(rows="SELECT * FROM connections_rows UNION ALL " + _failed("true"))};

CREATE OR REPLACE VIEW recordings AS
SELECT r.id, r.host, r.machine_id, r.boot_id, r.kernel, r.version, r.mode,
    make_timestamp_ns(r.started_wall_ns) AS started_at,
    make_timestamp_ns(r.started_wall_ns + (coalesce(r.stopped_mono_ns, r.last_mono_ns) - r.started_mono_ns)) AS ended_at,
    r.stop_reason, r.stop_detail, r.conntrack
FROM recordings_raw r;

CREATE OR REPLACE VIEW losses AS
SELECT l.id, l.recording_id, l.lost, make_timestamp_ns(l.first_wall_ns) AS first_at,
    make_timestamp_ns(l.last_wall_ns) AS last_at, l.after_position, l.reason
FROM losses_raw l;

CREATE OR REPLACE VIEW snapshots AS
SELECT e.position, e.recording_id, r.host, make_timestamp_ns(e.wall_ns) AS ts,
    CAST(json_extract(e.extra, '$.initial') AS BOOLEAN) AS initial,
    CAST(json_extract(e.extra, '$.walk_ns') AS BIGINT) AS walk_ns,
    (SELECT count(*) FROM snap_conn c WHERE c.position = e.position) AS connections,
    (SELECT count(*) FROM snap_proc p WHERE p.position = e.position) AS processes,
    (SELECT count(*) FROM snap_ct t WHERE t.position = e.position) AS conntrack_entries
FROM ev e LEFT JOIN recordings_raw r ON r.id = e.recording_id
WHERE e.kind = {int(Kind.SNAPSHOT)};

CREATE OR REPLACE VIEW processes AS
WITH sightings AS (
    SELECT e.recording_id, e.pid, e.wall_ns AS at_ns, e.kind,
        e.wall_ns AS start_ns, e.comm,
        CAST(json_extract(e.extra, '$.ppid') AS INTEGER) AS ppid,
        json_extract_string(e.extra, '$.filename') AS cmdline, CAST(NULL AS VARCHAR) AS cgroup
    FROM ev e WHERE e.kind IN ({int(Kind.EXEC)}, {int(Kind.EXIT)})
    UNION ALL
    SELECT e.recording_id, p.pid, e.wall_ns, {int(Kind.SNAPSHOT)},
        p.start_mono_ns + (e.wall_ns - e.mono_ns), p.comm, p.ppid, p.cmdline, p.cgroup
    FROM snap_proc p JOIN ev e ON e.position = p.position
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
    l.cgroup, make_timestamp_ns(l.started_ns) AS started_at, make_timestamp_ns(l.exited_ns) AS exited_at
FROM lives l LEFT JOIN recordings_raw r ON r.id = l.recording_id
LEFT JOIN cgroups g ON g.cgroup = l.cgroup;

"""

PUBLIC_VIEWS = (
    "events", "connections", "processes", "conntrack", "recordings", "losses", "snapshots", "sockets",
)  # fmt: skip
MACROS = {
    "connections_at(t TIMESTAMP, w INTERVAL)": "the connection table at t, as scope-replay --at t --window w",
    "connections_at_ns(t_ns BIGINT, w_ns BIGINT)": "the same with nanosecond integers",
}
