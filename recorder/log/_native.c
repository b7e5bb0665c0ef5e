/* recorder.log._native: the SQLite append path in C.
 *
 * Python's sqlite3 module converts every bound parameter through generic object checks; for
 * the events table (13 values a row, tens of thousands of rows a second under load) that
 * cost about 3.4 us a row, four times what SQLite itself needs. This module binds event
 * tuples straight into a prepared statement.
 *
 * It opens a connection of its own (it never reaches into the sqlite3 module's objects) and
 * offers only what recorder.log.sqlite.SqliteAppender uses: execute, executemany and
 * insert_events. SQLite errors are raised as the sqlite3 module's exception classes with
 * SQLite's message, so the callers map them exactly as they map the Python driver's.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <sqlite3.h>

/* Fields of recorder.events.Event, in order. */
enum {
    EV_KIND, EV_MONO_NS, EV_PID, EV_COMM, EV_NETNS, EV_LADDR, EV_LPORT, EV_RADDR, EV_RPORT,
    EV_SOCK_ID, EV_BYTES_SENT, EV_BYTES_RECEIVED, EV_EXTRA, EV_FIELDS
};

static PyObject *sqlite_error;      /* sqlite3.OperationalError */
static PyObject *sqlite_integrity;  /* sqlite3.IntegrityError */
static PyObject *sqlite_database;   /* sqlite3.DatabaseError */

/* Opened without SQLite's own mutexes (they cost more than the binding they protect) and
 * used with the GIL released while a statement steps: ``busy`` keeps a second thread from
 * entering while one is inside. */
typedef struct {
    PyObject_HEAD
    sqlite3 *db;
    int busy;
} NativeConnection;

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

