/* Rows of one SELECT over position ranges of a SQLite log, as columns in Arrow's layout.
 *
 * Reading the log is the cost of deriving anything from it: SQLite decodes every value of
 * every row, about a microsecond a row of the events table. Python's sqlite3 adds an object
 * per value on top (four times the cost), so the derivation reads here: each worker thread
 * opens its own read-only connection (no SQLite mutexes: one thread each), runs the caller's
 * statement for the ranges it takes (``?1 < position <= ?2``), and appends the values to
 * growable buffers without the GIL. Nothing here knows the schema: the statement and the
 * column types come from Python (eventlog/scan.py), which makes Arrow arrays of the buffers.
 *
 * Column types: 'i' a 64-bit integer, 'b' bytes (a BLOB or TEXT value). NULL is a cleared
 * validity bit. A value of any other storage class stops the scan with ScanError naming the
 * column and the row: the log's columns hold nothing else unless it was written by hand.
 *
 * Only the stable C API (Py_LIMITED_API 3.11).
 */
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030B0000
#endif
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_COLUMNS 64
#define MAX_THREADS 16
#define MAX_BINARY_BYTES ((int64_t)INT32_MAX) /* Arrow binary: 32-bit offsets */

static PyObject *ScanError;

/* -- growable buffers ------------------------------------------------------------------------ */

typedef struct {
    unsigned char *data;
    size_t size;
    size_t capacity;
} Buffer;

static int buffer_reserve(Buffer *buffer, size_t more)
{
    if (buffer->size + more <= buffer->capacity)
        return 0;
    size_t capacity = buffer->capacity ? buffer->capacity : 4096;
    while (capacity < buffer->size + more) {
        if (capacity > SIZE_MAX / 2)
            return -1;
        capacity *= 2;
    }
    unsigned char *grown = realloc(buffer->data, capacity);
    if (grown == NULL)
        return -1;
    buffer->data = grown;
    buffer->capacity = capacity;
    return 0;
}

static inline int buffer_append(Buffer *buffer, const void *bytes, size_t size)
{
    if (size == 0)
        return 0;
    if (buffer->size + size > buffer->capacity && buffer_reserve(buffer, size) < 0)
        return -1;
    memcpy(buffer->data + buffer->size, bytes, size);
    buffer->size += size;
    return 0;
}

/* A value of a size known where it is called: the copy is one store, not a call (a call per
   value was a tenth of a scan's time). */
#define BUFFER_APPEND_FIXED(buffer, value) \
    ((buffer)->size + sizeof(value) <= (buffer)->capacity \
         ? (memcpy((buffer)->data + (buffer)->size, &(value), sizeof(value)), \
            (buffer)->size += sizeof(value), 0) \
         : buffer_append((buffer), &(value), sizeof(value)))

static void buffer_free(Buffer *buffer)
{
    free(buffer->data);
    buffer->data = NULL;
    buffer->size = buffer->capacity = 0;
}

/* One column of one range: validity bitmap (LSB first, 1 = a value), values or offsets + bytes. */
typedef struct {
    Buffer validity;
    Buffer values; /* int64 values, or int32 offsets for bytes (starting with 0) */
    Buffer bytes;  /* the bytes of a bytes column */
    int64_t nulls;
} Column;

typedef struct {
    int64_t low, high; /* positions low < p <= high */
    int64_t rows;
    Column columns[MAX_COLUMNS];
} Range;

typedef struct {
    const char *path;
    const char *sql;
    const char *types;
    int ncolumns;
    int busy_timeout_ms;
    Range *ranges;
    Py_ssize_t nranges;
    Py_ssize_t next; /* the next range a worker takes, under lock */
    pthread_mutex_t lock;
    int failed;
    char error[512];
} Scan;

static void fail(Scan *scan, const char *message)
{
    pthread_mutex_lock(&scan->lock);
    if (!scan->failed) {
        scan->failed = 1;
        snprintf(scan->error, sizeof scan->error, "%s", message);
    }
    pthread_mutex_unlock(&scan->lock);
}

static Py_ssize_t take_range(Scan *scan)
{
    pthread_mutex_lock(&scan->lock);
    Py_ssize_t index = scan->failed || scan->next >= scan->nranges ? -1 : scan->next++;
    pthread_mutex_unlock(&scan->lock);
    return index;
}

