/* eventlog._native: the recorder's per-event hot path in C.
 *
 * Under load the recorder handles tens of thousands of events a second; done in Python, each
 * cost about 5 us of CPU (a tuple and its fields per event, a sort key, generic parameter
 * binding in the sqlite3 module), which is CPU taken from the very workload being recorded.
 * This module keeps ring-buffer events as the kernel wrote them (``RawRun``: sorted arrays of
 * ``struct event`` from bpf/tcp_events.h) from the ring buffer to the INSERT, and binds them
 * straight into a prepared statement.
 *
 * eventlog.kernel_records and Python's sqlite3 stay the reference: tests/unit/log/test_native_append.py
 * checks that both paths write the same rows, byte for byte.
 *
 * The SQLite connection is one of this module's own (nothing reaches into the sqlite3
 * module's objects) and offers only what eventlog.sqlite.SqliteAppender uses. SQLite
 * errors are raised as the sqlite3 module's exception classes with SQLite's message, so the
 * callers map them exactly as they map the Python driver's.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdint.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "struct event is read in the host's byte order, which the decoder takes to be little-endian"
#endif

/* Fields of eventlog.events.Event, in order. */
enum {
    EV_KIND, EV_MONO_NS, EV_PID, EV_COMM, EV_NETNS, EV_LADDR, EV_LPORT, EV_RADDR, EV_RPORT,
    EV_SOCK_ID, EV_BYTES_SENT, EV_BYTES_RECEIVED, EV_EXTRA, EV_FIELDS
};

static PyObject *sqlite_error;      /* sqlite3.OperationalError */
static PyObject *sqlite_integrity;  /* sqlite3.IntegrityError */
static PyObject *sqlite_database;   /* sqlite3.DatabaseError */
static PyObject *sqlite_programming; /* sqlite3.ProgrammingError */

/* Opened without SQLite's own mutexes (they cost more than the binding they protect) and
 * used with the GIL released while a statement steps: ``busy`` keeps a second thread from
 * entering while one is inside. */
typedef struct {
    PyObject_HEAD
    sqlite3 *db;
    int busy;
} NativeConnection;

/* -- raw events ------------------------------------------------------------------------------ */

/* The ring buffer's records: bpf/tcp_events.h, the header the BPF programs include too. */
#define SCOPE_USER_SPACE
#include "tcp_events.h"

#define STAGE_HEADER_SIZE ((Py_ssize_t)sizeof(struct stage_header))
#define KIND_CONNECT EV_CONNECT
#define KIND_ACCEPT EV_ACCEPT
#define KIND_CLOSE EV_CLOSE
#define KIND_LAST_CAPTURED EV_EXIT
#define KIND_FORK EV_FORK
#define KIND_OWNER EV_OWNER
#define FAMILY_INET 2

static int is_fast_kind(uint8_t kind)
{
    return kind == KIND_CONNECT || kind == KIND_ACCEPT || kind == KIND_CLOSE;
}

/* A run of events in time order (equal times in the order they arrived). Immutable. */
typedef struct {
    PyObject_HEAD
    Py_ssize_t count;
    struct event *events;
} RawRun;

static PyTypeObject RawRunType;

static RawRun *raw_run_new(Py_ssize_t count)
{
    RawRun *run = PyObject_New(RawRun, &RawRunType);
    if (run == NULL)
        return NULL;
    run->count = count;
    run->events = PyMem_Malloc(count > 0 ? (size_t)count * sizeof(struct event) : 1);
    if (run->events == NULL) {
        Py_DECREF(run);
        return (RawRun *)PyErr_NoMemory();
    }
    return run;
}

static void RawRun_dealloc(RawRun *self)
{
    PyMem_Free(self->events);
    PyObject_Free(self);
}

static Py_ssize_t RawRun_length(RawRun *self)
{
    return self->count;
}

/* Index of the first event after ``ts`` (bisect_right). */
static Py_ssize_t upper_bound(const RawRun *run, uint64_t ts)
{
    Py_ssize_t low = 0, high = run->count;
    while (low < high) {
        Py_ssize_t middle = low + (high - low) / 2;
        if (run->events[middle].ts_ns <= ts)
            low = middle + 1;
        else
            high = middle;
    }
    return low;
}

static RawRun *raw_run_slice(const RawRun *run, Py_ssize_t start, Py_ssize_t stop)
{
    RawRun *part = raw_run_new(stop - start);
    if (part != NULL && stop > start)
        memcpy(part->events, run->events + start, (size_t)(stop - start) * sizeof(struct event));
    return part;
}

static int parse_time(PyObject *value, uint64_t *ts)
{
    unsigned long long number = PyLong_AsUnsignedLongLong(value);
    if (number == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *ts = number;
    return 0;
}

static PyObject *RawRun_split(RawRun *self, PyObject *cutoff)
{
    uint64_t ts;
    if (parse_time(cutoff, &ts) < 0)
        return NULL;
    Py_ssize_t index = upper_bound(self, ts);
    PyObject *before = (PyObject *)raw_run_slice(self, 0, index);
    PyObject *after = before ? (PyObject *)raw_run_slice(self, index, self->count) : NULL;
    if (after == NULL) {
        Py_XDECREF(before);
        return NULL;
    }
    return Py_BuildValue("(NN)", before, after);
}

static PyObject *RawRun_count_upto(RawRun *self, PyObject *limit)
{
    uint64_t ts;
    if (parse_time(limit, &ts) < 0)
        return NULL;
    return PyLong_FromSsize_t(upper_bound(self, ts));
}

static PyObject *RawRun_record(RawRun *self, PyObject *Py_UNUSED(ignored))
{
    if (self->count > (Py_ssize_t)UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "a stage record holds at most 2**32 - 1 events");
        return NULL;
    }
    size_t body = (size_t)self->count * sizeof(struct event);
    PyObject *record = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(STAGE_HEADER_SIZE + body));
    if (record == NULL)
        return NULL;
    char *out = PyBytes_AS_STRING(record);
    uint32_t count = (uint32_t)self->count, cpu = 0;
    uint64_t first = self->count ? self->events[0].ts_ns : 0;
    memcpy(out, &count, 4);
    memcpy(out + 4, &cpu, 4);
    memcpy(out + 8, &first, 8);
    if (body)
        memcpy(out + STAGE_HEADER_SIZE, self->events, body);
    return record;
}

