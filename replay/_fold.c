/* replay._fold: the fold's hot loops in C, and the reads behind a connection table.
 *
 * A full replay folds every event in the log; in Python each event cost about a microsecond
 * (a row tuple from the driver, then columns, sets and dicts), and every /proc snapshot cost
 * tens of milliseconds of tuple hashing to compare a busy host's sockets with the events'.
 *
 * - ``RunReader.fold_run`` reads one run of narrow rows (position, kind, sock_id) straight
 *   from SQLite, up to the next snapshot, and cancels the sockets that open and close within
 *   it without making a Python object for them. What is left (sockets that outlive the run,
 *   closes of older sockets, process and conntrack events) goes back to replay.fold, which
 *   applies it as ``Fold._apply_fast`` does. A run that ``_apply_fast`` would hand to
 *   ``_apply_each`` (a socket id twice, an open without an id, a close before its open, an
 *   open of a socket already open) comes back as its rows, for ``_apply_each``.
 * - ``reconcile_sockets`` is the set algebra of ``Fold._apply_snapshot`` over socket
 *   addresses, on a hash table of the key fields instead of Python tuples.
 * - ``fold_run`` can keep only the rows whose wall time is in a range (the recording's clock
 *   segments convert), as the engine folds a window or a span that ends after its moment.
 * - The run reader keeps the records of the open events it reads for a reconciliation (a log
 *   never changes), and ``socket_hint``/``load_hint`` carry them in a checkpoint, so that a
 *   seek from it reads none of its open sockets' events again.
 * - ``RunReader.socket_views`` reads the events behind a connection table's sockets (in
 *   position ranges, or from those records) and makes them SocketViews, as
 *   replay/connections.py's _Materializer does; tests/unit/replay/test_table_native.py holds
 *   the two equal.
 *
 * replay/fold.py stays the definition: tests/unit/replay/test_fold_native.py checks that both
 * give the same state. Whatever these loops do not expect (a value of another type, a key
 * that is not a 6-tuple of ints and bytes) makes them decline (return None) before they
 * change anything, and the caller does the work in Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <sqlite3.h>
#include <stdint.h>
#include <string.h>

#include "_plain.h"

/* eventlog.events.Kind; tests/unit/replay/test_fold_native.py checks that they agree. */
enum {
    KIND_CONNECT = 1,
    KIND_ACCEPT = 2,
    KIND_CLOSE = 3,
    KIND_CONNECT_FAILED = 4,
    KIND_EXEC = 5,
    KIND_EXIT = 6,
    KIND_SNAPSHOT = 7,
    KIND_CT_NEW = 8,
    KIND_CT_UPDATE = 9,
    KIND_CT_DESTROY = 10,
};

static PyObject *sqlite_error;    /* sqlite3.OperationalError */
static PyObject *sqlite_database; /* sqlite3.DatabaseError */

static PyObject *set_sqlite_error(sqlite3 *db, int rc)
{
    int primary = rc & 0xff;
    PyObject *type = primary == SQLITE_CORRUPT || primary == SQLITE_NOTADB ? sqlite_database
                                                                            : sqlite_error;
    PyErr_SetString(type, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    return NULL;
}

static int compare_positions(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* -- one run's sockets ---------------------------------------------------------------------- */

/* What a run did to one socket id: opened at open_pos, and/or closed. */
struct sock_slot {
    int64_t sock;
    int64_t open_pos;
    uint8_t used, opened, closed;
};

struct sock_map {
    struct sock_slot *slots;
    size_t mask, count;
};

static void sock_map_free(struct sock_map *map)
{
    PyMem_Free(map->slots);
    map->slots = NULL;
    map->mask = map->count = 0;
}

static struct sock_slot *sock_map_probe(struct sock_slot *slots, size_t mask, int64_t sock)
{
    size_t at = mix64((uint64_t)sock) & mask;
    while (slots[at].used && slots[at].sock != sock)
        at = (at + 1) & mask;
    return &slots[at];
}

static int sock_map_grow(struct sock_map *map)
{
    size_t size = map->slots ? (map->mask + 1) * 2 : 1024;
    struct sock_slot *slots = PyMem_Calloc(size, sizeof *slots);
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; map->slots && i <= map->mask; i++)
        if (map->slots[i].used)
            *sock_map_probe(slots, size - 1, map->slots[i].sock) = map->slots[i];
    PyMem_Free(map->slots);
    map->slots = slots;
    map->mask = size - 1;
    return 0;
}

/* The slot of ``sock``, added (all flags clear) if new; NULL with an exception set. */
static struct sock_slot *sock_map_get(struct sock_map *map, int64_t sock)
{
    if ((map->count + 1) * 2 > (map->slots ? map->mask + 1 : 0) && sock_map_grow(map) < 0)
        return NULL;
    struct sock_slot *slot = sock_map_probe(map->slots, map->mask, sock);
    if (!slot->used) {
        slot->used = 1;
        slot->sock = sock;
        map->count++;
    }
    return slot;
}

/* One recording's clock, as recorder.clock.ClockModel holds it: offsets[i] applies from
 * monos[i] until monos[i + 1], and before monos[0] too. */
struct clock {
    long long recording;
    Py_ssize_t count;
    long long *monos, *offsets;
};

static void clock_free(struct clock *clock)
{
    PyMem_Free(clock->monos);
    PyMem_Free(clock->offsets);
    clock->monos = clock->offsets = NULL;
    clock->count = 0;
}

static int exact_long(PyObject *value, long long *out);

/* ``segments`` (ClockModel.segments(): a list of (mono_ns, offset_ns)) into ``clock``: 0, -1
 * on error (set), -2 to decline (no segments, or odd ones). */
static int clock_read(struct clock *clock, PyObject *segments)
{
    *clock = (struct clock){0};
    if (!PyList_CheckExact(segments) || PyList_GET_SIZE(segments) == 0)
        return -2;
    Py_ssize_t count = PyList_GET_SIZE(segments);
    clock->monos = PyMem_Calloc((size_t)count, sizeof *clock->monos);
    clock->offsets = PyMem_Calloc((size_t)count, sizeof *clock->offsets);
    if (clock->monos == NULL || clock->offsets == NULL) {
        clock_free(clock);
        PyErr_NoMemory();
        return -1;
    }
    clock->count = count;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *segment = PyList_GET_ITEM(segments, i);
        if (!PyTuple_CheckExact(segment) || PyTuple_GET_SIZE(segment) != 2 ||
            exact_long(PyTuple_GET_ITEM(segment, 0), &clock->monos[i]) < 0 ||
            exact_long(PyTuple_GET_ITEM(segment, 1), &clock->offsets[i]) < 0 ||
            (i > 0 && clock->monos[i] <= clock->monos[i - 1])) {
            clock_free(clock);
            return -2;
        }
    }
    return 0;
}

/* ClockModel.wall_ns: the offset of the last segment starting at or before ``mono`` (the
 * first segment's before it). 0, or -2 to decline (overflow). */
static int wall_of(const struct clock *clock, long long mono, long long *wall)
{
    Py_ssize_t low = 0, high = clock->count; /* bisect_right */
    while (low < high) {
        Py_ssize_t middle = low + (high - low) / 2;
        if (mono < clock->monos[middle])
            high = middle;
        else
            low = middle + 1;
    }
    long long offset = clock->offsets[low > 0 ? low - 1 : 0];
    return __builtin_add_overflow(mono, offset, wall) ? -2 : 0;
}

struct narrow_row {
    int64_t position, sock;
    int kind;
    int has_sock;
};

/* Everything one call of fold_run builds. */
struct run {
    struct narrow_row *rows;
    Py_ssize_t count, capacity;
    struct sock_map sockets;
    int unusual;
    Py_ssize_t keyless_closes;
};

static void run_free(struct run *run)
{
    PyMem_Free(run->rows);
    sock_map_free(&run->sockets);
}

static int run_append(struct run *run, const struct narrow_row *row)
{
    if (run->count == run->capacity) {
        Py_ssize_t capacity = run->capacity ? run->capacity * 2 : 4096;
        struct narrow_row *rows = PyMem_Realloc(run->rows, (size_t)capacity * sizeof *rows);
        if (rows == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        run->rows = rows;
        run->capacity = capacity;
    }
    run->rows[run->count++] = *row;
    return 0;
}

/* Whether ``sockets`` (the state's open sockets, int -> int) holds ``sock``: -1 on error. */
static int already_open(PyObject *sockets, int64_t sock)
{
    PyObject *key = PyLong_FromLongLong(sock);
    if (key == NULL)
        return -1;
    int found = PyDict_Contains(sockets, key);
    Py_DECREF(key);
    return found;
}

/* Note what ``row`` does to the run's sockets, as _apply_fast's column passes would see it. */
static int run_note(struct run *run, const struct narrow_row *row, PyObject *sockets)
{
    if (row->kind == KIND_CONNECT || row->kind == KIND_ACCEPT) {
        if (!row->has_sock) {
            run->unusual = 1; /* an open without a socket id */
            return 0;
        }
        int open = already_open(sockets, row->sock);
        if (open < 0)
            return -1;
        struct sock_slot *slot = sock_map_get(&run->sockets, row->sock);
        if (slot == NULL)
            return -1;
        /* Already open, opened twice in the run, or closed in the run before this open. */
        if (open || slot->opened || slot->closed)
            run->unusual = 1;
        slot->opened = 1;
        slot->open_pos = row->position;
    } else if (row->kind == KIND_CLOSE) {
        if (!row->has_sock) {
            if (++run->keyless_closes > 1)
                run->unusual = 1; /* _apply_fast counts two closes without an id as a repeat */
            return 0;
        }
        struct sock_slot *slot = sock_map_get(&run->sockets, row->sock);
        if (slot == NULL)
            return -1;
        if (slot->closed)
            run->unusual = 1;
        slot->closed = 1;
    }
    return 0;
}

static int read_row(sqlite3_stmt *stmt, struct narrow_row *row)
{
    int sock_type = sqlite3_column_type(stmt, 2);
    if (sqlite3_column_type(stmt, 0) != SQLITE_INTEGER ||
        sqlite3_column_type(stmt, 1) != SQLITE_INTEGER ||
        (sock_type != SQLITE_INTEGER && sock_type != SQLITE_NULL))
        return -1;
    row->position = sqlite3_column_int64(stmt, 0);
    sqlite3_int64 kind = sqlite3_column_int64(stmt, 1);
    if (kind < INT_MIN || kind > INT_MAX)
        return -1;
    row->kind = (int)kind;
    row->has_sock = sock_type == SQLITE_INTEGER;
    row->sock = row->has_sock ? sqlite3_column_int64(stmt, 2) : 0;
    return 0;
}

/* -- RunReader ------------------------------------------------------------------------------ */

struct addr_cache;
static void addr_cache_free(struct addr_cache *cache);

typedef struct {
    PyObject_HEAD
    sqlite3 *db;
    sqlite3_stmt *narrow;
    sqlite3_stmt *record; /* an open event's record, by position */
    /* The events that opened the sockets seen open at snapshots, by position: a log never
     * changes, a socket that lives for minutes is compared at every snapshot, and the
     * connection table reads the same sockets again. A checkpoint can carry them (a hint). */
    struct addr_cache *records;
} RunReader;

static const char NARROW_SQL[] = "SELECT position, kind, sock_id FROM events "
                                 "WHERE position > ?1 AND position <= ?2 ORDER BY position";
static const char NARROW_MONO_SQL[] = "SELECT position, kind, sock_id, mono_ns FROM events "
                                      "WHERE position > ?1 AND position <= ?2 ORDER BY position";

/* Only the events whose wall time is in (low, high] (no lower bound without has_low), as
 * the engine folds a span that is not wholly before its moment, or a window. */
struct wall_filter {
    sqlite3_stmt *stmt; /* NARROW_MONO_SQL */
    struct clock clock;
    int has_low;
    long long low, high;
};

/* Whether the row ``stmt`` is on passes ``filter``: 1, 0, or -2 to decline. */
static int wall_passes(const struct wall_filter *filter, sqlite3_stmt *stmt)
{
    long long wall;
    if (sqlite3_column_type(stmt, 3) != SQLITE_INTEGER ||
        wall_of(&filter->clock, sqlite3_column_int64(stmt, 3), &wall) < 0)
        return -2;
    return wall <= filter->high && (!filter->has_low || wall > filter->low);
}

static const char RECORD_SQL[] =
    "SELECT e.recording_id, e.netns_id, n.inode, e.laddr, e.lport, e.raddr, e.rport, e.kind, "
    "e.mono_ns, e.pid, e.comm_id, e.extra IS NOT NULL "
    "FROM events e LEFT JOIN netns n ON n.id = e.netns_id WHERE e.position = ?1";

static void RunReader_close_db(RunReader *self)
{
    sqlite3_finalize(self->narrow);
    sqlite3_finalize(self->record);
    self->narrow = self->record = NULL;
    addr_cache_free(self->records);
    self->records = NULL;
    if (self->db != NULL) {
        sqlite3_close_v2(self->db);
        self->db = NULL;
    }
}

static int RunReader_init(RunReader *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"path", "busy_timeout_ms", NULL};
    const char *path;
    int busy_timeout_ms;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "si", keywords, &path, &busy_timeout_ms))
        return -1;
    RunReader_close_db(self);
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_busy_timeout(db, busy_timeout_ms);
        rc = sqlite3_prepare_v2(db, NARROW_SQL, -1, &self->narrow, NULL);
    }
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(db, RECORD_SQL, -1, &self->record, NULL);
    if (rc != SQLITE_OK) {
        set_sqlite_error(db, rc);
        sqlite3_finalize(self->narrow);
        sqlite3_finalize(self->record);
        self->narrow = self->record = NULL;
        sqlite3_close_v2(db);
        return -1;
    }
    self->db = db;
    return 0;
}