static inline int set_validity(Column *column, int64_t row, int valid)
{
    if ((row & 7) == 0) {
        unsigned char zero = 0;
        if (BUFFER_APPEND_FIXED(&column->validity, zero) < 0)
            return -1;
    }
    if (valid)
        column->validity.data[row >> 3] |= (unsigned char)(1u << (row & 7));
    else
        column->nulls++;
    return 0;
}

static const char *storage_class(int type)
{
    switch (type) {
    case SQLITE_INTEGER: return "an integer";
    case SQLITE_FLOAT: return "a real number";
    case SQLITE_TEXT: return "text";
    case SQLITE_BLOB: return "a blob";
    default: return "NULL";
    }
}

/* Append the statement's current row to the range's columns; 0, or -1 with the scan failed. */
static int append_row(Scan *scan, sqlite3_stmt *stmt, Range *range)
{
    int64_t row = range->rows;
    for (int c = 0; c < scan->ncolumns; c++) {
        Column *column = &range->columns[c];
        /* The value once, then read through it: each sqlite3_column_* call looks the
           column up again (2M events of the synthetic log: 2.46 -> 1.98 s of CPU). */
        sqlite3_value *cell = sqlite3_column_value(stmt, c);
        int type = sqlite3_value_type(cell);
        int valid = type != SQLITE_NULL;
        if (scan->types[c] == 'i') {
            if (valid && type != SQLITE_INTEGER)
                goto wrong_type;
            int64_t value = valid ? sqlite3_value_int64(cell) : 0;
            if (BUFFER_APPEND_FIXED(&column->values, value) < 0)
                goto no_memory;
        } else {
            if (valid && type != SQLITE_BLOB && type != SQLITE_TEXT)
                goto wrong_type;
            const void *bytes = valid ? sqlite3_value_blob(cell) : NULL;
            int size = valid ? sqlite3_value_bytes(cell) : 0;
            if ((int64_t)column->bytes.size + size > MAX_BINARY_BYTES) {
                fail(scan, "a range holds more than 2 GiB of one column: scan smaller ranges");
                return -1;
            }
            if (buffer_append(&column->bytes, bytes, (size_t)size) < 0)
                goto no_memory;
            int32_t end = (int32_t)column->bytes.size;
            if (BUFFER_APPEND_FIXED(&column->values, end) < 0)
                goto no_memory;
        }
        if (set_validity(column, row, valid) < 0)
            goto no_memory;
        continue;
    wrong_type: {
        char message[256];
        snprintf(message, sizeof message, "column %d of a row at position <= %lld holds %s",
                 c + 1, (long long)range->high, storage_class(type));
        fail(scan, message);
        return -1;
    }
    no_memory:
        fail(scan, "out of memory");
        return -1;
    }
    range->rows++;
    return 0;
}

static int start_columns(Scan *scan, Range *range)
{
    for (int c = 0; c < scan->ncolumns; c++) {
        if (scan->types[c] == 'b') {
            int32_t zero = 0;
            if (buffer_append(&range->columns[c].values, &zero, sizeof zero) < 0) {
                fail(scan, "out of memory");
                return -1;
            }
        }
    }
    return 0;
}

static void scan_ranges(Scan *scan, sqlite3 *db)
{
    sqlite3_stmt *stmt = NULL;
    if (sqlite3_prepare_v2(db, scan->sql, -1, &stmt, NULL) != SQLITE_OK) {
        fail(scan, sqlite3_errmsg(db));
        return;
    }
    if (sqlite3_column_count(stmt) != scan->ncolumns) {
        fail(scan, "the statement's columns do not match the types given");
        sqlite3_finalize(stmt);
        return;
    }
    Py_ssize_t index;
    while ((index = take_range(scan)) >= 0) {
        Range *range = &scan->ranges[index];
        if (start_columns(scan, range) < 0)
            break;
        sqlite3_reset(stmt);
        sqlite3_bind_int64(stmt, 1, range->low);
        sqlite3_bind_int64(stmt, 2, range->high);
        int rc;
        while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
            if (append_row(scan, stmt, range) < 0)
                break;
        }
        if (scan->failed)
            break;
        if (rc != SQLITE_DONE) {
            fail(scan, sqlite3_errmsg(db));
            break;
        }
    }
    sqlite3_finalize(stmt);
}