/* Bind one Python value: None, int, float, str or bytes. Blobs and text point into ``value``,
 * which the caller keeps alive until the statement has been stepped. */
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
        rc = sqlite3_bind_blob(stmt, index, PyBytes_AS_STRING(value),
                               (int)PyBytes_GET_SIZE(value), SQLITE_STATIC);
    } else if (PyUnicode_Check(value)) {
        Py_ssize_t size;
        const char *text = PyUnicode_AsUTF8AndSize(value, &size);
        if (text == NULL)
            return -1;
        rc = sqlite3_bind_text(stmt, index, text, (int)size, SQLITE_STATIC);
    } else if (PyFloat_Check(value)) {
        rc = sqlite3_bind_double(stmt, index, PyFloat_AS_DOUBLE(value));
    } else {
        PyErr_Format(PyExc_TypeError, "parameter %d: cannot bind a %.100s", index,
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    if (rc != SQLITE_OK) {
        set_sqlite_error(db, rc);
        return -1;
    }
    return 0;
}

static int bind_sequence(sqlite3 *db, sqlite3_stmt *stmt, PyObject *params)
{
    PyObject *fast = PySequence_Fast(params, "parameters must be a sequence");
    if (fast == NULL)
        return -1;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(fast);
    if (count != sqlite3_bind_parameter_count(stmt)) {
        PyErr_Format(sqlite_error, "the statement takes %d parameters, %zd given",
                     sqlite3_bind_parameter_count(stmt), count);
        Py_DECREF(fast);
        return -1;
    }
    PyObject **items = PySequence_Fast_ITEMS(fast);
    for (Py_ssize_t i = 0; i < count; i++) {
        if (bind_value(db, stmt, (int)i + 1, items[i]) < 0) {
            Py_DECREF(fast);
            return -1;
        }
    }
    Py_DECREF(fast);
    return 0;
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
    int rc = sqlite3_prepare_v2(db, text, -1, &stmt, NULL);
    if (rc != SQLITE_OK) {
        set_sqlite_error(db, rc);
        sqlite3_finalize(stmt);
        return NULL;
    }
    if (stmt == NULL)
        PyErr_SetString(sqlite_error, "empty statement");
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
    if (self->db != NULL) {
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
    /* An existing log only: the store created and migrated it. */
    Py_BEGIN_ALLOW_THREADS
    rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    Py_END_ALLOW_THREADS
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
    PyObject *rows = PyList_New(0);
    if (rows == NULL || (params != NULL && bind_sequence(self->db, stmt, params) < 0) ||
        step_all(self->db, stmt, rows) < 0) {
        Py_XDECREF(rows);
        rows = NULL;
    }
    sqlite3_finalize(stmt);
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
        failed = bind_sequence(self->db, stmt, params) < 0 || step_all(self->db, stmt, NULL) < 0;
        sqlite3_reset(stmt);
        Py_DECREF(params);
    }
    sqlite3_finalize(stmt);
    Py_DECREF(iterator);
    if (failed || PyErr_Occurred())
        return release(self, NULL);
    return release(self, Py_NewRef(Py_None));
}

/* The id of ``value`` in a dictionary cache (recorder.log.dictionary.Dictionary.ids). */
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

static int bind_event(sqlite3 *db, sqlite3_stmt *stmt, PyObject *event, PyObject *comm_ids,
                      PyObject *netns_ids, PyObject *encode_extra, PyObject **extra_text)
{
    if (!PyTuple_Check(event) || PyTuple_GET_SIZE(event) != EV_FIELDS) {
        PyErr_SetString(PyExc_TypeError, "events must be recorder.events.Event tuples");
        return -1;
    }
    PyObject **field = &PyTuple_GET_ITEM(event, 0);
    /* Statement parameters: kind, mono_ns, pid, comm_id, netns_id, laddr, lport, raddr,
     * rport, sock_id, bytes_sent, bytes_received, extra (the order of ROW_COLUMNS). */
    if (bind_value(db, stmt, 1, field[EV_KIND]) < 0 ||
        bind_value(db, stmt, 2, field[EV_MONO_NS]) < 0 ||
        bind_value(db, stmt, 3, field[EV_PID]) < 0 ||
        bind_dictionary_id(db, stmt, 4, comm_ids, field[EV_COMM]) < 0 ||
        bind_dictionary_id(db, stmt, 5, netns_ids, field[EV_NETNS]) < 0)
        return -1;
    for (int i = EV_LADDR; i <= EV_BYTES_RECEIVED; i++) {
        if (bind_value(db, stmt, i + 1, field[i]) < 0)
            return -1;
    }
    PyObject *extra = field[EV_EXTRA];
    if (extra == Py_None)
        return bind_value(db, stmt, EV_EXTRA + 1, Py_None);
    *extra_text = PyObject_CallOneArg(encode_extra, extra);
    if (*extra_text == NULL)
        return -1;
    return bind_value(db, stmt, EV_EXTRA + 1, *extra_text);
}

PyDoc_STRVAR(insert_events_doc,
             "insert_events(sql, events, comm_ids, netns_ids, encode_extra) -> int\n\n"
             "Insert ``events`` (recorder.events.Event tuples) with ``sql``, whose 13 parameters\n"
             "are the events table's row columns. comm and netns are bound as their ids in\n"
             "``comm_ids`` and ``netns_ids``; a non-empty extra as ``encode_extra(extra)``.\n"
             "Returns the number of rows inserted.");

static PyObject *Connection_insert_events(NativeConnection *self, PyObject *args)
{
    PyObject *sql, *events, *comm_ids, *netns_ids, *encode_extra;
    if (!PyArg_ParseTuple(args, "UO!O!O!O:insert_events", &sql, &PyList_Type, &events,
                          &PyDict_Type, &comm_ids, &PyDict_Type, &netns_ids, &encode_extra) ||
        claim(self) < 0)
        return NULL;
    sqlite3_stmt *stmt = prepare(self->db, sql);
    if (stmt == NULL)
        return release(self, NULL);
    if (sqlite3_bind_parameter_count(stmt) != EV_FIELDS) {
        sqlite3_finalize(stmt);
        PyErr_Format(PyExc_ValueError, "the statement must take %d parameters", EV_FIELDS);
        return release(self, NULL);
    }
    Py_ssize_t count = PyList_GET_SIZE(events), done = 0;
    for (; done < count; done++) {
        PyObject *event = PyList_GET_ITEM(events, done);
        PyObject *extra_text = NULL;
        Py_INCREF(event); /* encode_extra may run arbitrary code */
        int rc = bind_event(self->db, stmt, event, comm_ids, netns_ids, encode_extra,
                            &extra_text);
        if (rc == 0) {
            rc = sqlite3_step(stmt);
            rc = rc == SQLITE_DONE ? 0 : (set_sqlite_error(self->db, rc), -1);
        }
        sqlite3_reset(stmt);
        sqlite3_clear_bindings(stmt);
        Py_XDECREF(extra_text);
        Py_DECREF(event);
        if (rc < 0)
            break;
        if (count != PyList_GET_SIZE(events)) {
            PyErr_SetString(PyExc_RuntimeError, "events changed size during insert_events");
            break;
        }
    }
    sqlite3_finalize(stmt);
    if (done < count)
        return release(self, NULL);
    return release(self, PyLong_FromSsize_t(done));
}

static PyObject *Connection_in_transaction(NativeConnection *self, void *Py_UNUSED(closure))
{
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
    .tp_name = "recorder.log._native.Connection",
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

PyDoc_STRVAR(mono_range_doc,
             "mono_range(events) -> tuple[int, int]\n\n"
             "The smallest and largest mono_ns of a non-empty list of events.");

static PyObject *mono_range(PyObject *Py_UNUSED(module), PyObject *events)
{
    if (!PyList_Check(events) || PyList_GET_SIZE(events) == 0) {
        PyErr_SetString(PyExc_ValueError, "mono_range needs a non-empty list of events");
        return NULL;
    }
    long long low = 0, high = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(events); i++) {
        PyObject *event = PyList_GET_ITEM(events, i);
        if (!PyTuple_Check(event) || PyTuple_GET_SIZE(event) <= EV_MONO_NS) {
            PyErr_SetString(PyExc_TypeError, "events must be recorder.events.Event tuples");
            return NULL;
        }
        long long mono = PyLong_AsLongLong(PyTuple_GET_ITEM(event, EV_MONO_NS));
        if (mono == -1 && PyErr_Occurred())
            return NULL;
        if (i == 0 || mono < low)
            low = mono;
        if (i == 0 || mono > high)
            high = mono;
    }
    return Py_BuildValue("(LL)", low, high);
}

static PyMethodDef module_methods[] = {
    {"mono_range", mono_range, METH_O, mono_range_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "recorder.log._native",
    .m_doc = PyDoc_STR("The SQLite append path in C (see recorder/log/_native.c)."),
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
    Py_DECREF(sqlite3_module);
    if (sqlite_error == NULL || sqlite_integrity == NULL || sqlite_database == NULL)
        return NULL;
    if (PyType_Ready(&ConnectionType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&native_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "Connection", (PyObject *)&ConnectionType) < 0 ||
        PyModule_AddStringConstant(module, "sqlite_version", sqlite3_libversion()) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