static PyObject *RawRun_time(RawRun *self, Py_ssize_t index)
{
    if (self->count == 0) {
        PyErr_SetString(PyExc_ValueError, "an empty run has no times");
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(self->events[index].ts_ns);
}

static PyObject *RawRun_first_ns(RawRun *self, void *Py_UNUSED(closure))
{
    return RawRun_time(self, 0);
}

static PyObject *RawRun_last_ns(RawRun *self, void *Py_UNUSED(closure))
{
    return RawRun_time(self, self->count - 1);
}

static PyMethodDef RawRun_methods[] = {
    {"split", (PyCFunction)RawRun_split, METH_O,
     "split(cutoff) -> (events up to cutoff, the rest), both runs"},
    {"count_upto", (PyCFunction)RawRun_count_upto, METH_O,
     "count_upto(mono_ns) -> how many events are at or before mono_ns"},
    {"record", (PyCFunction)RawRun_record, METH_NOARGS,
     "record() -> the run as one stage record (what eventlog.kernel_records.decode_record reads)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef RawRun_getset[] = {
    {"first_ns", (getter)RawRun_first_ns, NULL, "The oldest event's time.", NULL},
    {"last_ns", (getter)RawRun_last_ns, NULL, "The newest event's time.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods RawRun_as_sequence = {
    .sq_length = (lenfunc)RawRun_length,
};

static PyTypeObject RawRunType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "eventlog._native.RawRun",
    .tp_doc = PyDoc_STR("Ring-buffer events in time order, as the kernel wrote them."),
    .tp_basicsize = sizeof(RawRun),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)RawRun_dealloc,
    .tp_as_sequence = &RawRun_as_sequence,
    .tp_methods = RawRun_methods,
    .tp_getset = RawRun_getset,
};

PyDoc_STRVAR(raw_run_doc,
             "raw_run(record) -> RawRun\n\n"
             "The events of one stage record (bpf/tcp_events.h), sorted by time, equal times\n"
             "in staging order. ValueError if the record is short or holds an unknown kind.");

static PyObject *raw_run(PyObject *Py_UNUSED(module), PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    RawRun *run = NULL;
    uint32_t count = 0;
    if (view.len < STAGE_HEADER_SIZE) {
        PyErr_Format(PyExc_ValueError, "record of %zd bytes is shorter than its header",
                     view.len);
        goto done;
    }
    memcpy(&count, view.buf, 4);
    if ((Py_ssize_t)((view.len - STAGE_HEADER_SIZE) / sizeof(struct event)) < (Py_ssize_t)count) {
        PyErr_Format(PyExc_ValueError, "record says %u events but holds %zd bytes", count,
                     view.len);
        goto done;
    }
    run = raw_run_new(count);
    if (run == NULL)
        goto done;
    memcpy(run->events, (const char *)view.buf + STAGE_HEADER_SIZE,
           (size_t)count * sizeof(struct event));
    for (uint32_t i = 0; i < count; i++) {
        uint8_t kind = run->events[i].kind;
        if ((kind < KIND_CONNECT || kind > KIND_LAST_CAPTURED) && kind != KIND_FORK &&
            kind != KIND_OWNER) {
            PyErr_Format(PyExc_ValueError, "unknown event kind %u", kind);
            Py_CLEAR(run);
            goto done;
        }
    }
    /* Stable insertion sort: a stage holds at most STAGE_MAX events, nearly in order. */
    for (uint32_t i = 1; i < count; i++) {
        struct event moving = run->events[i];
        uint32_t j = i;
        while (j > 0 && run->events[j - 1].ts_ns > moving.ts_ns) {
            run->events[j] = run->events[j - 1];
            j--;
        }
        run->events[j] = moving;
    }
done:
    PyBuffer_Release(&view);
    return (PyObject *)run;
}

PyDoc_STRVAR(merge_runs_doc,
             "merge_runs(runs) -> RawRun\n\n"
             "One run of all events of ``runs`` in time order; equal times keep the order of\n"
             "``runs`` (the order they arrived in), then their order within a run.");

/* Heap of (time, run index) cursors for the k-way merge. */
struct cursor {
    uint64_t ts;
    Py_ssize_t run;
    Py_ssize_t next;
};

static int cursor_before(const struct cursor *a, const struct cursor *b)
{
    return a->ts < b->ts || (a->ts == b->ts && a->run < b->run);
}

static void sift_down(struct cursor *heap, Py_ssize_t size, Py_ssize_t at)
{
    for (;;) {
        Py_ssize_t smallest = at, left = 2 * at + 1, right = left + 1;
        if (left < size && cursor_before(&heap[left], &heap[smallest]))
            smallest = left;
        if (right < size && cursor_before(&heap[right], &heap[smallest]))
            smallest = right;
        if (smallest == at)
            return;
        struct cursor swap = heap[at];
        heap[at] = heap[smallest];
        heap[smallest] = swap;
        at = smallest;
    }
}

static PyObject *merge_runs(PyObject *Py_UNUSED(module), PyObject *arg)
{
    PyObject *fast = PySequence_Fast(arg, "merge_runs needs a sequence of RawRun");
    if (fast == NULL)
        return NULL;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(fast), total = 0;
    PyObject **items = PySequence_Fast_ITEMS(fast);
    for (Py_ssize_t i = 0; i < k; i++) {
        if (!PyObject_TypeCheck(items[i], &RawRunType)) {
            Py_DECREF(fast);
            PyErr_SetString(PyExc_TypeError, "merge_runs needs a sequence of RawRun");
            return NULL;
        }
        total += ((RawRun *)items[i])->count;
    }
    RawRun *merged = raw_run_new(total);
    struct cursor *heap = PyMem_Malloc((size_t)(k > 0 ? k : 1) * sizeof(struct cursor));
    if (merged == NULL || heap == NULL) {
        Py_XDECREF(merged);
        PyMem_Free(heap);
        Py_DECREF(fast);
        return merged ? PyErr_NoMemory() : NULL;
    }
    Py_ssize_t size = 0;
    for (Py_ssize_t i = 0; i < k; i++) {
        RawRun *run = (RawRun *)items[i];
        if (run->count > 0)
            heap[size++] = (struct cursor){run->events[0].ts_ns, i, 0};
    }
    for (Py_ssize_t i = size / 2 - 1; i >= 0; i--)
        sift_down(heap, size, i);
    for (Py_ssize_t out = 0; size > 0; out++) {
        struct cursor *top = &heap[0];
        RawRun *run = (RawRun *)items[top->run];
        merged->events[out] = run->events[top->next++];
        if (top->next < run->count)
            top->ts = run->events[top->next].ts_ns;
        else
            heap[0] = heap[--size];
        sift_down(heap, size, 0);
    }
    PyMem_Free(heap);
    Py_DECREF(fast);
    return (PyObject *)merged;
}

/* -- raw events as the events table's columns ------------------------------------------------ */

/* Per-call caches from a raw value to what the log needs of it, so that a process name is
 * decoded, looked up in its dictionary and added to a batch's summary once per call rather
 * than once per event. */
#define ID_CACHE_SLOTS 64

struct cached_value {
    PyObject *value; /* the decoded value (a new reference), or NULL when empty */
    PyObject *ident; /* its dictionary id (a new reference), once looked up */
    int summarized;  /* added to the summary's set in this call */
};

static void cached_value_clear(struct cached_value *cached)
{
    Py_CLEAR(cached->value);
    Py_CLEAR(cached->ident);
    cached->summarized = 0;
}

/* ``cached`` now holds ``value`` (a new reference, stolen). */
static struct cached_value *cached_value_set(struct cached_value *cached, PyObject *value)
{
    cached_value_clear(cached);
    cached->value = value;
    return cached;
}

struct comm_slot {
    char raw[16];
    int used;
    struct cached_value cached;
};

struct netns_slot {
    uint32_t inode;
    struct cached_value cached;
};

struct value_caches {
    struct comm_slot comms[ID_CACHE_SLOTS];
    struct netns_slot netns[ID_CACHE_SLOTS];
    struct cached_value no_comm, no_netns; /* None: unattributed, or no namespace */
};

static void value_caches_init(struct value_caches *caches)
{
    memset(caches, 0, sizeof *caches);
}

static void value_caches_clear(struct value_caches *caches)
{
    for (int i = 0; i < ID_CACHE_SLOTS; i++) {
        cached_value_clear(&caches->comms[i].cached);
        cached_value_clear(&caches->netns[i].cached);
    }
    cached_value_clear(&caches->no_comm);
    cached_value_clear(&caches->no_netns);
}

static struct cached_value *cached_none(struct cached_value *cached)
{
    return cached->value ? cached : cached_value_set(cached, Py_NewRef(Py_None));
}

/* The name in a comm field as eventlog.kernel_records reads it: up to the first NUL, UTF-8 with
 * replacement; None when empty. */
static struct cached_value *comm_value(struct value_caches *caches, const char raw[16])
{
    uint64_t low, high;
    memcpy(&low, raw, 8);
    memcpy(&high, raw + 8, 8);
    uint64_t hash = (low * 0x9E3779B97F4A7C15u) ^ (high * 0xC2B2AE3D27D4EB4Fu);
    struct comm_slot *slot = &caches->comms[(hash >> 32) % ID_CACHE_SLOTS];
    if (slot->used && memcmp(slot->raw, raw, 16) == 0)
        return &slot->cached;
    const char *end = memchr(raw, 0, 16);
    Py_ssize_t length = end ? end - raw : 16;
    PyObject *value = length ? PyUnicode_DecodeUTF8(raw, length, "replace") : Py_NewRef(Py_None);
    if (value == NULL)
        return NULL;
    cached_value_set(&slot->cached, value);
    memcpy(slot->raw, raw, 16);
    slot->used = 1;
    return &slot->cached;
}

/* A netns field as eventlog.kernel_records reads it: the inode, None when 0. */
static struct cached_value *netns_value(struct value_caches *caches, uint32_t inode)
{
    if (inode == 0)
        return cached_none(&caches->no_netns);
    struct netns_slot *slot = &caches->netns[(inode * 2654435761u) % ID_CACHE_SLOTS];
    if (slot->cached.value != NULL && slot->inode == inode)
        return &slot->cached;
    PyObject *value = PyLong_FromUnsignedLong(inode);
    if (value == NULL)
        return NULL;
    slot->inode = inode;
    return cached_value_set(&slot->cached, value);
}

/* The comm of a connection event: eventlog.kernel_records keeps it only when a pid is known. */
static struct cached_value *raw_comm(struct value_caches *caches, const struct event *event)
{
    return event->pid ? comm_value(caches, event->comm) : cached_none(&caches->no_comm);
}

/* The value's id in ``ids`` (eventlog.dictionary.Dictionary.ids), looked up once. */
static PyObject *cached_ident(struct cached_value *cached, PyObject *ids)
{
    if (cached->ident != NULL)
        return cached->ident;
    PyObject *ident = PyDict_GetItemWithError(ids, cached->value);
    if (ident == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetObject(PyExc_KeyError, cached->value);
        return NULL;
    }
    cached->ident = Py_NewRef(ident);
    return ident;
}

/* A rare kind (failed connect, exec, exit, fork, owner) through eventlog.kernel_records.decode_event's rules:
 * ``decode_one(bytes)`` returns its Event. */
static PyObject *decode_rare(PyObject *decode_one, const struct event *event)
{
    PyObject *raw = PyBytes_FromStringAndSize((const char *)event, sizeof *event);
    if (raw == NULL)
        return NULL;
    PyObject *decoded = PyObject_CallOneArg(decode_one, raw);
    Py_DECREF(raw);
    if (decoded != NULL && (!PyTuple_Check(decoded) || PyTuple_GET_SIZE(decoded) != EV_FIELDS)) {
        Py_DECREF(decoded);
        PyErr_SetString(PyExc_TypeError, "decode_one must return a eventlog.events.Event");
        return NULL;
    }
    return decoded;
}

/* -- errors ------------------------------------------------------------------------------ */

static PyObject *set_sqlite_error(sqlite3 *db, int rc)
{
    PyObject *type = sqlite_error;
    switch (rc & 0xff) {
    case SQLITE_CONSTRAINT:
        type = sqlite_integrity;
        break;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        type = sqlite_database;
        break;
    default:
        break;
    }
    PyErr_SetString(type, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    return NULL;
}

/* Claim the connection for one call; every successful claim is paired with release(). */
static int claim(NativeConnection *self)
{
    if (self->db == NULL) {
        PyErr_SetString(sqlite_error, "the connection is closed");
        return -1;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "the connection is in use by another thread");
        return -1;
    }
    self->busy = 1;
    return 0;
}

static PyObject *release(NativeConnection *self, PyObject *result)
{
    self->busy = 0;
    return result;
}

/* -- binding ------------------------------------------------------------------------------ */

/* Bind one Python value: None, int, float, str or bytes, as Python's sqlite3 does. Blobs and
 * text point into ``value`` (SQLITE_STATIC): the caller keeps it alive, and unchanged, until
 * the statement has been stepped. */
static int bind_value(sqlite3 *db, sqlite3_stmt *stmt, int index, PyObject *value)
{
    int rc;
    if (value == Py_None) {
        rc = sqlite3_bind_null(stmt, index);
    } else if (PyLong_Check(value)) {
        long long number = PyLong_AsLongLong(value);
        if (number == -1 && PyErr_Occurred())
            return -1;
        rc = sqlite3_bind_int64(stmt, index, number);
    } else if (PyBytes_Check(value)) {
        if (PyBytes_GET_SIZE(value) > INT_MAX) {
            PyErr_SetString(PyExc_OverflowError, "BLOB longer than INT_MAX bytes");
            return -1;
        }
        rc = sqlite3_bind_blob(stmt, index, PyBytes_AS_STRING(value),
                               (int)PyBytes_GET_SIZE(value), SQLITE_STATIC);
    } else if (PyUnicode_Check(value)) {
        Py_ssize_t size;
        const char *text = PyUnicode_AsUTF8AndSize(value, &size);
        if (text == NULL)
            return -1;
        if (size > INT_MAX) {
            PyErr_SetString(PyExc_OverflowError, "string longer than INT_MAX bytes");
            return -1;
        }
        rc = sqlite3_bind_text(stmt, index, text, (int)size, SQLITE_STATIC);
    } else if (PyFloat_Check(value)) {
        rc = sqlite3_bind_double(stmt, index, PyFloat_AS_DOUBLE(value));
    } else {
        PyErr_Format(sqlite_programming, "Error binding parameter %d: type '%.100s' is not supported",
                     index, Py_TYPE(value)->tp_name);
        return -1;
    }
    if (rc != SQLITE_OK) {
        set_sqlite_error(db, rc);
        return -1;
    }
    return 0;
}

/* Bind ``params`` (any sequence) to ``stmt``. Returns the tuple the bound values were taken
 * from, which the caller must hold until the statement has been stepped: an immutable copy,
 * so neither a generator's temporaries nor another thread changing a list while the
 * statement steps without the GIL can free what SQLite reads. ``params`` NULL: none.
 * NULL on error. */
static PyObject *bind_params(sqlite3 *db, sqlite3_stmt *stmt, PyObject *params)
{
    PyObject *held = params ? PySequence_Tuple(params) : PyTuple_New(0);
    if (held == NULL)
        return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(held);
    if (count != sqlite3_bind_parameter_count(stmt)) {
        PyErr_Format(sqlite_programming,
                     "Incorrect number of bindings supplied. The current statement uses %d, "
                     "and there are %zd supplied.",
                     sqlite3_bind_parameter_count(stmt), count);
        Py_DECREF(held);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        if (bind_value(db, stmt, (int)i + 1, PyTuple_GET_ITEM(held, i)) < 0) {
            Py_DECREF(held);
            return NULL;
        }
    }
    return held;
}

static PyObject *column_value(sqlite3_stmt *stmt, int column)
{
    switch (sqlite3_column_type(stmt, column)) {
    case SQLITE_INTEGER:
        return PyLong_FromLongLong(sqlite3_column_int64(stmt, column));
    case SQLITE_FLOAT:
        return PyFloat_FromDouble(sqlite3_column_double(stmt, column));
    case SQLITE_TEXT:
        return PyUnicode_FromStringAndSize((const char *)sqlite3_column_text(stmt, column),
                                           sqlite3_column_bytes(stmt, column));
    case SQLITE_BLOB:
        return PyBytes_FromStringAndSize(sqlite3_column_blob(stmt, column),
                                         sqlite3_column_bytes(stmt, column));
    default:
        Py_RETURN_NONE;
    }
}

static PyObject *row_tuple(sqlite3_stmt *stmt)
{
    int columns = sqlite3_column_count(stmt);
    PyObject *row = PyTuple_New(columns);
    if (row == NULL)
        return NULL;
    for (int column = 0; column < columns; column++) {
        PyObject *value = column_value(stmt, column);
        if (value == NULL) {
            Py_DECREF(row);
            return NULL;
        }
        PyTuple_SET_ITEM(row, column, value);
    }
    return row;
}

/* Step ``stmt`` to completion without the GIL held (a COMMIT waits for fsync), appending
 * result rows to ``rows`` when it is not NULL. */
static int step_all(sqlite3 *db, sqlite3_stmt *stmt, PyObject *rows)
{
    for (;;) {
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = sqlite3_step(stmt);
        Py_END_ALLOW_THREADS
        if (rc == SQLITE_DONE)
            return 0;
        if (rc != SQLITE_ROW) {
            set_sqlite_error(db, rc);
            return -1;
        }
        if (rows != NULL) {
            PyObject *row = row_tuple(stmt);
            if (row == NULL || PyList_Append(rows, row) < 0) {
                Py_XDECREF(row);
                return -1;
            }
            Py_DECREF(row);
        }
    }
}

static sqlite3_stmt *prepare(sqlite3 *db, PyObject *sql)
{
    const char *text = PyUnicode_AsUTF8(sql);
    if (text == NULL)
        return NULL;
    sqlite3_stmt *stmt = NULL;
    const char *tail = NULL;
    int rc = sqlite3_prepare_v2(db, text, -1, &stmt, &tail);
    if (rc != SQLITE_OK) {
        set_sqlite_error(db, rc);
        sqlite3_finalize(stmt);
        return NULL;
    }
    if (stmt == NULL) {
        PyErr_SetString(sqlite_programming, "empty statement");
        return NULL;
    }
    while (tail && (*tail == ' ' || *tail == '\t' || *tail == '\n' || *tail == '\r' || *tail == ';'))
        tail++;
    if (tail && *tail) {
        sqlite3_finalize(stmt);
        PyErr_SetString(sqlite_programming, "You can only execute one statement at a time.");
        return NULL;
    }
    return stmt;
}

/* -- Connection ------------------------------------------------------------------------------ */

static int Connection_init(NativeConnection *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"path", "busy_timeout_ms", "synchronous", NULL};
    const char *path, *synchronous;
    int busy_timeout_ms;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "sis", keywords, &path, &busy_timeout_ms,
                                     &synchronous))
        return -1;
    if (self->db != NULL || self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "already open");
        return -1;
    }
    if (strcmp(synchronous, "OFF") && strcmp(synchronous, "NORMAL") &&
        strcmp(synchronous, "FULL") && strcmp(synchronous, "EXTRA")) {
        PyErr_Format(PyExc_ValueError, "unknown synchronous level %s", synchronous);
        return -1;
    }
    sqlite3 *db = NULL;
    int rc;
    self->busy = 1; /* the open runs without the GIL: no second __init__ meanwhile */
    /* An existing log only: the store created and migrated it. */
    Py_BEGIN_ALLOW_THREADS
    rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (rc != SQLITE_OK) {
        set_sqlite_error(db, rc);
        sqlite3_close_v2(db);
        return -1;
    }
    sqlite3_extended_result_codes(db, 0);
    sqlite3_busy_timeout(db, busy_timeout_ms);
    char pragma[64];
    PyOS_snprintf(pragma, sizeof pragma, "PRAGMA synchronous = %s", synchronous);
    rc = sqlite3_exec(db, pragma, NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        set_sqlite_error(db, rc);
        sqlite3_close_v2(db);
        return -1;
    }
    self->db = db;
    return 0;
}