static void *worker(void *argument)
{
    Scan *scan = argument;
    sqlite3 *db = NULL;
    int flags = SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(scan->path, &db, flags, NULL) != SQLITE_OK) {
        fail(scan, db ? sqlite3_errmsg(db) : "out of memory");
    } else {
        sqlite3_busy_timeout(db, scan->busy_timeout_ms);
        scan_ranges(scan, db);
    }
    sqlite3_close(db);
    return NULL;
}

/* -- back to Python ------------------------------------------------------------------------- */

/* A buffer handed to Python without a copy: (address, size, owner), the owner a capsule that
 * frees the memory when the last Arrow buffer made over it (pyarrow.foreign_buffer) is gone.
 * Copying every column into bytes objects was a second write of all that was read, and as
 * many page faults again (2M events: 0.4 s of 2.1). An empty buffer is (0, 0, None). */
static const char BUFFER_CAPSULE[] = "eventlog._scan.buffer";

static void free_capsule(PyObject *capsule)
{
    free(PyCapsule_GetPointer(capsule, BUFFER_CAPSULE));
}

static PyObject *handed_over(Buffer *buffer)
{
    if (buffer->data == NULL || buffer->size == 0)
        return Py_BuildValue("(nnO)", (Py_ssize_t)0, (Py_ssize_t)0, Py_None);
    PyObject *owner = PyCapsule_New(buffer->data, BUFFER_CAPSULE, free_capsule);
    if (owner == NULL)
        return NULL;
    PyObject *item = Py_BuildValue("(NnN)", PyLong_FromVoidPtr(buffer->data),
                                   (Py_ssize_t)buffer->size, owner);
    /* The capsule owns the memory from here (freed with it if the tuple was not made). */
    buffer->data = NULL;
    buffer->size = buffer->capacity = 0;
    return item;
}

/* (rows, [(nulls, validity, values[, bytes]) per column]) */
static PyObject *range_result(Scan *scan, Range *range)
{
    PyObject *columns = PyList_New(scan->ncolumns);
    if (columns == NULL)
        return NULL;
    for (int c = 0; c < scan->ncolumns; c++) {
        Column *column = &range->columns[c];
        PyObject *item;
        if (scan->types[c] == 'i')
            item = Py_BuildValue("(LNN)", (long long)column->nulls,
                                 handed_over(&column->validity), handed_over(&column->values));
        else
            item = Py_BuildValue("(LNNN)", (long long)column->nulls,
                                 handed_over(&column->validity), handed_over(&column->values),
                                 handed_over(&column->bytes));
        if (item == NULL) {
            Py_DECREF(columns);
            return NULL;
        }
        PyList_SetItem(columns, c, item); /* steals */
    }
    return Py_BuildValue("(LN)", (long long)range->rows, columns);
}

static void free_ranges(Scan *scan)
{
    if (scan->ranges == NULL)
        return;
    for (Py_ssize_t r = 0; r < scan->nranges; r++) {
        for (int c = 0; c < MAX_COLUMNS; c++) {
            buffer_free(&scan->ranges[r].columns[c].validity);
            buffer_free(&scan->ranges[r].columns[c].values);
            buffer_free(&scan->ranges[r].columns[c].bytes);
        }
    }
    free(scan->ranges);
    scan->ranges = NULL;
}

static int read_ranges(Scan *scan, PyObject *ranges)
{
    PyObject *sequence = PySequence_Fast(ranges, "ranges must be a sequence of (low, high)");
    if (sequence == NULL)
        return -1;
    scan->nranges = PySequence_Size(sequence);
    if (scan->nranges < 0) {
        Py_DECREF(sequence);
        return -1;
    }
    scan->ranges = calloc(scan->nranges ? (size_t)scan->nranges : 1, sizeof(Range));
    if (scan->ranges == NULL) {
        Py_DECREF(sequence);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t r = 0; r < scan->nranges; r++) {
        PyObject *pair = PySequence_GetItem(sequence, r);
        long long low, high;
        int ok = pair != NULL && PyArg_ParseTuple(pair, "LL", &low, &high);
        Py_XDECREF(pair);
        if (!ok) {
            Py_DECREF(sequence);
            return -1;
        }
        scan->ranges[r].low = low;
        scan->ranges[r].high = high;
    }
    Py_DECREF(sequence);
    return 0;
}