static void RunReader_dealloc(RunReader *self)
{
    RunReader_close_db(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *RunReader_close(RunReader *self, PyObject *Py_UNUSED(ignored))
{
    RunReader_close_db(self);
    Py_RETURN_NONE;
}

/* Read the run after ``after`` (up to ``upto`` or the first snapshot) into ``run``, only the
 * rows that pass ``filter`` if there is one; *last_read is the last position read, passed or
 * not. Returns 1 if it ended at a snapshot (its position in *snapshot), 0 if not, -1 on error
 * (set), -2 if a row holds a value of a type the fold does not expect (nothing set). */
static int read_run(RunReader *self, struct run *run, long long after, long long upto,
                    PyObject *sockets, const struct wall_filter *filter, long long *snapshot,
                    long long *last_read)
{
    sqlite3_stmt *stmt = filter != NULL ? filter->stmt : self->narrow;
    *last_read = after;
    int rc = sqlite3_bind_int64(stmt, 1, after);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(stmt, 2, upto);
    if (rc != SQLITE_OK) {
        set_sqlite_error(self->db, rc);
        return -1;
    }
    int outcome = 0;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        struct narrow_row row;
        if (read_row(stmt, &row) < 0) {
            outcome = -2;
            break;
        }
        *last_read = row.position;
        int passes = filter != NULL ? wall_passes(filter, stmt) : 1;
        if (passes < 0) {
            outcome = -2;
            break;
        }
        if (!passes)
            continue;
        if (row.kind == KIND_SNAPSHOT) {
            *snapshot = row.position;
            outcome = 1;
            break;
        }
        if (run_append(run, &row) < 0 || run_note(run, &row, sockets) < 0) {
            outcome = -1;
            break;
        }
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        set_sqlite_error(self->db, rc);
        outcome = -1;
    }
    sqlite3_reset(stmt);
    return outcome;
}

static int append_new(PyObject *list, PyObject *item)
{
    if (item == NULL)
        return -1;
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc;
}

static PyObject *rows_list(const struct run *run)
{
    PyObject *rows = PyList_New(0);
    for (Py_ssize_t i = 0; rows != NULL && i < run->count; i++) {
        const struct narrow_row *row = &run->rows[i];
        PyObject *item = row->has_sock ? Py_BuildValue("(LiL)", row->position, row->kind, row->sock)
                                       : Py_BuildValue("(LiO)", row->position, row->kind, Py_None);
        if (append_new(rows, item) < 0)
            Py_CLEAR(rows);
    }
    return rows;
}

/* What the run leaves for Python: pairs and failed (when retaining), leftover closes in log
 * order, looked-up events in log order, and the sockets still open at its end. */
static PyObject *run_outcome(const struct run *run, int retain)
{
    PyObject *pairs = PyList_New(0), *failed = PyList_New(0), *leftover = PyList_New(0);
    PyObject *others = PyList_New(0), *opens = PyDict_New();
    PyObject *result = NULL;
    if (pairs == NULL || failed == NULL || leftover == NULL || others == NULL || opens == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < run->count; i++) {
        const struct narrow_row *row = &run->rows[i];
        /* Every keyed open and close is in the map (run_note put it there). */
        int keyed = row->has_sock && (row->kind == KIND_CONNECT || row->kind == KIND_ACCEPT ||
                                      row->kind == KIND_CLOSE);
        const struct sock_slot *slot =
            keyed ? sock_map_probe(run->sockets.slots, run->sockets.mask, row->sock) : NULL;
        int rc = 0;
        switch (row->kind) {
        case KIND_CONNECT:
        case KIND_ACCEPT:
            if (!slot->closed) {
                PyObject *sock = PyLong_FromLongLong(row->sock);
                PyObject *position = PyLong_FromLongLong(row->position);
                rc = sock && position ? PyDict_SetItem(opens, sock, position) : -1;
                Py_XDECREF(sock);
                Py_XDECREF(position);
            }
            break;
        case KIND_CLOSE:
            if (slot != NULL && slot->opened) {
                if (retain)
                    rc = append_new(pairs, Py_BuildValue("(LL)", slot->open_pos, row->position));
            } else if (slot != NULL) {
                rc = append_new(leftover, Py_BuildValue("(LL)", row->position, row->sock));
            } else {
                rc = append_new(leftover, Py_BuildValue("(LO)", row->position, Py_None));
            }
            break;
        case KIND_CONNECT_FAILED:
            if (retain)
                rc = append_new(failed, PyLong_FromLongLong(row->position));
            break;
        case KIND_EXEC:
        case KIND_EXIT:
        case KIND_CT_NEW:
        case KIND_CT_UPDATE:
        case KIND_CT_DESTROY:
            rc = append_new(others, Py_BuildValue("(Li)", row->position, row->kind));
            break;
        default:
            break;
        }
        if (rc < 0)
            goto done;
    }
    result = Py_BuildValue("(OOOOO)", pairs, failed, leftover, others, opens);
done:
    Py_XDECREF(pairs);
    Py_XDECREF(failed);
    Py_XDECREF(leftover);
    Py_XDECREF(others);
    Py_XDECREF(opens);
    return result;
}

PyDoc_STRVAR(fold_run_doc,
             "fold_run(after, upto, sockets, retain[, segments, low, high]) -> tuple | None\n\n"
             "Read the events after ``after`` up to ``upto`` or the first snapshot among them,\n"
             "whichever comes first, and cancel the sockets that open and close among them.\n"
             "``sockets`` is the state's open sockets (socket id -> open position), read only.\n"
             "With ``segments`` (the recording's ClockModel.segments()), only the events whose\n"
             "wall time is in (low, high] are folded (``low`` None: no lower bound).\n"
             "Returns (count, last, snapshot, rows, fast, folded_last): ``count`` events folded\n"
             "(the snapshot not counted), ``last`` the last position read (the snapshot's, if\n"
             "one ended the run), ``snapshot`` its position or None. ``rows`` is the run's\n"
             "(position, kind, sock_id) rows when _apply_each must fold it (``fast`` is then\n"
             "None), else None and ``fast`` is (pairs, failed, leftover, others, opens) as\n"
             "_apply_fast computes them. ``folded_last`` is the last position folded, or None.\n"
             "None when a row holds a value of a type the fold does not expect, or the clock\n"
             "has no segments.");

static PyObject *RunReader_fold_run(RunReader *self, PyObject *args)
{
    long long after, upto;
    PyObject *sockets, *segments = Py_None, *low = Py_None, *high = Py_None;
    int retain;
    if (!PyArg_ParseTuple(args, "LLO!p|OOO", &after, &upto, &PyDict_Type, &sockets, &retain,
                          &segments, &low, &high))
        return NULL;
    if (self->db == NULL)
        return PyErr_Format(sqlite_error, "the reader is closed");
    struct wall_filter filter = {0}, *filtering = NULL;
    if (segments == Py_None && (low != Py_None || high != Py_None))
        return PyErr_Format(PyExc_TypeError, "wall bounds need the clock's segments");
    if (segments != Py_None) {
        int rc = clock_read(&filter.clock, segments);
        if (rc == 0 && ((low != Py_None && exact_long(low, &filter.low) < 0) ||
                        exact_long(high, &filter.high) < 0))
            rc = -2;
        if (rc == 0) {
            rc = sqlite3_prepare_v2(self->db, NARROW_MONO_SQL, -1, &filter.stmt, NULL);
            if (rc == SQLITE_OK)
                rc = 0;
            else
                rc = (set_sqlite_error(self->db, rc), -1);
        }
        if (rc < 0) {
            clock_free(&filter.clock);
            return rc == -2 ? Py_NewRef(Py_None) : NULL;
        }
        filter.has_low = low != Py_None;
        filtering = &filter;
    }
    struct run run = {0};
    long long snapshot = 0, last = after;
    int ended = read_run(self, &run, after, upto, sockets, filtering, &snapshot, &last);
    PyObject *result = NULL;
    if (ended == -2) {
        result = Py_NewRef(Py_None);
    } else if (ended >= 0) {
        PyObject *snapshot_value = ended ? PyLong_FromLongLong(snapshot) : Py_NewRef(Py_None);
        PyObject *folded_last = ended       ? PyLong_FromLongLong(snapshot)
                                : run.count ? PyLong_FromLongLong(run.rows[run.count - 1].position)
                                            : Py_NewRef(Py_None);
        PyObject *rows = run.unusual ? rows_list(&run) : Py_NewRef(Py_None);
        PyObject *fast = run.unusual ? Py_NewRef(Py_None) : run_outcome(&run, retain);
        if (snapshot_value && folded_last && rows && fast)
            result = Py_BuildValue("(nLOOOO)", run.count, last, snapshot_value, rows, fast,
                                   folded_last);
        Py_XDECREF(snapshot_value);
        Py_XDECREF(folded_last);
        Py_XDECREF(rows);
        Py_XDECREF(fast);
    }
    run_free(&run);
    sqlite3_finalize(filter.stmt);
    clock_free(&filter.clock);
    return result;
}

static PyObject *RunReader_reconcile_snapshot(RunReader *self, PyObject *args);
PyDoc_STRVAR(reconcile_snapshot_doc,
             "reconcile_snapshot(position, recording, open_states, listen_state, sockets,\n"
             "                   snapshot_sockets, namespaces) -> tuple | None\n\n"
             "reconcile_sockets over the connections the snapshot at ``position`` stored, read\n"
             "from the log: rows in ``open_states`` (a set of TCP states) are open, rows in\n"
             "``listen_state`` are left out, the others are closing. The open sockets'\n"
             "addresses come from their open events in the log (kept between calls). None if a\n"
             "row holds a value of a type the log does not write.");

static PyObject *RunReader_reconcile_processes(RunReader *self, PyObject *args);
PyDoc_STRVAR(reconcile_processes_doc,
             "reconcile_processes(position, recording, processes) -> bool\n\n"
             "What Fold._apply_snapshot does to ``processes`` ((recording, pid) -> position)\n"
             "with the snapshot at ``position``: this recording's processes it lacks are\n"
             "removed, every one it holds is set to ``position``. False, with nothing changed,\n"
             "if a pid or a key is not an int.");

static PyObject *RunReader_socket_views(RunReader *self, PyObject *args);
static PyObject *RunReader_socket_hint(RunReader *self, PyObject *args);
PyDoc_STRVAR(socket_hint_doc,
             "socket_hint(positions) -> bytes | None\n\n"
             "The records of the open events at ``positions`` (from the cache, or read from the\n"
             "log and cached), encoded for a checkpoint; None if one is not an event of the\n"
             "types the log writes. load_hint of the bytes, on a reader of the same log, spares\n"
             "a later seek from reading them again.");
static PyObject *RunReader_load_hint(RunReader *self, PyObject *args);
PyDoc_STRVAR(load_hint_doc,
             "load_hint(data) -> int\n\n"
             "Cache the records socket_hint encoded; returns how many. ValueError (and nothing\n"
             "cached) if ``data`` is not such an encoding.");
PyDoc_STRVAR(socket_views_doc,
             "socket_views(opens, pairs, start_ns, at_ns, clocks, hosts, comms, namespaces,\n"
             "             view_type, field_names, decode_extra, plain=False) -> tuple | None\n\n"
             "The sockets replay.connections.sockets_in_window makes from events: one view per\n"
             "open event in ``opens`` (positions), and one per (open, close) pair in ``pairs``\n"
             "whose close's wall time is in (start_ns, at_ns], closed by it. Returns (open views,\n"
             "pair views), each made by calling ``view_type`` positionally (``field_names`` must\n"
             "be SocketView's fields, in order), or with ``plain`` (the caller's word that it is\n"
             "a dataclass with slots whose __init__ only sets them) by setting its slots. The\n"
             "events are read from the log in position ranges, open events the reader has a\n"
             "record of (a reconciliation's, or a checkpoint's hint) from there. ``clocks`` maps a recording to its clock's\n"
             "(mono_ns, offset_ns) segments, ``hosts`` to its host id; ``comms`` and\n"
             "``namespaces`` are the log's dictionaries, ``decode_extra`` turns an event's extra\n"
             "column into a dict. None when an event is missing, a value has a type the loop\n"
             "does not expect, or a dictionary or clock lacks what a row needs.");

static PyMethodDef RunReader_methods[] = {
    {"socket_views", (PyCFunction)RunReader_socket_views, METH_VARARGS, socket_views_doc},
    {"socket_hint", (PyCFunction)RunReader_socket_hint, METH_VARARGS, socket_hint_doc},
    {"load_hint", (PyCFunction)RunReader_load_hint, METH_VARARGS, load_hint_doc},
    {"reconcile_processes", (PyCFunction)RunReader_reconcile_processes, METH_VARARGS,
     reconcile_processes_doc},
    {"fold_run", (PyCFunction)RunReader_fold_run, METH_VARARGS, fold_run_doc},
    {"reconcile_snapshot", (PyCFunction)RunReader_reconcile_snapshot, METH_VARARGS,
     reconcile_snapshot_doc},
    {"close", (PyCFunction)RunReader_close, METH_NOARGS, PyDoc_STR("Close the connection.")},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RunReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "replay._fold.RunReader",
    .tp_doc = PyDoc_STR("RunReader(path, busy_timeout_ms): a read-only connection to a SQLite\n"
                        "log that folds runs of events (see fold_run)."),
    .tp_basicsize = sizeof(RunReader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)RunReader_init,
    .tp_dealloc = (destructor)RunReader_dealloc,
    .tp_methods = RunReader_methods,
};

/* -- snapshot reconciliation ---------------------------------------------------------------- */

/* A socket's addresses, (recording, netns, laddr, lport, raddr, rport), copied from its tuple
 * or its snapshot row. ``tuple`` and ``netns_value`` are borrowed from a tuple that stays
 * alive for the whole call (NULL for a key read from a row). */
enum { ADDR_MAX = 16 };

struct addr_key {
    long long recording, netns, lport, rport;
    unsigned char laddr[ADDR_MAX], raddr[ADDR_MAX];
    Py_ssize_t laddr_len, raddr_len;
    uint64_t hash;
    PyObject *tuple, *netns_value;
};

enum { IN_EVENTS = 1, IN_SNAPSHOT_SOCKETS = 2, PRESENT = 4, REPORTED = 8 };

/* Keys live in one array, found through an index table of array indices + 1 (0: empty). */
struct addr_entry {
    struct addr_key key;
    int flags;
};

struct addr_table {
    struct addr_entry *entries;
    uint32_t *index;
    size_t mask, count, capacity;
};

static uint64_t bytes_hash(const unsigned char *data, Py_ssize_t len, uint64_t seed)
{
    uint64_t h = seed ^ (uint64_t)len;
    for (Py_ssize_t i = 0; i < len; i++)
        h = (h ^ data[i]) * 0x100000001b3ULL;
    return mix64(h);
}

static void key_hash(struct addr_key *key)
{
    uint64_t h = mix64((uint64_t)key->recording * 31 + (uint64_t)key->netns);
    h = mix64(h ^ ((uint64_t)key->lport << 32 | (uint64_t)(key->rport & 0xffffffff)));
    h = bytes_hash(key->laddr, key->laddr_len, h);
    key->hash = bytes_hash(key->raddr, key->raddr_len, h);
}

static int exact_long(PyObject *value, long long *out)
{
    if (!PyLong_CheckExact(value))
        return -1;
    int overflow;
    *out = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow || (*out == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return -1;
    }
    return 0;
}

static int copy_address(const void *data, Py_ssize_t len, unsigned char *out, Py_ssize_t *out_len)
{
    if (len < 0 || len > ADDR_MAX)
        return -1;
    if (len)
        memcpy(out, data, (size_t)len);
    *out_len = len;
    return 0;
}

/* 0, or -1 (nothing set) if ``tuple`` is not a 6-tuple of int, int, bytes, int, bytes, int
 * with addresses of at most ADDR_MAX bytes. */
static int parse_key(PyObject *tuple, struct addr_key *key)
{
    if (!PyTuple_CheckExact(tuple) || PyTuple_GET_SIZE(tuple) != 6)
        return -1;
    PyObject *laddr = PyTuple_GET_ITEM(tuple, 2), *raddr = PyTuple_GET_ITEM(tuple, 4);
    if (exact_long(PyTuple_GET_ITEM(tuple, 0), &key->recording) < 0 ||
        exact_long(PyTuple_GET_ITEM(tuple, 1), &key->netns) < 0 ||
        exact_long(PyTuple_GET_ITEM(tuple, 3), &key->lport) < 0 ||
        exact_long(PyTuple_GET_ITEM(tuple, 5), &key->rport) < 0 || !PyBytes_CheckExact(laddr) ||
        !PyBytes_CheckExact(raddr) ||
        copy_address(PyBytes_AS_STRING(laddr), PyBytes_GET_SIZE(laddr), key->laddr,
                     &key->laddr_len) < 0 ||
        copy_address(PyBytes_AS_STRING(raddr), PyBytes_GET_SIZE(raddr), key->raddr,
                     &key->raddr_len) < 0)
        return -1;
    key->tuple = tuple;
    key->netns_value = PyTuple_GET_ITEM(tuple, 1);
    key_hash(key);
    return 0;
}

/* The columns netns, laddr, lport, raddr, rport of a snapshot row; -1 if one is not of the
 * type the log writes (NOT NULL integers and blobs). */
static int row_key(sqlite3_stmt *stmt, long long recording, struct addr_key *key)
{
    static const int types[] = {SQLITE_INTEGER, SQLITE_BLOB, SQLITE_INTEGER, SQLITE_BLOB,
                                SQLITE_INTEGER, SQLITE_INTEGER};
    for (int column = 0; column < 6; column++)
        if (sqlite3_column_type(stmt, column) != types[column])
            return -1;
    key->recording = recording;
    key->netns = sqlite3_column_int64(stmt, 0);
    key->lport = sqlite3_column_int64(stmt, 2);
    key->rport = sqlite3_column_int64(stmt, 4);
    if (copy_address(sqlite3_column_blob(stmt, 1), sqlite3_column_bytes(stmt, 1), key->laddr,
                     &key->laddr_len) < 0 ||
        copy_address(sqlite3_column_blob(stmt, 3), sqlite3_column_bytes(stmt, 3), key->raddr,
                     &key->raddr_len) < 0)
        return -1;
    key->tuple = key->netns_value = NULL;
    key_hash(key);
    return 0;
}

/* The key as replay.state.TupleKey. */
static PyObject *key_tuple(const struct addr_key *key)
{
    if (key->tuple != NULL)
        return Py_NewRef(key->tuple);
    return Py_BuildValue("(LLy#Ly#L)", key->recording, key->netns, (const char *)key->laddr,
                         key->laddr_len, key->lport, (const char *)key->raddr, key->raddr_len,
                         key->rport);
}

static int same_key(const struct addr_key *a, const struct addr_key *b)
{
    return a->hash == b->hash && a->recording == b->recording && a->netns == b->netns &&
           a->lport == b->lport && a->rport == b->rport && a->laddr_len == b->laddr_len &&
           a->raddr_len == b->raddr_len && !memcmp(a->laddr, b->laddr, (size_t)a->laddr_len) &&
           !memcmp(a->raddr, b->raddr, (size_t)a->raddr_len);
}

static void addr_table_free(struct addr_table *table)
{
    PyMem_Free(table->entries);
    PyMem_Free(table->index);
}

static size_t addr_table_find(const struct addr_table *table, const struct addr_key *key)
{
    size_t at = key->hash & table->mask;
    uint32_t found;
    while ((found = table->index[at]) != 0 && !same_key(&table->entries[found - 1].key, key))
        at = (at + 1) & table->mask;
    return at;
}

/* Room for ``more`` keys: the index stays at most half full. */
static int addr_table_reserve(struct addr_table *table, size_t more)
{
    size_t needed = table->count + more;
    if (needed >= UINT32_MAX / 4) {
        PyErr_NoMemory();
        return -1;
    }
    if (needed > table->capacity) {
        size_t capacity = table->capacity ? table->capacity : 1024;
        while (capacity < needed)
            capacity *= 2;
        struct addr_entry *entries = PyMem_Realloc(table->entries, capacity * sizeof *entries);
        if (entries == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        table->entries = entries;
        table->capacity = capacity;
    }
    if (table->index != NULL && needed * 2 <= table->mask + 1)
        return 0;
    size_t size = 1024;
    while (size < needed * 2)
        size *= 2;
    uint32_t *index = PyMem_Calloc(size, sizeof *index);
    if (index == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    PyMem_Free(table->index);
    table->index = index;
    table->mask = size - 1;
    for (size_t i = 0; i < table->count; i++)
        table->index[addr_table_find(table, &table->entries[i].key)] = (uint32_t)(i + 1);
    return 0;
}

/* The index of the entry of ``key``, added (no flags) if new; room was reserved. */
static size_t addr_table_get(struct addr_table *table, const struct addr_key *key)
{
    size_t at = addr_table_find(table, key);
    if (table->index[at])
        return table->index[at] - 1;
    table->entries[table->count].key = *key;
    table->entries[table->count].flags = 0;
    table->index[at] = (uint32_t)++table->count;
    return table->count - 1;
}

/* Whether the key's namespace was walked by the snapshot (``namespaces`` None: every one
 * was); -1 on error. */
static int walked(PyObject *namespaces, const struct addr_key *key)
{
    if (namespaces == Py_None)
        return 1;
    if (key->netns_value != NULL)
        return PySet_Contains(namespaces, key->netns_value);
    PyObject *netns = PyLong_FromLongLong(key->netns);
    int found = netns ? PySet_Contains(namespaces, netns) : -1;
    Py_XDECREF(netns);
    return found;
}

/* One reconciliation: the state's addresses in a table, then the snapshot's keys. */
struct reconcile {
    struct addr_table table;
    PyObject *sock_keys; /* list: the open sockets' keys, in the order of ``slots`` */
    size_t *slots;       /* their entries */
    Py_ssize_t open_count, reserved_open;
    PyObject *only_here;
};

static void reconcile_free(struct reconcile *r)
{
    addr_table_free(&r->table);
    PyMem_Free(r->slots);
    Py_XDECREF(r->sock_keys);
    Py_XDECREF(r->only_here);
}

/* Make room for the state: ``open_count`` open sockets and the snapshot-only ones. */
static int reconcile_reserve(struct reconcile *r, Py_ssize_t open_count, Py_ssize_t known)
{
    r->slots = PyMem_Calloc((size_t)open_count + 1, sizeof *r->slots);
    r->reserved_open = open_count;
    r->sock_keys = PyList_New(0);
    r->only_here = PyList_New(0);
    if (r->slots == NULL)
        PyErr_NoMemory();
    if (r->slots == NULL || r->sock_keys == NULL || r->only_here == NULL ||
        addr_table_reserve(&r->table, (size_t)(open_count + known)) < 0)
        return -1;
    return 0;
}

/* An open socket of the state, at ``key``. */
static int reconcile_add_open(struct reconcile *r, PyObject *sock_key, const struct addr_key *key)
{
    if (r->open_count >= r->reserved_open) {
        PyErr_SetString(PyExc_RuntimeError, "the open sockets changed during reconciliation");
        return -1;
    }
    if (PyList_Append(r->sock_keys, sock_key) < 0)
        return -1;
    size_t entry = addr_table_get(&r->table, key);
    r->table.entries[entry].flags |= IN_EVENTS;
    r->slots[r->open_count++] = entry;
    return 0;
}

/* The sockets known from snapshots only: 0, or -2 to decline (nothing set). */
static int reconcile_add_snapshot_sockets(struct reconcile *r, PyObject *snapshot_sockets)
{
    struct addr_key key;
    Py_ssize_t pos = 0;
    PyObject *tuple, *value;
    while (PyDict_Next(snapshot_sockets, &pos, &tuple, &value)) {
        if (parse_key(tuple, &key) < 0)
            return -2;
        struct addr_entry *entry = &r->table.entries[addr_table_get(&r->table, &key)];
        entry->flags |= IN_SNAPSHOT_SOCKETS;
        if (entry->key.tuple == NULL) { /* an open socket's key, read from the log */
            entry->key.tuple = tuple;
            entry->key.netns_value = key.netns_value;
        }
    }
    return 0;
}

/* Enter the state, addresses from ``tuples``: 0, -1 on error (set), -2 to decline. */
static int reconcile_start(struct reconcile *r, PyObject *sockets, PyObject *tuples,
                           PyObject *snapshot_sockets)
{
    if (reconcile_reserve(r, PyDict_GET_SIZE(sockets), PyDict_GET_SIZE(snapshot_sockets)) < 0)
        return -1;
    struct addr_key key;
    Py_ssize_t pos = 0;
    PyObject *sock_key, *open_position;
    while (PyDict_Next(sockets, &pos, &sock_key, &open_position)) {
        long long position;
        if (exact_long(open_position, &position) < 0)
            return -2; /* and no lookup that could run Python code mid-walk */
        PyObject *tuple = PyDict_GetItemWithError(tuples, open_position);
        if (tuple == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetObject(PyExc_KeyError, open_position);
            return -1;
        }
        if (parse_key(tuple, &key) < 0)
            return -2;
        if (reconcile_add_open(r, sock_key, &key) < 0)
            return -1;
    }
    return reconcile_add_snapshot_sockets(r, snapshot_sockets);
}

/* -- the record cache ----------------------------------------------------------------------- */

enum { RECORD_NO_PID = 1, RECORD_NO_COMM = 2, RECORD_NO_NETNS = 4, RECORD_EXTRA = 8 };

/* An open event as a reconciliation (its addresses) and the connection table (the rest) read
 * it. ``key.netns`` is the namespace's inode (0 if none); flags (RECORD_*) say which of pid,
 * comm_id and netns_id are NULL, and whether the event has an extra column (the table reads
 * such an event from the log: only the extra says whether it came from /proc). */
struct socket_record {
    struct addr_key key;
    long long kind, mono, pid, comm_id, netns_id, flags;
};

/* Slots are small (the probe is a cache miss per open socket otherwise) and point into a
 * dense array of records kept in the order they were added, which is about the order in
 * which a reconciliation walks the open sockets. */
struct cached_slot {
    int64_t position;
    uint32_t seen;   /* the cache's generation when last used */
    uint32_t record; /* index + 1 into records; 0: an empty slot */
};

struct addr_cache {
    struct cached_slot *slots;
    size_t mask;
    struct socket_record *records;
    int64_t *positions; /* the position of each record */
    size_t count, capacity;
    size_t kept;         /* what the last pruning kept */
    uint32_t generation; /* one per reconciliation */
};

/* Records used by any of the last KEEP_GENERATIONS reconciliations survive a pruning, so
 * that a few recordings whose snapshots interleave (each reconciled on its own) do not evict
 * each other's; few, so that the cache stays small enough to stay in the CPU's caches. */
enum { KEEP_GENERATIONS = 4 };

static void addr_cache_free(struct addr_cache *cache)
{
    if (cache != NULL) {
        PyMem_Free(cache->slots);
        PyMem_Free(cache->records);
        PyMem_Free(cache->positions);
        PyMem_Free(cache);
    }
}

static struct addr_cache *records_of(RunReader *self)
{
    if (self->records == NULL && (self->records = PyMem_Calloc(1, sizeof *self->records)) == NULL)
        PyErr_NoMemory();
    return self->records;
}

static struct cached_slot *addr_cache_probe(struct cached_slot *slots, size_t mask,
                                            int64_t position)
{
    size_t at = mix64((uint64_t)position) & mask;
    while (slots[at].record && slots[at].position != position)
        at = (at + 1) & mask;
    return &slots[at];
}

/* The record of ``position`` if the cache holds it, else NULL; valid until the next insert. */
static const struct socket_record *addr_cache_find(const struct addr_cache *cache,
                                                   int64_t position)
{
    if (cache == NULL || cache->slots == NULL)
        return NULL;
    const struct cached_slot *slot = addr_cache_probe(cache->slots, cache->mask, position);
    return slot->record ? &cache->records[slot->record - 1] : NULL;
}

/* Rebuild with ``size`` slots; if ``prune``, keep only records used by recent
 * reconciliations (in their order). */
static int addr_cache_rehash(struct addr_cache *cache, size_t size, int prune)
{
    struct cached_slot *slots = PyMem_Calloc(size, sizeof *slots);
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    size_t count = 0;
    for (size_t i = 0; i < cache->count; i++) {
        struct cached_slot *old = addr_cache_probe(cache->slots, cache->mask, cache->positions[i]);
        if (prune && cache->generation - old->seen >= KEEP_GENERATIONS)
            continue;
        cache->records[count] = cache->records[i];
        cache->positions[count] = cache->positions[i];
        struct cached_slot *slot = addr_cache_probe(slots, size - 1, cache->positions[i]);
        *slot = *old;
        slot->record = (uint32_t)++count;
    }
    PyMem_Free(cache->slots);
    cache->slots = slots;
    cache->mask = size - 1;
    cache->count = count;
    return 0;
}

/* Room for one more record: the slots at most half full. */
static int addr_cache_reserve(struct addr_cache *cache)
{
    if (cache->count + 1 >= UINT32_MAX / 4) {
        PyErr_NoMemory();
        return -1;
    }
    if (cache->count == cache->capacity) {
        size_t capacity = cache->capacity ? cache->capacity * 2 : 4096;
        struct socket_record *records =
            PyMem_Realloc(cache->records, capacity * sizeof *records);
        if (records != NULL)
            cache->records = records;
        int64_t *positions = records ? PyMem_Realloc(cache->positions, capacity * sizeof *positions)
                                     : NULL;
        if (positions == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        cache->positions = positions;
        cache->capacity = capacity;
    }
    if (cache->slots != NULL && (cache->count + 1) * 2 <= cache->mask + 1)
        return 0;
    return addr_cache_rehash(cache, cache->slots ? (cache->mask + 1) * 2 : 8192, 0);
}

/* The slot of ``position``, reserving room for it: NULL on error (set). The slot is empty
 * (record 0) if the cache lacks it; fill it with addr_cache_fill. */
static struct cached_slot *addr_cache_slot(struct addr_cache *cache, int64_t position)
{
    if (addr_cache_reserve(cache) < 0)
        return NULL;
    struct cached_slot *slot = addr_cache_probe(cache->slots, cache->mask, position);
    slot->seen = cache->generation;
    return slot;
}

/* Take the record just written at records[count] into the empty ``slot``. */
static void addr_cache_fill(struct addr_cache *cache, struct cached_slot *slot, int64_t position)
{
    cache->positions[cache->count] = position;
    slot->position = position;
    slot->record = (uint32_t)++cache->count;
}

/* Drop what recent reconciliations did not use, once that could be most of the cache. */
static int addr_cache_prune(struct addr_cache *cache, size_t live)
{
    size_t floor = live > cache->kept ? live : cache->kept;
    if (cache->count <= floor * 2 + 4096)
        return 0;
    if (addr_cache_rehash(cache, cache->mask + 1, 1) < 0)
        return -1;
    cache->kept = cache->count;
    return 0;
}

/* The open event at ``position`` (RECORD_SQL's row: NULL addresses read as empty, NULL ports
 * and namespace as 0): 0, -1 on error (set), -2 to decline (no such event, or an odd value). */
static int fetch_record(RunReader *self, int64_t position, struct socket_record *record)
{
    sqlite3_stmt *stmt = self->record;
    int rc = sqlite3_bind_int64(stmt, 1, position), outcome = -2;
    if (rc == SQLITE_OK && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        int types[12];
        for (int column = 0; column < 12; column++)
            types[column] = sqlite3_column_type(stmt, column);
        int ok = types[0] == SQLITE_INTEGER &&
                 (types[1] == SQLITE_NULL || types[2] == SQLITE_INTEGER) &&
                 (types[3] == SQLITE_NULL || types[3] == SQLITE_BLOB) &&
                 (types[5] == SQLITE_NULL || types[5] == SQLITE_BLOB) &&
                 (types[4] == SQLITE_NULL || types[4] == SQLITE_INTEGER) &&
                 (types[6] == SQLITE_NULL || types[6] == SQLITE_INTEGER) &&
                 types[7] == SQLITE_INTEGER && types[8] == SQLITE_INTEGER &&
                 (types[9] == SQLITE_NULL || types[9] == SQLITE_INTEGER) &&
                 (types[10] == SQLITE_NULL || types[10] == SQLITE_INTEGER);
        struct addr_key *key = &record->key;
        if (ok) {
            key->recording = sqlite3_column_int64(stmt, 0);
            key->netns = types[1] == SQLITE_NULL ? 0 : sqlite3_column_int64(stmt, 2);
            key->lport = sqlite3_column_int64(stmt, 4); /* NULL reads as 0 */
            key->rport = sqlite3_column_int64(stmt, 6);
            ok = copy_address(sqlite3_column_blob(stmt, 3), sqlite3_column_bytes(stmt, 3),
                              key->laddr, &key->laddr_len) == 0 &&
                 copy_address(sqlite3_column_blob(stmt, 5), sqlite3_column_bytes(stmt, 5),
                              key->raddr, &key->raddr_len) == 0;
        }
        if (ok) {
            key->tuple = key->netns_value = NULL;
            key_hash(key);
            record->netns_id = sqlite3_column_int64(stmt, 1);
            record->kind = sqlite3_column_int64(stmt, 7);
            record->mono = sqlite3_column_int64(stmt, 8);
            record->pid = sqlite3_column_int64(stmt, 9);
            record->comm_id = sqlite3_column_int64(stmt, 10);
            record->flags = (types[9] == SQLITE_NULL ? RECORD_NO_PID : 0) |
                            (types[10] == SQLITE_NULL ? RECORD_NO_COMM : 0) |
                            (types[1] == SQLITE_NULL ? RECORD_NO_NETNS : 0) |
                            (sqlite3_column_int64(stmt, 11) ? RECORD_EXTRA : 0);
            outcome = 0;
        }
        rc = SQLITE_DONE;
    }
    if (rc != SQLITE_DONE) {
        set_sqlite_error(self->db, rc);
        outcome = -1;
    }
    sqlite3_reset(stmt);
    return outcome;
}

/* The record of the event at ``position``, from the cache or the log (then cached); see
 * fetch_record. ``*record`` stays valid until the next call. */
static int cached_record(RunReader *self, int64_t position, const struct socket_record **record)
{
    struct addr_cache *cache = records_of(self);
    struct cached_slot *slot = cache ? addr_cache_slot(cache, position) : NULL;
    if (slot == NULL)
        return -1;
    if (!slot->record) {
        int rc = fetch_record(self, position, &cache->records[cache->count]);
        if (rc < 0)
            return rc;
        addr_cache_fill(cache, slot, position);
    }
    *record = &cache->records[slot->record - 1];
    return 0;
}

/* Enter the state, addresses from the log: 0, -1 on error (set), -2 to decline. */
static int reconcile_start_cached(struct reconcile *r, RunReader *self, PyObject *sockets,
                                  PyObject *snapshot_sockets)
{
    struct addr_cache *cache = records_of(self);
    if (cache == NULL)
        return -1;
    cache->generation++;
    if (reconcile_reserve(r, PyDict_GET_SIZE(sockets), PyDict_GET_SIZE(snapshot_sockets)) < 0)
        return -1;
    Py_ssize_t pos = 0;
    PyObject *sock_key, *open_position;
    while (PyDict_Next(sockets, &pos, &sock_key, &open_position)) {
        long long position;
        const struct socket_record *record;
        if (exact_long(open_position, &position) < 0)
            return -2;
        int rc = cached_record(self, position, &record);
        if (rc < 0)
            return rc;
        if (reconcile_add_open(r, sock_key, &record->key) < 0)
            return -1;
    }
    if (addr_cache_prune(cache, (size_t)PyDict_GET_SIZE(sockets)) < 0)
        return -1;
    return reconcile_add_snapshot_sockets(r, snapshot_sockets);
}

/* A key the snapshot holds, open or closing: -1 on error. */
static int reconcile_note(struct reconcile *r, const struct addr_key *key, int is_open)
{
    if (addr_table_reserve(&r->table, 1) < 0)
        return -1;
    struct addr_entry *entry = &r->table.entries[addr_table_get(&r->table, key)];
    entry->flags |= PRESENT;
    if (!is_open || (entry->flags & (IN_EVENTS | IN_SNAPSHOT_SOCKETS | REPORTED)))
        return 0;
    entry->flags |= REPORTED;
    PyObject *tuple = key_tuple(key);
    if (tuple == NULL)
        return -1;
    int rc = PyList_Append(r->only_here, tuple);
    Py_DECREF(tuple);
    return rc;
}

/* (lost, gone, only_here) once every snapshot key was noted. */
static PyObject *reconcile_finish(struct reconcile *r, long long recording, PyObject *namespaces);

/* The answer for ``outcome`` (0: every key noted, -2: declined, -1: error set); frees ``r``. */
static PyObject *reconcile_end(struct reconcile *r, int outcome, long long recording,
                               PyObject *namespaces)
{
    PyObject *result = NULL;
    if (outcome == 0)
        result = reconcile_finish(r, recording, namespaces);
    else if (outcome == -2)
        result = Py_NewRef(Py_None);
    reconcile_free(r);
    return result;
}

static PyObject *reconcile_finish(struct reconcile *r, long long recording, PyObject *namespaces)
{
    PyObject *lost = PyList_New(0), *gone = PyList_New(0), *result = NULL;
    if (lost == NULL || gone == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < r->open_count; i++) {
        const struct addr_entry *entry = &r->table.entries[r->slots[i]];
        if (entry->flags & PRESENT)
            continue;
        int here = walked(namespaces, &entry->key);
        if (here < 0 || (here && PyList_Append(lost, PyList_GET_ITEM(r->sock_keys, i)) < 0))
            goto done;
    }
    for (size_t i = 0; i < r->table.count; i++) {
        const struct addr_entry *entry = &r->table.entries[i];
        if ((entry->flags & (IN_SNAPSHOT_SOCKETS | PRESENT)) != IN_SNAPSHOT_SOCKETS ||
            entry->key.recording != recording)
            continue;
        int here = walked(namespaces, &entry->key);
        if (here < 0 || (here && PyList_Append(gone, entry->key.tuple) < 0))
            goto done;
    }
    result = Py_BuildValue("(OOO)", lost, gone, r->only_here);
done:
    Py_XDECREF(lost);
    Py_XDECREF(gone);
    return result;
}

/* ``namespaces`` must be None or a set of ints: membership tests then run no Python code
 * while the table holds borrowed keys. */
static int check_namespaces(PyObject *namespaces)
{
    if (namespaces == Py_None)
        return 0;
    if (!PyAnySet_Check(namespaces)) {
        PyErr_SetString(PyExc_TypeError, "namespaces must be a set or None");
        return -1;
    }
    Py_ssize_t pos = 0;
    PyObject *member;
    Py_hash_t hash;
    while (_PySet_NextEntry(namespaces, &pos, &member, &hash)) {
        if (!PyLong_CheckExact(member)) {
            PyErr_SetString(PyExc_TypeError, "namespaces must hold ints");
            return -1;
        }
    }
    return 0;
}

PyDoc_STRVAR(reconcile_sockets_doc,
             "reconcile_sockets(opened, closing, sockets, tuples, snapshot_sockets, recording,\n"
             "                  namespaces) -> (lost, gone, only_here) | None\n\n"
             "The socket set algebra of Fold._apply_snapshot. ``opened`` and ``closing``: the\n"
             "snapshot's address keys; ``sockets``: the recording's open sockets (key -> open\n"
             "position); ``tuples``: addresses by open position (covering every one of them);\n"
             "``snapshot_sockets``: sockets known from snapshots only; ``namespaces``: the set\n"
             "of namespaces the snapshot walked, or None for all. ``lost``: keys of sockets whose\n"
             "addresses the snapshot lacks (in walked namespaces); ``gone``: snapshot-only\n"
             "sockets of this recording it lacks; ``only_here``: addresses it holds open that\n"
             "neither knows. Unordered; None if a key is not a 6-tuple of ints and bytes.");

static PyObject *reconcile_sockets(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *opened, *closing, *sockets, *tuples, *snapshot_sockets, *namespaces;
    long long recording;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!LO", &PyList_Type, &opened, &PyList_Type, &closing,
                          &PyDict_Type, &sockets, &PyDict_Type, &tuples, &PyDict_Type,
                          &snapshot_sockets, &recording, &namespaces) ||
        check_namespaces(namespaces) < 0)
        return NULL;
    struct reconcile r = {0};
    int rc = reconcile_start(&r, sockets, tuples, snapshot_sockets);
    struct addr_key key;
    for (int is_open = 0; rc == 0 && is_open < 2; is_open++) {
        PyObject *keys = is_open ? opened : closing;
        for (Py_ssize_t i = 0; rc == 0 && i < PyList_GET_SIZE(keys); i++)
            rc = parse_key(PyList_GET_ITEM(keys, i), &key) < 0 ? -2
                                                               : reconcile_note(&r, &key, is_open);
    }
    return reconcile_end(&r, rc, recording, namespaces);
}

/* One read transaction around many short statements: in autocommit mode each statement would
 * take and drop the file's shared lock (and read the WAL index) itself, which costs more than
 * a row lookup. Returns 1 if it began one, 0 if one was open already, -1 on error (set). */
static int begin_read(RunReader *self)
{
    if (!sqlite3_get_autocommit(self->db))
        return 0;
    int rc = sqlite3_exec(self->db, "BEGIN", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        set_sqlite_error(self->db, rc);
        return -1;
    }
    return 1;
}

static void end_read(RunReader *self, int began)
{
    /* Read only: nothing to lose, but the transaction must not stay open (it would pin the
     * log's state as of its start for every later read). */
    if (began > 0 && !sqlite3_get_autocommit(self->db) &&
        sqlite3_exec(self->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        sqlite3_exec(self->db, "ROLLBACK", NULL, NULL, NULL);
}

static const char SNAPSHOT_SQL[] = "SELECT netns, laddr, lport, raddr, rport, state "
                                   "FROM snapshot_connections WHERE position = ?1";

static PyObject *RunReader_reconcile_snapshot(RunReader *self, PyObject *args)
{
    long long position, recording;
    int listen_state;
    PyObject *open_states, *sockets, *snapshot_sockets, *namespaces;
    if (!PyArg_ParseTuple(args, "LLOiO!O!O", &position, &recording, &open_states, &listen_state,
                          &PyDict_Type, &sockets, &PyDict_Type, &snapshot_sockets, &namespaces) ||
        check_namespaces(namespaces) < 0)
        return NULL;
    if (!PyAnySet_Check(open_states))
        return PyErr_Format(PyExc_TypeError, "open_states must be a set");
    if (self->db == NULL)
        return PyErr_Format(sqlite_error, "the reader is closed");
    uint64_t open_mask = 0; /* TCP states are 1..12 */
    for (int state = 0; state < 64; state++) {
        PyObject *value = PyLong_FromLong(state);
        int member = value ? PySet_Contains(open_states, value) : -1;
        Py_XDECREF(value);
        if (member < 0)
            return NULL;
        open_mask |= (uint64_t)member << state;
    }
    sqlite3_stmt *stmt = NULL;
    int rc = sqlite3_prepare_v2(self->db, SNAPSHOT_SQL, -1, &stmt, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(stmt, 1, position);
    if (rc != SQLITE_OK) {
        sqlite3_finalize(stmt);
        return set_sqlite_error(self->db, rc);
    }
    int began = begin_read(self);
    if (began < 0) {
        sqlite3_finalize(stmt);
        return NULL;
    }
    struct reconcile r = {0};
    int outcome = reconcile_start_cached(&r, self, sockets, snapshot_sockets);
    struct addr_key key;
    while (outcome == 0 && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        if (row_key(stmt, recording, &key) < 0) {
            outcome = -2;
            break;
        }
        sqlite3_int64 state = sqlite3_column_int64(stmt, 5);
        if (state == listen_state)
            continue;
        int is_open = state >= 0 && state < 64 && ((open_mask >> state) & 1);
        outcome = reconcile_note(&r, &key, is_open);
    }
    if (outcome == 0 && rc != SQLITE_DONE) {
        set_sqlite_error(self->db, rc);
        outcome = -1;
    }
    sqlite3_finalize(stmt);
    end_read(self, began);
    return reconcile_end(&r, outcome, recording, namespaces);
}

/* -- the connection table's sockets --------------------------------------------------------- */

/* The events at positions in [?1, ?2]: a table's events are read in ranges (a step to the next
 * row costs a fraction of a lookup, and a window's pairs are most of its events). */
static const char SOCKET_SQL[] =
    "SELECT position, recording_id, kind, mono_ns, pid, comm_id, netns_id, laddr, lport, "
    "raddr, rport, bytes_sent, bytes_received, extra FROM events "
    "WHERE position >= ?1 AND position <= ?2 ORDER BY position";

/* Needed positions at most this far apart are read in one range (rows between them are
 * stepped over); further apart, each range starts with a lookup of its own. */
enum { RANGE_GAP = 8 };

/* SocketView's fields, in the order its constructor takes them. */
static const char *const VIEW_FIELDS[] = {
    "recording_id", "host_id", "role", "pid", "comm", "netns", "laddr", "lport", "raddr",
    "rport", "opened_ns", "closed_ns", "source", "origin", "positions", "nat", "known_ns",
    "close_event_ns", "missing_ns", "close_note", "bytes_sent", "bytes_received",
};
enum {
    VIEW_RECORDING_ID, VIEW_HOST_ID, VIEW_ROLE, VIEW_PID, VIEW_COMM, VIEW_NETNS, VIEW_LADDR,
    VIEW_LPORT, VIEW_RADDR, VIEW_RPORT, VIEW_OPENED_NS, VIEW_CLOSED_NS, VIEW_SOURCE,
    VIEW_ORIGIN, VIEW_POSITIONS, VIEW_NAT, VIEW_KNOWN_NS, VIEW_CLOSE_EVENT_NS, VIEW_MISSING_NS,
    VIEW_CLOSE_NOTE, VIEW_BYTES_SENT, VIEW_BYTES_RECEIVED, VIEW_FIELD_COUNT
};


/* What one call of socket_views reads with. */
struct view_reader {
    RunReader *self;
    sqlite3_stmt *stmt;
    PyObject *clocks, *hosts, *comms, *namespaces, *view_type, *decode_extra;
    PyObject *client, *server, *events, *proc, *unknown_host, *source_key, *empty, *zero;
    struct clock *clock_list;
    Py_ssize_t clock_count;
    struct plain_type plain; /* the view type's slots, if the caller says it is plain */
};

/* An event row, decoded as LogReader._decode_page and _Materializer.from_event read it. */
struct socket_event {
    long long position, recording, kind, wall;
    PyObject *pid, *comm, *netns, *laddr, *lport, *raddr, *rport, *bytes_sent, *bytes_received;
    int from_proc;
};

static void socket_event_clear(struct socket_event *event)
{
    Py_CLEAR(event->pid);
    Py_CLEAR(event->laddr);
    Py_CLEAR(event->lport);
    Py_CLEAR(event->raddr);
    Py_CLEAR(event->rport);
    Py_CLEAR(event->bytes_sent);
    Py_CLEAR(event->bytes_received);
    Py_CLEAR(event->comm);
    Py_CLEAR(event->netns);
}

/* The clock of ``recording``, converted from ``clocks`` on first use: NULL with an error
 * set, or NULL without one to decline (no clock, or an odd one). */
static const struct clock *clock_of(struct view_reader *reader, long long recording)
{
    for (Py_ssize_t i = 0; i < reader->clock_count; i++)
        if (reader->clock_list[i].recording == recording)
            return &reader->clock_list[i];
    PyObject *key = PyLong_FromLongLong(recording);
    if (key == NULL)
        return NULL;
    PyObject *segments = PyDict_GetItemWithError(reader->clocks, key);
    Py_DECREF(key);
    if (segments == NULL)
        return NULL;
    struct clock *list = PyMem_Realloc(reader->clock_list,
                                       (size_t)(reader->clock_count + 1) * sizeof *list);
    if (list == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    reader->clock_list = list;
    struct clock *clock = &list[reader->clock_count];
    if (clock_read(clock, segments) < 0)
        return NULL;
    clock->recording = recording;
    reader->clock_count++;
    return clock;
}

/* An INTEGER column as an int, NULL as ``null`` (new references); NULL on error or on a
 * value of another type (then *odd is set). */
static PyObject *int_column(sqlite3_stmt *stmt, int column, PyObject *null, int *odd)
{
    switch (sqlite3_column_type(stmt, column)) {
    case SQLITE_INTEGER:
        return PyLong_FromLongLong(sqlite3_column_int64(stmt, column));
    case SQLITE_NULL:
        return Py_NewRef(null);
    default:
        *odd = 1;
        return NULL;
    }
}

static PyObject *blob_column(sqlite3_stmt *stmt, int column, PyObject *empty, int *odd)
{
    switch (sqlite3_column_type(stmt, column)) {
    case SQLITE_BLOB: {
        int size = sqlite3_column_bytes(stmt, column);
        return PyBytes_FromStringAndSize(sqlite3_column_blob(stmt, column), size);
    }
    case SQLITE_NULL:
        return Py_NewRef(empty);
    default:
        *odd = 1;
        return NULL;
    }
}

/* A dictionary's value for an id, or for None if ``is_null`` (a new reference: the
 * dictionary is the caller's); NULL to decline (set *odd) or on error. */
static PyObject *dictionary_get(PyObject *dictionary, long long id, int is_null, int *odd)
{
    PyObject *key = is_null ? Py_NewRef(Py_None) : PyLong_FromLongLong(id);
    if (key == NULL)
        return NULL;
    PyObject *value = PyDict_GetItemWithError(dictionary, key);
    Py_DECREF(key);
    if (value == NULL && !PyErr_Occurred())
        *odd = 1; /* not in the dictionary the caller read: the Python path reloads it */
    return Py_XNewRef(value);
}

/* dictionary_get for an INTEGER or NULL id column. */
static PyObject *dictionary_value(sqlite3_stmt *stmt, int column, PyObject *dictionary, int *odd)
{
    switch (sqlite3_column_type(stmt, column)) {
    case SQLITE_INTEGER:
        return dictionary_get(dictionary, sqlite3_column_int64(stmt, column), 0, odd);
    case SQLITE_NULL:
        return dictionary_get(dictionary, 0, 1, odd);
    default:
        *odd = 1;
        return NULL;
    }
}

/* Whether the extra column says the event came from /proc: 1, 0, -1 on error, -2 to
 * decline. */
static int from_proc(struct view_reader *reader, sqlite3_stmt *stmt, int column)
{
    int type = sqlite3_column_type(stmt, column);
    if (type == SQLITE_NULL)
        return 0;
    if (type != SQLITE_TEXT)
        return -2;
    PyObject *text = PyUnicode_FromStringAndSize((const char *)sqlite3_column_text(stmt, column),
                                                 sqlite3_column_bytes(stmt, column));
    PyObject *extra = text ? PyObject_CallOneArg(reader->decode_extra, text) : NULL;
    Py_XDECREF(text);
    if (extra == NULL)
        return -1;
    int outcome = 0;
    if (PyDict_Check(extra)) {
        PyObject *source = PyDict_GetItemWithError(extra, reader->source_key);
        outcome = source ? PyObject_RichCompareBool(source, reader->proc, Py_EQ)
                         : (PyErr_Occurred() ? -1 : 0);
    } else if (extra != Py_None) {
        outcome = -2;
    }
    Py_DECREF(extra);
    return outcome;
}

/* The event on the row ``stmt`` is on (SOCKET_SQL's): 0, -1 on error (set), -2 to decline
 * (a value of a type the log does not write, or no clock to convert its time). */
static int decode_socket_event(struct view_reader *reader, sqlite3_stmt *stmt,
                               struct socket_event *event)
{
    int odd = 0;
    const struct clock *clock = NULL;
    if (sqlite3_column_type(stmt, 1) == SQLITE_INTEGER &&
        sqlite3_column_type(stmt, 2) == SQLITE_INTEGER &&
        sqlite3_column_type(stmt, 3) == SQLITE_INTEGER) {
        event->position = sqlite3_column_int64(stmt, 0);
        event->recording = sqlite3_column_int64(stmt, 1);
        event->kind = sqlite3_column_int64(stmt, 2);
        clock = clock_of(reader, event->recording);
    }
    if (clock == NULL)
        return PyErr_Occurred() ? -1 : -2;
    int outcome = wall_of(clock, sqlite3_column_int64(stmt, 3), &event->wall);
    if (outcome < 0)
        return outcome;
    event->pid = int_column(stmt, 4, Py_None, &odd);
    event->comm = event->pid ? dictionary_value(stmt, 5, reader->comms, &odd) : NULL;
    event->netns = event->comm ? dictionary_value(stmt, 6, reader->namespaces, &odd) : NULL;
    event->laddr = event->netns ? blob_column(stmt, 7, reader->empty, &odd) : NULL;
    event->lport = event->laddr ? int_column(stmt, 8, reader->zero, &odd) : NULL;
    event->raddr = event->lport ? blob_column(stmt, 9, reader->empty, &odd) : NULL;
    event->rport = event->raddr ? int_column(stmt, 10, reader->zero, &odd) : NULL;
    event->bytes_sent = event->rport ? int_column(stmt, 11, Py_None, &odd) : NULL;
    event->bytes_received = event->bytes_sent ? int_column(stmt, 12, Py_None, &odd) : NULL;
    if (event->bytes_received == NULL)
        return odd && !PyErr_Occurred() ? -2 : -1;
    event->from_proc = from_proc(reader, stmt, 13);
    return event->from_proc < 0 ? event->from_proc : 0;
}

/* The events at some positions, read for one call. */
struct event_batch {
    int64_t *positions; /* sorted, unique */
    struct socket_event *events;
    signed char *outcomes; /* of decode_socket_event; -2 also for a position without an event */
    size_t count, capacity;
};

static void event_batch_free(struct event_batch *batch)
{
    for (size_t i = 0; batch->events != NULL && i < batch->count; i++)
        socket_event_clear(&batch->events[i]);
    PyMem_Free(batch->positions);
    PyMem_Free(batch->events);
    PyMem_Free(batch->outcomes);
}

static int event_batch_add(struct event_batch *batch, int64_t position)
{
    if (batch->count == batch->capacity) {
        size_t capacity = batch->capacity ? batch->capacity * 2 : 1024;
        int64_t *positions = PyMem_Realloc(batch->positions, capacity * sizeof *positions);
        if (positions == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        batch->positions = positions;
        batch->capacity = capacity;
    }
    batch->positions[batch->count++] = position;
    return 0;
}

/* Sort and deduplicate the positions added, then read their events in ranges: 0, -1 on
 * error (set). An event that cannot be read is only declined (-2) where it is used. */
static int event_batch_read(struct view_reader *reader, struct event_batch *batch)
{
    if (batch->count > 1)
        qsort(batch->positions, batch->count, sizeof *batch->positions, compare_positions);
    size_t unique = 0;
    for (size_t i = 0; i < batch->count; i++)
        if (!unique || batch->positions[i] != batch->positions[unique - 1])
            batch->positions[unique++] = batch->positions[i];
    batch->count = unique;
    batch->events = PyMem_Calloc(unique + 1, sizeof *batch->events);
    batch->outcomes = PyMem_Malloc(unique + 1);
    if (batch->events == NULL || batch->outcomes == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memset(batch->outcomes, -2, unique + 1);
    sqlite3_stmt *stmt = reader->stmt;
    for (size_t first = 0; first < unique;) {
        size_t last = first;
        while (last + 1 < unique && (uint64_t)batch->positions[last + 1] -
                                            (uint64_t)batch->positions[last] <=
                                        RANGE_GAP) /* sorted: the exact distance */
            last++;
        int rc = sqlite3_bind_int64(stmt, 1, batch->positions[first]);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int64(stmt, 2, batch->positions[last]);
        size_t next = first;
        while (rc == SQLITE_OK && next <= last && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
            rc = SQLITE_OK;
            int64_t position = sqlite3_column_int64(stmt, 0);
            while (next <= last && batch->positions[next] < position)
                next++; /* no such event */
            if (next > last || batch->positions[next] != position)
                continue;
            int outcome = decode_socket_event(reader, stmt, &batch->events[next]);
            if (outcome == -1) {
                sqlite3_reset(stmt);
                return -1;
            }
            batch->outcomes[next++] = (signed char)outcome;
        }
        if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
            set_sqlite_error(reader->self->db, rc);
            sqlite3_reset(stmt);
            return -1;
        }
        sqlite3_reset(stmt);
        first = last + 1;
    }
    return 0;
}

/* The event read for ``position``: 0 (*event borrowed from the batch), or -2 to decline. */
static int event_batch_get(const struct event_batch *batch, int64_t position,
                           const struct socket_event **event)
{
    size_t low = 0, high = batch->count;
    while (low < high) {
        size_t middle = low + (high - low) / 2;
        if (batch->positions[middle] < position)
            low = middle + 1;
        else
            high = middle;
    }
    if (low == batch->count || batch->positions[low] != position || batch->outcomes[low] != 0)
        return -2;
    *event = &batch->events[low];
    return 0;
}

static PyObject *address_bytes(const unsigned char *address, Py_ssize_t len, PyObject *empty)
{
    return len ? PyBytes_FromStringAndSize((const char *)address, len) : Py_NewRef(empty);
}

/* The event at ``position`` from its cached record, as read_socket_event would read it (the
 * record has no extra column, and an open's byte counts are never shown): 0, -1 on error
 * (set), -2 to decline. */
static int record_event(struct view_reader *reader, long long position,
                        const struct socket_record *record, struct socket_event *event)
{
    const struct clock *clock = clock_of(reader, record->key.recording);
    if (clock == NULL)
        return PyErr_Occurred() ? -1 : -2;
    event->position = position;
    event->recording = record->key.recording;
    event->kind = record->kind;
    int outcome = wall_of(clock, record->mono, &event->wall), odd = 0;
    if (outcome < 0)
        return outcome;
    const struct addr_key *key = &record->key;
    long long flags = record->flags;
    event->pid = flags & RECORD_NO_PID ? Py_NewRef(Py_None) : PyLong_FromLongLong(record->pid);
    event->comm = event->pid ? dictionary_get(reader->comms, record->comm_id,
                                              flags & RECORD_NO_COMM, &odd)
                             : NULL;
    event->netns = event->comm ? dictionary_get(reader->namespaces, record->netns_id,
                                                flags & RECORD_NO_NETNS, &odd)
                               : NULL;
    event->laddr = event->netns ? address_bytes(key->laddr, key->laddr_len, reader->empty) : NULL;
    event->lport = event->laddr ? PyLong_FromLongLong(key->lport) : NULL;
    event->raddr = event->lport ? address_bytes(key->raddr, key->raddr_len, reader->empty) : NULL;
    event->rport = event->raddr ? PyLong_FromLongLong(key->rport) : NULL;
    if (event->rport == NULL)
        return odd && !PyErr_Occurred() ? -2 : -1;
    event->bytes_sent = Py_NewRef(Py_None);
    event->bytes_received = Py_NewRef(Py_None);
    event->from_proc = 0;
    return 0;
}

/* The cached record of the open event at ``position``, if the cache holds one whose event
 * has no extra column (only the extra says whether it came from /proc); else NULL. */
static const struct socket_record *usable_record(struct view_reader *reader, long long position)
{
    const struct socket_record *record = addr_cache_find(reader->self->records, position);
    return record != NULL && !(record->flags & RECORD_EXTRA) ? record : NULL;
}

/* The SocketView of an open event, closed by ``close`` if given (as _Materializer.closed_pair
 * closes it): a new reference, or NULL on error. */
static PyObject *make_view(struct view_reader *reader, const struct socket_event *open,
                           const struct socket_event *close)
{
    PyObject *args[VIEW_FIELD_COUNT] = {0};
    PyObject *view = NULL;
    args[VIEW_RECORDING_ID] = PyLong_FromLongLong(open->recording);
    PyObject *host = args[VIEW_RECORDING_ID]
                         ? PyDict_GetItemWithError(reader->hosts, args[VIEW_RECORDING_ID])
                         : NULL;
    if (host == NULL && PyErr_Occurred())
        goto done;
    args[VIEW_HOST_ID] = Py_NewRef(host ? host : reader->unknown_host);
    args[VIEW_ROLE] = Py_NewRef(open->kind == KIND_CONNECT ? reader->client : reader->server);
    /* A close's pid stands in for an open without one. */
    int use_close_pid = close != NULL && close->pid != Py_None && open->pid == Py_None;
    args[VIEW_PID] = Py_NewRef(use_close_pid ? close->pid : open->pid);
    args[VIEW_COMM] = Py_NewRef(use_close_pid ? close->comm : open->comm);
    args[VIEW_NETNS] = Py_NewRef(open->netns);
    args[VIEW_LADDR] = Py_NewRef(open->laddr);
    args[VIEW_LPORT] = Py_NewRef(open->lport);
    args[VIEW_RADDR] = Py_NewRef(open->raddr);
    args[VIEW_RPORT] = Py_NewRef(open->rport);
    args[VIEW_OPENED_NS] = PyLong_FromLongLong(open->wall);
    args[VIEW_CLOSED_NS] = close ? PyLong_FromLongLong(close->wall) : Py_NewRef(Py_None);
    args[VIEW_SOURCE] = Py_NewRef(open->from_proc ? reader->proc : reader->events);
    args[VIEW_ORIGIN] = Py_BuildValue("(Li)", open->position, 0);
    args[VIEW_POSITIONS] = close ? Py_BuildValue("[LL]", open->position, close->position)
                                 : Py_BuildValue("[L]", open->position);
    args[VIEW_NAT] = Py_NewRef(Py_None);
    args[VIEW_KNOWN_NS] = Py_XNewRef(args[VIEW_OPENED_NS]);
    args[VIEW_CLOSE_EVENT_NS] = Py_XNewRef(args[VIEW_CLOSED_NS]);
    args[VIEW_MISSING_NS] = Py_NewRef(Py_None);
    args[VIEW_CLOSE_NOTE] = Py_NewRef(Py_None);
    args[VIEW_BYTES_SENT] = Py_NewRef(close ? close->bytes_sent : Py_None);
    args[VIEW_BYTES_RECEIVED] = Py_NewRef(close ? close->bytes_received : Py_None);
    int complete = 1;
    for (int i = 0; i < VIEW_FIELD_COUNT; i++)
        complete &= args[i] != NULL;
    if (complete)
        view = reader->plain.type != NULL
                   ? plain_make(&reader->plain, args)
                   : PyObject_Vectorcall(reader->view_type, args, VIEW_FIELD_COUNT, NULL);
done:
    for (int i = 0; i < VIEW_FIELD_COUNT; i++)
        Py_XDECREF(args[i]);
    return view;
}

/* An (open, close) pair of positions: 0, or -1 (nothing set) if it is not a 2-tuple of ints. */
static int pair_positions(PyObject *pair, long long *open_position, long long *close_position)
{
    return PyTuple_CheckExact(pair) && PyTuple_GET_SIZE(pair) == 2 &&
                   exact_long(PyTuple_GET_ITEM(pair, 0), open_position) == 0 &&
                   exact_long(PyTuple_GET_ITEM(pair, 1), close_position) == 0
               ? 0
               : -1;
}

/* The positions of ``opens`` (those without a usable record) and ``pairs`` into ``batch``:
 * 0, -1 on error, -2 to decline (a value that is not an int, a pair that is not two). */
static int positions_needed(struct view_reader *reader, PyObject *opens, PyObject *pairs,
                            struct event_batch *batch)
{
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(opens); i++) {
        long long position;
        if (exact_long(PyList_GET_ITEM(opens, i), &position) < 0)
            return -2;
        if (usable_record(reader, position) == NULL && event_batch_add(batch, position) < 0)
            return -1;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(pairs); i++) {
        PyObject *pair = PyList_GET_ITEM(pairs, i);
        long long open_position, close_position;
        if (pair_positions(pair, &open_position, &close_position) < 0)
            return -2;
        if (event_batch_add(batch, open_position) < 0 || event_batch_add(batch, close_position) < 0)
            return -1;
    }
    return 0;
}

/* Views of the open events at ``positions`` into ``views``: 0, -1 on error, -2 to decline. */
static int open_views(struct view_reader *reader, PyObject *positions,
                      const struct event_batch *batch, PyObject *views)
{
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(positions); i++) {
        long long position;
        if (exact_long(PyList_GET_ITEM(positions, i), &position) < 0)
            return -2;
        const struct socket_record *record = usable_record(reader, position);
        struct socket_event from_record = {0};
        const struct socket_event *open = &from_record;
        int rc = record != NULL ? record_event(reader, position, record, &from_record)
                                : event_batch_get(batch, position, &open);
        if (rc == 0)
            rc = append_new(views, make_view(reader, open, NULL));
        socket_event_clear(&from_record);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Views of the (open, close) pairs closed in (start_ns, at_ns]: as open_views. */
static int pair_views(struct view_reader *reader, PyObject *pairs, long long start_ns,
                      long long at_ns, const struct event_batch *batch, PyObject *views)
{
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(pairs); i++) {
        PyObject *pair = PyList_GET_ITEM(pairs, i);
        long long open_position, close_position;
        if (pair_positions(pair, &open_position, &close_position) < 0)
            return -2;
        const struct socket_event *open, *close;
        int rc = event_batch_get(batch, close_position, &close);
        if (rc == 0 && start_ns < close->wall && close->wall <= at_ns) {
            rc = event_batch_get(batch, open_position, &open);
            if (rc == 0)
                rc = append_new(views, make_view(reader, open, close));
        }
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int check_view_fields(PyObject *field_names)
{
    int same = PyTuple_CheckExact(field_names) && PyTuple_GET_SIZE(field_names) == VIEW_FIELD_COUNT;
    for (int i = 0; same && i < VIEW_FIELD_COUNT; i++) {
        PyObject *name = PyTuple_GET_ITEM(field_names, i);
        same = PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, VIEW_FIELDS[i]) == 0;
    }
    if (!same)
        PyErr_SetString(PyExc_ValueError, "field_names are not SocketView's, in order");
    return same ? 0 : -1;
}

static PyObject *RunReader_socket_views(RunReader *self, PyObject *args)
{
    PyObject *opens, *pairs, *field_names;
    long long start_ns, at_ns;
    struct view_reader reader = {.self = self};
    struct event_batch batch = {0};
    int plain = 0;
    if (!PyArg_ParseTuple(args, "O!O!LLO!O!O!O!OOO|p", &PyList_Type, &opens, &PyList_Type,
                          &pairs, &start_ns, &at_ns, &PyDict_Type, &reader.clocks, &PyDict_Type,
                          &reader.hosts, &PyDict_Type, &reader.comms, &PyDict_Type,
                          &reader.namespaces, &reader.view_type, &field_names,
                          &reader.decode_extra, &plain) ||
        check_view_fields(field_names) < 0)
        return NULL;
    if (plain)
        plain_learn(&reader.plain, reader.view_type, &PyTuple_GET_ITEM(field_names, 0),
                    VIEW_FIELD_COUNT);
    if (self->db == NULL)
        return PyErr_Format(sqlite_error, "the reader is closed");
    PyObject *result = NULL, *opened = PyList_New(0), *closed = PyList_New(0);
    reader.client = PyUnicode_FromString("client");
    reader.server = PyUnicode_FromString("server");
    reader.events = PyUnicode_FromString("events");
    reader.proc = PyUnicode_FromString("proc");
    reader.unknown_host = PyUnicode_FromString("?");
    reader.source_key = PyUnicode_FromString("source");
    reader.empty = PyBytes_FromStringAndSize("", 0);
    reader.zero = PyLong_FromLong(0);
    int outcome = -1, began = 0;
    if (!opened || !closed || !reader.client || !reader.server || !reader.events ||
        !reader.proc || !reader.unknown_host || !reader.source_key || !reader.empty ||
        !reader.zero)
        goto done;
    int rc = sqlite3_prepare_v2(self->db, SOCKET_SQL, -1, &reader.stmt, NULL);
    if (rc != SQLITE_OK) {
        set_sqlite_error(self->db, rc);
        goto done;
    }
    began = begin_read(self);
    if (began < 0)
        goto done;
    /* Every event either walk needs, read first; a position the walks then find missing from
     * the batch (the lists changed meanwhile) declines. */
    outcome = positions_needed(&reader, opens, pairs, &batch);
    if (outcome == 0)
        outcome = event_batch_read(&reader, &batch);
    if (outcome == 0)
        outcome = open_views(&reader, opens, &batch, opened);
    if (outcome == 0)
        outcome = pair_views(&reader, pairs, start_ns, at_ns, &batch, closed);
    if (outcome == 0)
        result = PyTuple_Pack(2, opened, closed);
    else if (outcome == -2 && !PyErr_Occurred())
        result = Py_NewRef(Py_None);
done:
    event_batch_free(&batch);
    sqlite3_finalize(reader.stmt);
    end_read(self, began);
    for (Py_ssize_t i = 0; i < reader.clock_count; i++)
        clock_free(&reader.clock_list[i]);
    PyMem_Free(reader.clock_list);
    Py_XDECREF(opened);
    Py_XDECREF(closed);
    Py_XDECREF(reader.client);
    Py_XDECREF(reader.server);
    Py_XDECREF(reader.events);
    Py_XDECREF(reader.proc);
    Py_XDECREF(reader.unknown_host);
    Py_XDECREF(reader.source_key);
    Py_XDECREF(reader.empty);
    Py_XDECREF(reader.zero);
    return result;
}

/* -- hints: the records of a checkpoint's open sockets ---------------------------------------
 *
 * A checkpoint's open sockets opened anywhere before it, so reading their events costs one
 * random page read each; a seek needs them twice (the window's snapshot, then the table). The
 * checkpoint carries their records instead. Column by column, positions and monotonic times as
 * deltas, all integers as zigzag varints: about 11 bytes a socket once compressed.
 */

/* A record's least bytes: a position step, ten columns, two address lengths. */
enum { HINT_VERSION = 1, VARINT_MAX = 10, HINT_MIN_RECORD = 13 };

struct hint_writer {
    unsigned char *data;
    size_t size, capacity;
};

static int hint_reserve(struct hint_writer *w, size_t more)
{
    if (w->size + more <= w->capacity)
        return 0;
    size_t capacity = w->capacity ? w->capacity : 4096;
    while (capacity < w->size + more)
        capacity *= 2;
    unsigned char *data = PyMem_Realloc(w->data, capacity);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    w->data = data;
    w->capacity = capacity;
    return 0;
}

static uint64_t zigzag(long long value)
{
    return ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
}

static long long unzigzag(uint64_t value)
{
    return (long long)(value >> 1) ^ -(long long)(value & 1);
}

static int put_varint(struct hint_writer *w, uint64_t value)
{
    if (hint_reserve(w, VARINT_MAX) < 0)
        return -1;
    do {
        unsigned char byte = value & 0x7f;
        value >>= 7;
        w->data[w->size++] = byte | (value ? 0x80 : 0);
    } while (value);
    return 0;
}

static int put_address(struct hint_writer *w, const unsigned char *address, Py_ssize_t len)
{
    if (hint_reserve(w, 1 + ADDR_MAX) < 0)
        return -1;
    w->data[w->size++] = (unsigned char)len;
    memcpy(w->data + w->size, address, (size_t)len);
    w->size += (size_t)len;
    return 0;
}

/* One column: ``value(record, previous)`` of each record, as a zigzag varint. */
#define PUT_COLUMN(expression)                                                                    \
    for (size_t i = 0; rc == 0 && i < count; i++) {                                              \
        const struct socket_record *record = &records[i];                                         \
        const struct socket_record *previous = i ? &records[i - 1] : NULL;                        \
        (void)previous;                                                                           \
        rc = put_varint(w, zigzag(expression));                                                   \
    }

static int encode_hint(struct hint_writer *w, const int64_t *positions,
                       const struct socket_record *records, size_t count)
{
    int rc = put_varint(w, HINT_VERSION);
    if (rc == 0)
        rc = put_varint(w, count);
    for (size_t i = 0; rc == 0 && i < count; i++)
        rc = put_varint(w, (uint64_t)(positions[i] - (i ? positions[i - 1] : 0)));
    PUT_COLUMN(record->key.recording)
    PUT_COLUMN(record->kind)
    PUT_COLUMN((long long)((uint64_t)record->mono - (previous ? (uint64_t)previous->mono : 0)))
    PUT_COLUMN(record->flags)
    PUT_COLUMN(record->pid)
    PUT_COLUMN(record->comm_id)
    PUT_COLUMN(record->netns_id)
    PUT_COLUMN(record->key.netns)
    PUT_COLUMN(record->key.lport)
    PUT_COLUMN(record->key.rport)
    for (size_t i = 0; rc == 0 && i < count; i++)
        rc = put_address(w, records[i].key.laddr, records[i].key.laddr_len);
    for (size_t i = 0; rc == 0 && i < count; i++)
        rc = put_address(w, records[i].key.raddr, records[i].key.raddr_len);
    return rc;
}

#undef PUT_COLUMN

static PyObject *RunReader_socket_hint(RunReader *self, PyObject *args)
{
    PyObject *list;
    if (!PyArg_ParseTuple(args, "O!", &PyList_Type, &list))
        return NULL;
    if (self->db == NULL)
        return PyErr_Format(sqlite_error, "the reader is closed");
    size_t count = (size_t)PyList_GET_SIZE(list), unique = 0;
    int64_t *positions = PyMem_Calloc(count + 1, sizeof *positions);
    struct socket_record *records = PyMem_Calloc(count + 1, sizeof *records);
    struct hint_writer w = {0};
    PyObject *result = NULL;
    int rc = positions && records ? 0 : -1, began = 0;
    if (rc < 0)
        PyErr_NoMemory();
    for (size_t i = 0; rc == 0 && i < count; i++) {
        long long position = 0;
        if (exact_long(PyList_GET_ITEM(list, (Py_ssize_t)i), &position) < 0) {
            PyErr_SetString(PyExc_TypeError, "positions must be ints");
            rc = -1;
        }
        positions[i] = position;
    }
    if (rc == 0) {
        qsort(positions, count, sizeof *positions, compare_positions);
        for (size_t i = 0; i < count; i++)
            if (!unique || positions[i] != positions[unique - 1])
                positions[unique++] = positions[i];
        began = begin_read(self);
        rc = began < 0 ? -1 : 0;
    }
    for (size_t i = 0; rc == 0 && i < unique; i++) {
        const struct socket_record *record;
        rc = cached_record(self, positions[i], &record);
        if (rc == 0)
            records[i] = *record;
    }
    end_read(self, began);
    if (rc == 0)
        rc = encode_hint(&w, positions, records, unique);
    if (rc == 0)
        result = PyBytes_FromStringAndSize((const char *)w.data, (Py_ssize_t)w.size);
    else if (rc == -2)
        result = Py_NewRef(Py_None);
    PyMem_Free(w.data);
    PyMem_Free(positions);
    PyMem_Free(records);
    return result;
}

struct hint_reader {
    const unsigned char *data;
    size_t size, at;
};

static int get_varint(struct hint_reader *r, uint64_t *value)
{
    uint64_t result = 0;
    for (int shift = 0; shift < 7 * VARINT_MAX && r->at < r->size; shift += 7) {
        unsigned char byte = r->data[r->at++];
        if (shift == 63 && byte > 1)
            return -1; /* more than 64 bits */
        result |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            *value = result;
            return 0;
        }
    }
    return -1;
}

static int get_signed(struct hint_reader *r, long long *value)
{
    uint64_t raw;
    if (get_varint(r, &raw) < 0)
        return -1;
    *value = unzigzag(raw);
    return 0;
}

static int get_address(struct hint_reader *r, unsigned char *address, Py_ssize_t *len)
{
    if (r->at >= r->size || r->data[r->at] > ADDR_MAX || r->size - r->at - 1 < r->data[r->at])
        return -1;
    *len = r->data[r->at++];
    memcpy(address, r->data + r->at, (size_t)*len);
    r->at += (size_t)*len;
    return 0;
}

#define GET_COLUMN(target)                                                                        \
    for (size_t i = 0; ok && i < count; i++) {                                                    \
        struct socket_record *record = &records[i];                                               \
        long long value = 0;                                                                      \
        ok = get_signed(r, &value) == 0;                                                          \
        target = value;                                                                           \
    }

/* The records of ``r`` into ``positions``/``records`` (room for ``count``): 0, or -1 if the
 * data is not an encoding of that many. */
static int decode_columns(struct hint_reader *r, int64_t *positions,
                          struct socket_record *records, size_t count)
{
    int ok = 1;
    for (size_t i = 0; ok && i < count; i++) {
        uint64_t delta = 0;
        int64_t previous = i ? positions[i - 1] : 0;
        ok = get_varint(r, &delta) == 0 && delta > 0 && delta <= (uint64_t)(INT64_MAX - previous);
        if (ok)
            positions[i] = previous + (int64_t)delta;
    }
    GET_COLUMN(record->key.recording)
    GET_COLUMN(record->kind)
    GET_COLUMN(record->mono)
    for (size_t i = 1; ok && i < count; i++)
        records[i].mono = (long long)((uint64_t)records[i].mono + (uint64_t)records[i - 1].mono);
    GET_COLUMN(record->flags)
    GET_COLUMN(record->pid)
    GET_COLUMN(record->comm_id)
    GET_COLUMN(record->netns_id)
    GET_COLUMN(record->key.netns)
    GET_COLUMN(record->key.lport)
    GET_COLUMN(record->key.rport)
    for (size_t i = 0; ok && i < count; i++)
        ok = get_address(r, records[i].key.laddr, &records[i].key.laddr_len) == 0;
    for (size_t i = 0; ok && i < count; i++)
        ok = get_address(r, records[i].key.raddr, &records[i].key.raddr_len) == 0;
    for (size_t i = 0; ok && i < count; i++) {
        ok = records[i].flags >= 0 &&
             records[i].flags <= (RECORD_NO_PID | RECORD_NO_COMM | RECORD_NO_NETNS | RECORD_EXTRA);
        records[i].key.tuple = records[i].key.netns_value = NULL;
        key_hash(&records[i].key);
    }
    return ok && r->at == r->size ? 0 : -1;
}

#undef GET_COLUMN

static PyObject *RunReader_load_hint(RunReader *self, PyObject *args)
{
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "y*", &data))
        return NULL;
    struct hint_reader r = {data.buf, (size_t)data.len, 0};
    uint64_t version = 0, count = 0;
    /* Each record takes at least HINT_MIN_RECORD bytes: what the data can hold bounds what
     * is allocated for it. */
    int ok = get_varint(&r, &version) == 0 && version == HINT_VERSION &&
             get_varint(&r, &count) == 0 && count <= (r.size - r.at) / HINT_MIN_RECORD;
    int64_t *positions = ok ? PyMem_Calloc(count + 1, sizeof *positions) : NULL;
    struct socket_record *records = ok ? PyMem_Calloc(count + 1, sizeof *records) : NULL;
    PyObject *result = NULL;
    if (ok && (positions == NULL || records == NULL)) {
        PyErr_NoMemory();
        goto done;
    }
    if (!ok || decode_columns(&r, positions, records, count) < 0) {
        PyErr_SetString(PyExc_ValueError, "not a socket hint of this version");
        goto done;
    }
    struct addr_cache *cache = records_of(self);
    for (size_t i = 0; cache != NULL && i < count; i++) {
        struct cached_slot *slot = addr_cache_slot(cache, positions[i]);
        if (slot == NULL)
            goto done;
        if (!slot->record) {
            cache->records[cache->count] = records[i];
            addr_cache_fill(cache, slot, positions[i]);
        }
    }
    if (cache != NULL)
        result = PyLong_FromSize_t(count);
done:
    PyMem_Free(positions);
    PyMem_Free(records);
    PyBuffer_Release(&data);
    return result;
}

/* -- processes ------------------------------------------------------------------------------ */

static const char PROCESSES_SQL[] = "SELECT pid FROM snapshot_processes WHERE position = ?1";

/* The pids the snapshot at ``position`` stored, into ``pids``: 1, or 0 if one is not an
 * integer, -1 on error (set). */
static int read_pids(RunReader *self, long long position, struct sock_map *pids)
{
    sqlite3_stmt *stmt = NULL;
    int rc = sqlite3_prepare_v2(self->db, PROCESSES_SQL, -1, &stmt, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(stmt, 1, position);
    int outcome = 1;
    while (rc == SQLITE_OK && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        if (sqlite3_column_type(stmt, 0) != SQLITE_INTEGER) {
            outcome = 0;
            break;
        }
        if (sock_map_get(pids, sqlite3_column_int64(stmt, 0)) == NULL) {
            outcome = -1;
            break;
        }
        rc = SQLITE_OK;
    }
    if (outcome == 1 && rc != SQLITE_DONE) {
        set_sqlite_error(self->db, rc);
        outcome = -1;
    }
    sqlite3_finalize(stmt);
    return outcome;
}

/* Whether ``key`` is (recording, pid) with ints; the pid into *pid. -1: not such a key. */
static int process_key(PyObject *key, long long recording, long long *pid)
{
    long long key_recording;
    if (!PyTuple_CheckExact(key) || PyTuple_GET_SIZE(key) != 2 ||
        exact_long(PyTuple_GET_ITEM(key, 0), &key_recording) < 0 ||
        exact_long(PyTuple_GET_ITEM(key, 1), pid) < 0)
        return -1;
    return key_recording == recording;
}

static PyObject *RunReader_reconcile_processes(RunReader *self, PyObject *args)
{
    long long position, recording;
    PyObject *processes;
    if (!PyArg_ParseTuple(args, "LLO!", &position, &recording, &PyDict_Type, &processes))
        return NULL;
    if (self->db == NULL)
        return PyErr_Format(sqlite_error, "the reader is closed");
    struct sock_map pids = {0};
    PyObject *dead = PyList_New(0), *result = NULL, *key, *value, *at = NULL;
    int outcome = dead == NULL ? -1 : read_pids(self, position, &pids);
    Py_ssize_t pos = 0;
    long long pid;
    while (outcome == 1 && PyDict_Next(processes, &pos, &key, &value)) {
        int ours = process_key(key, recording, &pid);
        if (ours < 0)
            outcome = 0;
        else if (ours && !(pids.slots && sock_map_probe(pids.slots, pids.mask, pid)->used))
            outcome = PyList_Append(dead, key) < 0 ? -1 : 1;
    }
    if (outcome == 1)
        at = PyLong_FromLongLong(position);
    outcome = outcome == 1 && at == NULL ? -1 : outcome;
    for (Py_ssize_t i = 0; outcome == 1 && i < PyList_GET_SIZE(dead); i++)
        outcome = PyDict_DelItem(processes, PyList_GET_ITEM(dead, i)) < 0 ? -1 : 1;
    for (size_t i = 0; outcome == 1 && pids.slots && i <= pids.mask; i++) {
        if (!pids.slots[i].used)
            continue;
        key = Py_BuildValue("(LL)", recording, (long long)pids.slots[i].sock);
        outcome = key == NULL || PyDict_SetItem(processes, key, at) < 0 ? -1 : 1;
        Py_XDECREF(key);
    }
    if (outcome >= 0)
        result = PyBool_FromLong(outcome);
    Py_XDECREF(at);
    Py_XDECREF(dead);
    sock_map_free(&pids);
    return result;
}

/* -- the module ----------------------------------------------------------------------------- */

static PyObject *soft_heap_limit(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLongLong(sqlite3_soft_heap_limit64(-1));
}

static PyMethodDef module_methods[] = {
    {"soft_heap_limit", soft_heap_limit, METH_NOARGS,
     PyDoc_STR("soft_heap_limit() -> int\n\nThis module's SQLite soft heap limit (see\n"
               "eventlog.native.shares_sqlite_with_python).")},
    {"reconcile_sockets", reconcile_sockets, METH_VARARGS, reconcile_sockets_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fold_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "replay._fold",
    .m_doc = PyDoc_STR("The fold's hot loops in C (see replay/_fold.c)."),
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__fold(void)
{
    PyObject *sqlite3_module = PyImport_ImportModule("sqlite3");
    if (sqlite3_module == NULL)
        return NULL;
    sqlite_error = PyObject_GetAttrString(sqlite3_module, "OperationalError");
    sqlite_database = PyObject_GetAttrString(sqlite3_module, "DatabaseError");
    Py_DECREF(sqlite3_module);
    if (sqlite_error == NULL || sqlite_database == NULL || PyType_Ready(&RunReaderType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&fold_module);
    if (module == NULL)
        return NULL;
    static const struct {
        const char *name;
        int value;
    } kinds[] = {
        {"CONNECT", KIND_CONNECT},   {"ACCEPT", KIND_ACCEPT},     {"CLOSE", KIND_CLOSE},
        {"CONNECT_FAILED", KIND_CONNECT_FAILED}, {"EXEC", KIND_EXEC}, {"EXIT", KIND_EXIT},
        {"SNAPSHOT", KIND_SNAPSHOT}, {"CT_NEW", KIND_CT_NEW}, {"CT_UPDATE", KIND_CT_UPDATE},
        {"CT_DESTROY", KIND_CT_DESTROY},
    };
    PyObject *kind_values = PyDict_New();
    int failed = kind_values == NULL;
    for (size_t i = 0; !failed && i < sizeof kinds / sizeof kinds[0]; i++) {
        PyObject *value = PyLong_FromLong(kinds[i].value);
        failed = value == NULL || PyDict_SetItemString(kind_values, kinds[i].name, value) < 0;
        Py_XDECREF(value);
    }
    if (failed || PyModule_AddObjectRef(module, "KINDS", kind_values) < 0 ||
        PyModule_AddObjectRef(module, "RunReader", (PyObject *)&RunReaderType) < 0) {
        Py_XDECREF(kind_values);
        Py_DECREF(module);
        return NULL;
    }
    Py_DECREF(kind_values);
    return module;
}