static void Connection_close_db(NativeConnection *self)
{
    if (self->db != NULL) {
        sqlite3_close_v2(self->db); /* finalizes nothing: every statement is finalized */
        self->db = NULL;
    }
}

static void Connection_dealloc(NativeConnection *self)
{
    Connection_close_db(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Connection_close(NativeConnection *self, PyObject *Py_UNUSED(ignored))
{
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "the connection is in use by another thread");
        return NULL;
    }
    Connection_close_db(self);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(execute_doc,
             "execute(sql, params=()) -> list[tuple]\n\n"
             "Run one statement with ``params`` bound and return its rows.");

static PyObject *Connection_execute(NativeConnection *self, PyObject *args)
{
    PyObject *sql, *params = NULL;
    if (!PyArg_ParseTuple(args, "U|O:execute", &sql, &params) || claim(self) < 0)
        return NULL;
    sqlite3_stmt *stmt = prepare(self->db, sql);
    if (stmt == NULL)
        return release(self, NULL);
    PyObject *held = bind_params(self->db, stmt, params);
    PyObject *rows = held ? PyList_New(0) : NULL;
    if (rows != NULL && step_all(self->db, stmt, rows) < 0)
        Py_CLEAR(rows);
    sqlite3_finalize(stmt);
    Py_XDECREF(held);
    return release(self, rows);
}

PyDoc_STRVAR(executemany_doc,
             "executemany(sql, rows) -> None\n\n"
             "Run one statement once for every sequence of parameters in ``rows``.");

static PyObject *Connection_executemany(NativeConnection *self, PyObject *args)
{
    PyObject *sql, *rows;
    if (!PyArg_ParseTuple(args, "UO:executemany", &sql, &rows))
        return NULL;
    PyObject *iterator = PyObject_GetIter(rows);
    if (iterator == NULL)
        return NULL;
    if (claim(self) < 0) {
        Py_DECREF(iterator);
        return NULL;
    }
    sqlite3_stmt *stmt = prepare(self->db, sql);
    if (stmt == NULL) {
        Py_DECREF(iterator);
        return release(self, NULL);
    }
    PyObject *params;
    int failed = 0;
    while (!failed && (params = PyIter_Next(iterator)) != NULL) {
        PyObject *held = bind_params(self->db, stmt, params);
        failed = held == NULL || step_all(self->db, stmt, NULL) < 0;
        sqlite3_reset(stmt);
        Py_XDECREF(held);
        Py_DECREF(params);
    }
    sqlite3_finalize(stmt);
    Py_DECREF(iterator);
    if (failed || PyErr_Occurred())
        return release(self, NULL);
    return release(self, Py_NewRef(Py_None));
}

/* The id of ``value`` in a dictionary cache (eventlog.dictionary.Dictionary.ids). */
static int bind_dictionary_id(sqlite3 *db, sqlite3_stmt *stmt, int index, PyObject *ids,
                              PyObject *value)
{
    PyObject *ident = PyDict_GetItemWithError(ids, value);
    if (ident == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetObject(PyExc_KeyError, value);
        return -1;
    }
    return bind_value(db, stmt, index, ident);
}

/* Bind an Event tuple's row to the parameters after ``base``. A non-empty extra is encoded
 * into ``*extra_text``, which must outlive the statement's step. */
static int bind_event(sqlite3 *db, sqlite3_stmt *stmt, int base, PyObject *event,
                      PyObject *comm_ids, PyObject *netns_ids, PyObject *encode_extra,
                      PyObject **extra_text)
{
    if (!PyTuple_Check(event) || PyTuple_GET_SIZE(event) != EV_FIELDS) {
        PyErr_SetString(PyExc_TypeError, "events must be eventlog.events.Event tuples");
        return -1;
    }
    PyObject **field = &PyTuple_GET_ITEM(event, 0);
    /* Statement parameters: kind, mono_ns, pid, comm_id, netns_id, laddr, lport, raddr,
     * rport, sock_id, bytes_sent, bytes_received, extra (the order of ROW_COLUMNS). */
    if (bind_value(db, stmt, base + 1, field[EV_KIND]) < 0 ||
        bind_value(db, stmt, base + 2, field[EV_MONO_NS]) < 0 ||
        bind_value(db, stmt, base + 3, field[EV_PID]) < 0 ||
        bind_dictionary_id(db, stmt, base + 4, comm_ids, field[EV_COMM]) < 0 ||
        bind_dictionary_id(db, stmt, base + 5, netns_ids, field[EV_NETNS]) < 0)
        return -1;
    for (int i = EV_LADDR; i <= EV_BYTES_RECEIVED; i++) {
        if (bind_value(db, stmt, base + i + 1, field[i]) < 0)
            return -1;
    }
    PyObject *extra = field[EV_EXTRA];
    if (extra == Py_None)
        return bind_value(db, stmt, base + EV_EXTRA + 1, Py_None);
    *extra_text = PyObject_CallOneArg(encode_extra, extra);
    if (*extra_text == NULL)
        return -1;
    return bind_value(db, stmt, base + EV_EXTRA + 1, *extra_text);
}

static int check_bind(sqlite3 *db, int rc)
{
    if (rc == SQLITE_OK)
        return 0;
    set_sqlite_error(db, rc);
    return -1;
}

/* An unsigned kernel counter, NULL unless ``present``; like Python's driver, a value beyond
 * SQLite's 64-bit signed INTEGER is an OverflowError. */
static int bind_counter(sqlite3 *db, sqlite3_stmt *stmt, int index, uint64_t value, int present)
{
    if (!present)
        return check_bind(db, sqlite3_bind_null(stmt, index));
    if (value > (uint64_t)INT64_MAX) {
        PyErr_SetString(PyExc_OverflowError, "Python int too large to convert to SQLite INTEGER");
        return -1;
    }
    return check_bind(db, sqlite3_bind_int64(stmt, index, (sqlite3_int64)value));
}

/* A fast-kind raw event's row, bound after ``base`` as eventlog.kernel_records.decode_record would
 * have built it. Its addresses are bound in place: the run must outlive the step. */
static int bind_raw_event(sqlite3 *db, sqlite3_stmt *stmt, int base, const struct event *event,
                          struct value_caches *caches, PyObject *comm_ids, PyObject *netns_ids)
{
    int width = event->family == FAMILY_INET ? 4 : 16;
    int closing = event->kind == KIND_CLOSE;
    struct cached_value *comm = raw_comm(caches, event);
    struct cached_value *netns = comm ? netns_value(caches, event->netns) : NULL;
    PyObject *comm_id = netns ? cached_ident(comm, comm_ids) : NULL;
    PyObject *netns_id = comm_id ? cached_ident(netns, netns_ids) : NULL;
    if (netns_id == NULL)
        return -1;
    if (check_bind(db, sqlite3_bind_int(stmt, base + 1, event->kind)) < 0 ||
        bind_counter(db, stmt, base + 2, event->ts_ns, 1) < 0 ||
        bind_counter(db, stmt, base + 3, event->pid, event->pid != 0) < 0 ||
        bind_value(db, stmt, base + 4, comm_id) < 0 ||
        bind_value(db, stmt, base + 5, netns_id) < 0 ||
        check_bind(db, sqlite3_bind_blob(stmt, base + 6, event->laddr, width, SQLITE_STATIC)) < 0 ||
        check_bind(db, sqlite3_bind_int(stmt, base + 7, event->lport)) < 0 ||
        check_bind(db, sqlite3_bind_blob(stmt, base + 8, event->raddr, width, SQLITE_STATIC)) < 0 ||
        check_bind(db, sqlite3_bind_int(stmt, base + 9, event->rport)) < 0 ||
        bind_counter(db, stmt, base + 10, event->sock_id, event->sock_id != 0) < 0 ||
        bind_counter(db, stmt, base + 11, event->bytes_sent, closing) < 0 ||
        bind_counter(db, stmt, base + 12, event->bytes_received, closing) < 0)
        return -1;
    return check_bind(db, sqlite3_bind_null(stmt, base + 13));
}

static int step_insert(sqlite3 *db, sqlite3_stmt *stmt, int bound)
{
    int rc = bound;
    if (rc == 0) {
        rc = sqlite3_step(stmt);
        rc = rc == SQLITE_DONE ? 0 : (set_sqlite_error(db, rc), -1);
    }
    sqlite3_reset(stmt); /* no clear_bindings: every row binds all its parameters */
    return rc;
}

/* Rows go in groups of ``per_group`` through one statement of that many rows (each
 * execution of a statement costs about as much as binding a row again), and one at a time
 * only when fewer than a group are left. Objects whose memory a bound row points into are
 * held until the group is stepped. */
struct inserter {
    sqlite3 *db;
    sqlite3_stmt *one, *group;
    int per_group;
    int bound;           /* rows bound into ``group`` so far */
    Py_ssize_t left;     /* rows not yet bound */
    PyObject **held;     /* 2 * per_group slots */
    int held_count;
};

static void inserter_release(struct inserter *ins)
{
    while (ins->held_count > 0) {
        ins->held_count--; /* not inside Py_CLEAR: it evaluates its argument twice */
        Py_CLEAR(ins->held[ins->held_count]);
    }
}

/* The statement and parameter base for the next row. */
static sqlite3_stmt *inserter_next(struct inserter *ins, int *base)
{
    if (ins->bound > 0 || ins->left >= ins->per_group) {
        *base = ins->bound * EV_FIELDS;
        return ins->group;
    }
    *base = 0;
    return ins->one;
}

/* After a row was bound (``rc`` 0) or failed to bind into ``stmt``; ``keep`` and ``extra``
 * (new references or NULL) are what it points into. */
static int inserter_row_done(struct inserter *ins, sqlite3_stmt *stmt, int rc, PyObject *keep,
                             PyObject *extra)
{
    ins->left--;
    if (stmt == ins->one) {
        rc = step_insert(ins->db, stmt, rc);
        Py_XDECREF(keep);
        Py_XDECREF(extra);
        return rc;
    }
    if (keep != NULL)
        ins->held[ins->held_count++] = keep;
    if (extra != NULL)
        ins->held[ins->held_count++] = extra;
    if (rc == 0 && ++ins->bound < ins->per_group)
        return 0;
    ins->bound = 0;
    rc = step_insert(ins->db, stmt, rc);
    inserter_release(ins);
    return rc;
}

/* Insert one Event tuple. */
static int insert_tuple(struct inserter *ins, PyObject *event, PyObject *comm_ids,
                        PyObject *netns_ids, PyObject *encode_extra)
{
    PyObject *extra_text = NULL;
    int base;
    sqlite3_stmt *stmt = inserter_next(ins, &base);
    Py_INCREF(event); /* encode_extra may run arbitrary code */
    int rc = bind_event(ins->db, stmt, base, event, comm_ids, netns_ids, encode_extra,
                        &extra_text);
    return inserter_row_done(ins, stmt, rc, event, extra_text);
}

static int insert_run(struct inserter *ins, RawRun *run, struct value_caches *caches,
                      PyObject *comm_ids, PyObject *netns_ids, PyObject *encode_extra,
                      PyObject *decode_one)
{
    for (Py_ssize_t i = 0; i < run->count; i++) {
        const struct event *event = &run->events[i];
        int rc;
        if (is_fast_kind(event->kind)) {
            int base;
            sqlite3_stmt *stmt = inserter_next(ins, &base);
            rc = bind_raw_event(ins->db, stmt, base, event, caches, comm_ids, netns_ids);
            rc = inserter_row_done(ins, stmt, rc, NULL, NULL);
        } else {
            PyObject *decoded = decode_rare(decode_one, event);
            rc = decoded ? insert_tuple(ins, decoded, comm_ids, netns_ids, encode_extra) : -1;
            Py_XDECREF(decoded);
        }
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* The number of rows ``items`` (Event tuples and RawRuns) will insert; anything else counts
 * as one row, and insert_tuple refuses it. */
static Py_ssize_t count_rows(PyObject *items)
{
    Py_ssize_t rows = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        rows += PyObject_TypeCheck(item, &RawRunType) ? ((RawRun *)item)->count : 1;
    }
    return rows;
}

static int insert_items(struct inserter *ins, PyObject *items, PyObject *comm_ids,
                        PyObject *netns_ids, PyObject *encode_extra, PyObject *decode_one)
{
    struct value_caches caches;
    value_caches_init(&caches);
    int rc = 0;
    for (Py_ssize_t i = 0; rc == 0 && i < PyList_GET_SIZE(items); i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        if (PyObject_TypeCheck(item, &RawRunType))
            rc = insert_run(ins, (RawRun *)item, &caches, comm_ids, netns_ids, encode_extra,
                            decode_one);
        else
            rc = insert_tuple(ins, item, comm_ids, netns_ids, encode_extra);
    }
    value_caches_clear(&caches);
    return rc;
}

PyDoc_STRVAR(insert_events_doc,
             "insert_events(sql, group_sql, items, comm_ids, netns_ids, encode_extra, decode_one)"
             " -> int\n\n"
             "Insert ``items`` in order: Event tuples, and RawRuns whose events are inserted as\n"
             "eventlog.kernel_records would decode them (rare kinds through ``decode_one(raw_event)``).\n"
             "``sql`` inserts one row of the events table's 13 row columns, ``group_sql`` the\n"
             "same for several rows (a multiple of 13 parameters): rows go through it while a\n"
             "group's worth is left. comm and netns are bound as their ids in ``comm_ids`` and\n"
             "``netns_ids``, a non-empty extra as ``encode_extra(extra)``.\n"
             "Returns the number of rows inserted.");

static PyObject *Connection_insert_events(NativeConnection *self, PyObject *args)
{
    PyObject *sql, *group_sql, *items, *comm_ids, *netns_ids, *encode_extra, *decode_one;
    if (!PyArg_ParseTuple(args, "UUO!O!O!OO:insert_events", &sql, &group_sql, &PyList_Type,
                          &items, &PyDict_Type, &comm_ids, &PyDict_Type, &netns_ids,
                          &encode_extra, &decode_one) ||
        claim(self) < 0)
        return NULL;
    struct inserter ins = {.db = self->db};
    ins.one = prepare(self->db, sql);
    ins.group = ins.one ? prepare(self->db, group_sql) : NULL;
    if (ins.group == NULL) {
        sqlite3_finalize(ins.one);
        return release(self, NULL);
    }
    int group_params = sqlite3_bind_parameter_count(ins.group);
    if (sqlite3_bind_parameter_count(ins.one) != EV_FIELDS || group_params < EV_FIELDS ||
        group_params % EV_FIELDS) {
        sqlite3_finalize(ins.one);
        sqlite3_finalize(ins.group);
        PyErr_Format(PyExc_ValueError,
                     "the statements must take %d parameters, and a multiple of %d", EV_FIELDS,
                     EV_FIELDS);
        return release(self, NULL);
    }
    ins.per_group = group_params / EV_FIELDS;
    ins.held = PyMem_Calloc(2 * (size_t)ins.per_group, sizeof(PyObject *));
    /* A private copy: encode_extra and decode_one may run arbitrary code. */
    PyObject *snapshot = ins.held ? PyList_GetSlice(items, 0, PyList_GET_SIZE(items)) : NULL;
    Py_ssize_t rows = snapshot ? count_rows(snapshot) : 0;
    int rc = -1;
    if (snapshot != NULL) {
        ins.left = rows;
        rc = insert_items(&ins, snapshot, comm_ids, netns_ids, encode_extra, decode_one);
        if (rc == 0 && (ins.bound != 0 || ins.left != 0)) {
            PyErr_SetString(PyExc_SystemError, "insert_events: rows left unwritten");
            rc = -1;
        }
    } else if (ins.held == NULL) {
        PyErr_NoMemory();
    }
    if (ins.bound)
        sqlite3_reset(ins.group); /* a group cut short by an error */
    if (ins.held != NULL)
        inserter_release(&ins);
    PyMem_Free(ins.held);
    Py_XDECREF(snapshot);
    sqlite3_finalize(ins.one);
    sqlite3_finalize(ins.group);
    if (rc < 0)
        return release(self, NULL);
    return release(self, PyLong_FromSsize_t(rows));
}

static PyObject *Connection_in_transaction(NativeConnection *self, void *Py_UNUSED(closure))
{
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "the connection is in use by another thread");
        return NULL;
    }
    return PyBool_FromLong(self->db != NULL && !sqlite3_get_autocommit(self->db));
}