static PyObject *scan(PyObject *module, PyObject *args)
{
    (void)module;
    const char *path, *sql, *types;
    PyObject *ranges;
    int threads, busy_timeout_ms;
    if (!PyArg_ParseTuple(args, "sssOii", &path, &sql, &types, &ranges, &threads, &busy_timeout_ms))
        return NULL;
    size_t ncolumns = strlen(types);
    if (ncolumns == 0 || ncolumns > MAX_COLUMNS || strspn(types, "ib") != ncolumns) {
        PyErr_SetString(PyExc_ValueError, "types: 1 to 64 of 'i' (integer) or 'b' (bytes)");
        return NULL;
    }
    if (threads < 1 || threads > MAX_THREADS) {
        PyErr_SetString(PyExc_ValueError, "threads: 1 to 16");
        return NULL;
    }
    Scan state;
    memset(&state, 0, sizeof state);
    state.path = path;
    state.sql = sql;
    state.types = types;
    state.ncolumns = (int)ncolumns;
    state.busy_timeout_ms = busy_timeout_ms;
    if (read_ranges(&state, ranges) < 0) {
        free_ranges(&state);
        return NULL;
    }
    if (threads > state.nranges)
        threads = state.nranges > 0 ? (int)state.nranges : 1;
    pthread_mutex_init(&state.lock, NULL);
    pthread_t workers[MAX_THREADS];
    int started = 0;
    Py_BEGIN_ALLOW_THREADS
    for (; started < threads; started++) {
        if (pthread_create(&workers[started], NULL, worker, &state) != 0) {
            fail(&state, "cannot start a scan thread");
            break;
        }
    }
    for (int t = 0; t < started; t++)
        pthread_join(workers[t], NULL);
    Py_END_ALLOW_THREADS
    pthread_mutex_destroy(&state.lock);
    PyObject *result = NULL;
    if (state.failed) {
        PyErr_SetString(ScanError, state.error);
    } else {
        result = PyList_New(state.nranges);
        for (Py_ssize_t r = 0; result != NULL && r < state.nranges; r++) {
            PyObject *item = range_result(&state, &state.ranges[r]);
            if (item == NULL) {
                Py_CLEAR(result);
                break;
            }
            PyList_SetItem(result, r, item);
        }
    }
    free_ranges(&state);
    return result;
}

static PyObject *soft_heap_limit(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLongLong(sqlite3_soft_heap_limit64(-1));
}

static PyMethodDef methods[] = {
    {"soft_heap_limit", soft_heap_limit, METH_NOARGS,
     PyDoc_STR("soft_heap_limit() -> int\n\n"
               "This module's SQLite soft heap limit: when ``PRAGMA soft_heap_limit`` through "
               "Python's sqlite3 shows here, the two use one SQLite library "
               "(eventlog.native.shares_sqlite).")},
    {"scan", scan, METH_VARARGS,
     PyDoc_STR("scan(path, sql, types, ranges, threads, busy_timeout_ms) -> list\n\n"
               "Run ``sql`` (with ?1 < position <= ?2) for each (low, high) of ``ranges`` on "
               "``threads`` read-only connections to the SQLite file ``path``. For each range: "
               "(rows, columns), a column being (nulls, validity bitmap, int64 values) for "
               "type 'i' and (nulls, validity, int32 offsets, bytes) for 'b'; each buffer "
               "(address, size, owner), the memory freed when ``owner`` is.")},
    {NULL, NULL, 0, NULL},
};

static int exec_module(PyObject *module)
{
    ScanError = PyErr_NewException("eventlog._scan.ScanError", NULL, NULL);
    if (ScanError == NULL)
        return -1;
    if (PyModule_AddObjectRef(module, "ScanError", ScanError) < 0)
        return -1;
    return PyModule_AddStringConstant(module, "sqlite_version", sqlite3_libversion());
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
    {0, NULL},
};

static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT, "_scan",
    "Columns of the log's rows, read by threads without the GIL (see eventlog/scan.py).",
    0, methods, slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__scan(void)
{
    return PyModuleDef_Init(&module_definition);
}