static PyMethodDef Connection_methods[] = {
    {"execute", (PyCFunction)Connection_execute, METH_VARARGS, execute_doc},
    {"executemany", (PyCFunction)Connection_executemany, METH_VARARGS, executemany_doc},
    {"insert_events", (PyCFunction)Connection_insert_events, METH_VARARGS, insert_events_doc},
    {"close", (PyCFunction)Connection_close, METH_NOARGS, "Close the connection."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Connection_getset[] = {
    {"in_transaction", (getter)Connection_in_transaction, NULL,
     "Whether a transaction is open.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ConnectionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "eventlog._native.Connection",
    .tp_doc = PyDoc_STR("Connection(path, busy_timeout_ms, synchronous): a SQLite connection "
                        "for appending to an existing log."),
    .tp_basicsize = sizeof(NativeConnection),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Connection_init,
    .tp_dealloc = (destructor)Connection_dealloc,
    .tp_methods = Connection_methods,
    .tp_getset = Connection_getset,
};

/* -- module ---------------------------------------------------------------------------------- */

PyDoc_STRVAR(batch_summary_doc,
             "batch_summary(items, decode_one) -> (min_mono_ns, max_mono_ns, comms, netns)\n\n"
             "Over a non-empty list of Event tuples and RawRuns: the time range, and the sets of\n"
             "process names and network namespaces (None included when some event has none).");

static void summarize_time(long long ts, int first, long long *low, long long *high)
{
    if (first || ts < *low)
        *low = ts;
    if (first || ts > *high)
        *high = ts;
}

static int summarize_tuple(PyObject *event, int first, long long *low, long long *high,
                           PyObject *comms, PyObject *namespaces)
{
    long long ts = PyLong_AsLongLong(PyTuple_GET_ITEM(event, EV_MONO_NS));
    if (ts == -1 && PyErr_Occurred())
        return -1;
    summarize_time(ts, first, low, high);
    return PySet_Add(comms, PyTuple_GET_ITEM(event, EV_COMM)) < 0 ||
                   PySet_Add(namespaces, PyTuple_GET_ITEM(event, EV_NETNS)) < 0
               ? -1
               : 0;
}

/* Add a cached value to ``set`` unless it already was in this call. */
static int summarize_value(struct cached_value *cached, PyObject *set)
{
    if (cached == NULL)
        return -1;
    if (cached->summarized)
        return 0;
    cached->summarized = 1;
    return PySet_Add(set, cached->value);
}

static int summarize_run(RawRun *run, PyObject *decode_one, struct value_caches *caches,
                         int *first, long long *low, long long *high, PyObject *comms,
                         PyObject *namespaces)
{
    for (Py_ssize_t i = 0; i < run->count; i++) {
        const struct event *event = &run->events[i];
        int rc;
        if (is_fast_kind(event->kind)) {
            if (event->ts_ns > (uint64_t)INT64_MAX) {
                PyErr_SetString(PyExc_OverflowError,
                                "Python int too large to convert to SQLite INTEGER");
                return -1;
            }
            summarize_time((long long)event->ts_ns, *first, low, high);
            rc = summarize_value(raw_comm(caches, event), comms) < 0 ||
                         summarize_value(netns_value(caches, event->netns), namespaces) < 0
                     ? -1
                     : 0;
        } else {
            PyObject *decoded = decode_rare(decode_one, event);
            rc = decoded ? summarize_tuple(decoded, *first, low, high, comms, namespaces) : -1;
            Py_XDECREF(decoded);
        }
        if (rc < 0)
            return -1;
        *first = 0;
    }
    return 0;
}

static PyObject *batch_summary(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *items, *decode_one;
    if (!PyArg_ParseTuple(args, "O!O:batch_summary", &PyList_Type, &items, &decode_one))
        return NULL;
    PyObject *snapshot = PyList_GetSlice(items, 0, PyList_GET_SIZE(items));
    PyObject *comms = PySet_New(NULL), *namespaces = PySet_New(NULL);
    if (snapshot == NULL || comms == NULL || namespaces == NULL)
        goto fail;
    struct value_caches caches;
    value_caches_init(&caches);
    long long low = 0, high = 0;
    int first = 1, rc = 0;
    for (Py_ssize_t i = 0; rc == 0 && i < PyList_GET_SIZE(snapshot); i++) {
        PyObject *item = PyList_GET_ITEM(snapshot, i);
        if (PyObject_TypeCheck(item, &RawRunType)) {
            rc = summarize_run((RawRun *)item, decode_one, &caches, &first, &low, &high, comms,
                               namespaces);
        } else if (PyTuple_Check(item) && PyTuple_GET_SIZE(item) == EV_FIELDS) {
            rc = summarize_tuple(item, first, &low, &high, comms, namespaces);
            first = 0;
        } else {
            PyErr_SetString(PyExc_TypeError, "items must be Event tuples or RawRuns");
            rc = -1;
        }
    }
    value_caches_clear(&caches);
    if (rc < 0)
        goto fail;
    if (first) {
        PyErr_SetString(PyExc_ValueError, "batch_summary needs at least one event");
        goto fail;
    }
    Py_DECREF(snapshot);
    return Py_BuildValue("(LLNN)", low, high, comms, namespaces);
fail:
    Py_XDECREF(snapshot);
    Py_XDECREF(comms);
    Py_XDECREF(namespaces);
    return NULL;
}

PyDoc_STRVAR(soft_heap_limit_doc,
             "soft_heap_limit() -> int\n\n"
             "This module's SQLite soft heap limit: with ``PRAGMA soft_heap_limit`` through\n"
             "Python's sqlite3 it tells whether both use the one SQLite library (two copies in\n"
             "one process would lose each other's file locks on the log).");

static PyObject *soft_heap_limit(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLongLong(sqlite3_soft_heap_limit64(-1));
}

static PyMethodDef module_methods[] = {
    {"soft_heap_limit", soft_heap_limit, METH_NOARGS, soft_heap_limit_doc},
    {"raw_run", raw_run, METH_O, raw_run_doc},
    {"merge_runs", merge_runs, METH_O, merge_runs_doc},
    {"batch_summary", batch_summary, METH_VARARGS, batch_summary_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "eventlog._native",
    .m_doc = PyDoc_STR("The recorder's per-event hot path in C (see eventlog/_native.c)."),
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
    PyObject *sqlite3_module = PyImport_ImportModule("sqlite3");
    if (sqlite3_module == NULL)
        return NULL;
    sqlite_error = PyObject_GetAttrString(sqlite3_module, "OperationalError");
    sqlite_integrity = PyObject_GetAttrString(sqlite3_module, "IntegrityError");
    sqlite_database = PyObject_GetAttrString(sqlite3_module, "DatabaseError");
    sqlite_programming = PyObject_GetAttrString(sqlite3_module, "ProgrammingError");
    Py_DECREF(sqlite3_module);
    if (sqlite_error == NULL || sqlite_integrity == NULL || sqlite_database == NULL ||
        sqlite_programming == NULL)
        return NULL;
    if (PyType_Ready(&ConnectionType) < 0 || PyType_Ready(&RawRunType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&native_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "Connection", (PyObject *)&ConnectionType) < 0 ||
        PyModule_AddObjectRef(module, "RawRun", (PyObject *)&RawRunType) < 0 ||
        PyModule_AddStringConstant(module, "sqlite_version", sqlite3_libversion()) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
