/* replay._table: the connection table's pairing loop in C.
 *
 * A busy window holds tens of thousands of sockets; replay.connections.pair groups them by
 * their endpoints, orders each group by open time and builds one ConnectionRow per connection.
 * In Python that cost more than folding to the moment from a checkpoint. ``pair_rows`` does
 * the same here: it reads each SocketView's attributes, groups them in a dict keyed as
 * _pair_key keys them, and calls the row type with the fields _row computes.
 *
 * replay/connections.py stays the definition: tests/unit/replay/test_table_native.py checks
 * that both give the same rows. A view with a NAT translation, or a value of a type the loop
 * does not expect (an origin that is not two ints, a time that is not an int), makes it
 * decline (return None) before it builds anything, and the caller pairs in Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <stdlib.h>

#include "_plain.h"

/* Attribute names, row field names and constant texts, made once. */
/* The SocketView attributes read, by index. */
enum {
    ATTR_ROLE, ATTR_OPENED_NS, ATTR_CLOSED_NS, ATTR_ORIGIN, ATTR_LADDR, ATTR_LPORT, ATTR_RADDR,
    ATTR_RPORT, ATTR_HOST_ID, ATTR_NETNS, ATTR_NAT, ATTR_PID, ATTR_COMM, ATTR_SOURCE,
    ATTR_POSITIONS, ATTR_CLOSE_NOTE, ATTR_BYTES_SENT, ATTR_BYTES_RECEIVED, ATTR_COUNT
};
static const char *const ATTR_NAMES[ATTR_COUNT] = {
    "role", "opened_ns", "closed_ns", "origin", "laddr", "lport", "raddr", "rport", "host_id",
    "netns", "nat", "pid", "comm", "source", "positions", "close_note", "bytes_sent",
    "bytes_received",
};
static PyObject *attr_names[ATTR_COUNT]; /* the same, interned */
static PyObject *t_server, *t_open, *t_closed, *t_local, *t_outbound, *t_inbound, *t_plus,
    *t_semicolon;

/* Where a type's attributes live in its objects, when they are plain slots (a dataclass with
 * slots=True): read directly, that costs a tenth of a generic attribute read, on a loop that
 * reads a dozen per socket. Learnt for each call (types can change), for the first view's
 * type; views of any other type are read the generic way. */
struct slot_map {
    PyTypeObject *type;
    Py_ssize_t offsets[ATTR_COUNT]; /* -1: read it the generic way */
};

static void learn_slots(struct slot_map *map, PyTypeObject *type)
{
    map->type = type;
    int generic = type->tp_getattro != PyObject_GenericGetAttr; /* __getattribute__ of its own */
    for (int i = 0; i < ATTR_COUNT; i++) {
        map->offsets[i] = -1;
        PyObject *descriptor = generic ? NULL : PyObject_GetAttr((PyObject *)type, attr_names[i]);
        if (descriptor == NULL) {
            PyErr_Clear(); /* read generically, which raises what Python raises */
            continue;
        }
        /* A member of this type or a base: an offset into objects of ``type``. */
        if (Py_IS_TYPE(descriptor, &PyMemberDescr_Type) &&
            PyType_IsSubtype(type, PyDescr_TYPE(descriptor))) {
            PyMemberDef *member = ((PyMemberDescrObject *)descriptor)->d_member;
            if (member->type == T_OBJECT_EX)
                map->offsets[i] = member->offset;
        }
        Py_DECREF(descriptor);
    }
}

enum {
    ROW_ID, ROW_STATE, ROW_DIRECTION, ROW_HOST, ROW_CLIENT, ROW_SERVER, ROW_OPENED_NS,
    ROW_CLOSED_NS, ROW_CLIENT_PID, ROW_CLIENT_COMM, ROW_CLIENT_NETNS, ROW_SERVER_PID,
    ROW_SERVER_COMM, ROW_SERVER_NETNS, ROW_SOURCE, ROW_POSITIONS, ROW_NOTE, ROW_BYTES_SENT,
    ROW_BYTES_RECEIVED, ROW_CLIENT_IP, ROW_CLIENT_PORT, ROW_SERVER_IP, ROW_SERVER_PORT,
    ROW_CLIENT_LOCAL, ROW_SERVER_LOCAL, ROW_FIELD_COUNT
};

static const char *const ROW_FIELD_NAMES[ROW_FIELD_COUNT] = {
    "id", "state", "direction", "host", "client", "server", "opened_ns", "closed_ns",
    "client_pid", "client_comm", "client_netns", "server_pid", "server_comm", "server_netns",
    "source", "positions", "note", "bytes_sent", "bytes_received", "client_ip", "client_port",
    "server_ip", "server_port", "client_local", "server_local",
};
static PyObject *row_names[ROW_FIELD_COUNT]; /* the same, interned */

/* How to call the row type positionally: for each of its fields in order, the ROW_* value
 * that goes there, or -1 for None (the NAT fields, which this loop never fills); and for a
 * plain row type, its slots (replay/_plain.h). */
struct row_layout {
    PyObject *type;
    Py_ssize_t count;
    int source[PLAIN_MAX_FIELDS];
    struct plain_type plain;
    int frozen; /* the caller's word that rows cannot be assigned to once made */
};

/* One socket, as pairing needs it. */
struct side {
    PyObject *view;                /* borrowed from the tuple of the caller's views */
    const Py_ssize_t *slots;       /* the view type's slot offsets, or NULL */
    int is_server;
    int has_opened, has_closed;
    long long opened, closed;
    long long origin_pos, origin_ord;
    /* The endpoints as the socket saw them: texts borrowed from the address cache, ports
     * owned. */
    PyObject *client_text, *server_text, *client_port, *server_port;
    Py_ssize_t index; /* in the caller's list: ties keep it, as Python's stable sort does */
};

/* getattr(side's view, ATTR_NAMES[attr]): a new reference, or NULL with the error Python
 * raises. */
static PyObject *side_attr(const struct side *side, int attr)
{
    if (side->slots != NULL && side->slots[attr] >= 0) {
        PyObject *value = *(PyObject **)((char *)side->view + side->slots[attr]);
        if (value != NULL)
            return Py_NewRef(value);
    }
    return PyObject_GetAttr(side->view, attr_names[attr]);
}

static void side_clear(struct side *side)
{
    Py_CLEAR(side->client_port);
    Py_CLEAR(side->server_port);
}

/* A time that is None (*has = 0) or an int of 64 bits (*has = 1): 1, or 0 if it is neither
 * (nothing set). */
static int int_or_none(PyObject *value, int *has, long long *out)
{
    if (value == Py_None) {
        *has = 0;
        return 1;
    }
    if (!PyLong_CheckExact(value))
        return 0;
    int overflow = 0;
    *out = PyLong_AsLongLongAndOverflow(value, &overflow);
    *has = 1;
    return !overflow;
}

/* -1 on error (set), 0 to decline, 1 when read. */
static int read_time(const struct side *side, int name, int *has, long long *value)
{
    PyObject *attr = side_attr(side, name);
    if (attr == NULL)
        return -1;
    int outcome = int_or_none(attr, has, value);
    Py_DECREF(attr);
    return outcome;
}

static int read_origin(const struct side *side, long long *pos, long long *ord)
{
    PyObject *origin = side_attr(side, ATTR_ORIGIN);
    if (origin == NULL)
        return -1;
    int outcome = 0;
    if (PyTuple_CheckExact(origin) && PyTuple_GET_SIZE(origin) == 2 &&
        PyLong_CheckExact(PyTuple_GET_ITEM(origin, 0)) &&
        PyLong_CheckExact(PyTuple_GET_ITEM(origin, 1))) {
        int overflow_pos = 0, overflow_ord = 0;
        *pos = PyLong_AsLongLongAndOverflow(PyTuple_GET_ITEM(origin, 0), &overflow_pos);
        *ord = PyLong_AsLongLongAndOverflow(PyTuple_GET_ITEM(origin, 1), &overflow_ord);
        outcome = !overflow_pos && !overflow_ord;
    }
    Py_DECREF(origin);
    return outcome;
}

/* address_text and is_loopback of ``address``, through ``cache`` (address -> (text, loopback)):
 * a borrowed tuple, or NULL on error. */
static PyObject *address_info(PyObject *cache, PyObject *address, PyObject *address_text,
                              PyObject *is_loopback)
{
    PyObject *info = PyDict_GetItemWithError(cache, address);
    if (info != NULL || PyErr_Occurred())
        return info;
    PyObject *text = PyObject_CallOneArg(address_text, address);
    if (text != NULL && !PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "address_text must return a str");
        Py_CLEAR(text);
    }
    PyObject *loopback = text ? PyObject_CallOneArg(is_loopback, address) : NULL;
    if (loopback != NULL)
        info = PyTuple_Pack(2, text, loopback);
    Py_XDECREF(text);
    Py_XDECREF(loopback);
    if (info == NULL)
        return NULL;
    int rc = PyDict_SetItem(cache, address, info);
    Py_DECREF(info); /* the cache holds it */
    return rc < 0 ? NULL : info;
}

/* Read one view into ``side`` and return its pairing key (new), as _pair_key makes it; NULL
 * with *declined set to decline, NULL without on error. */
static PyObject *read_side(struct side *side, PyObject *view, PyObject *cache,
                           PyObject *address_text, PyObject *is_loopback, int *declined)
{
    side->view = view;
    PyObject *nat = side_attr(side, ATTR_NAT);
    if (nat == NULL)
        return NULL;
    int translated = nat != Py_None;
    Py_DECREF(nat);
    int rc = translated ? 0 : read_time(side, ATTR_OPENED_NS, &side->has_opened, &side->opened);
    if (rc > 0)
        rc = read_time(side, ATTR_CLOSED_NS, &side->has_closed, &side->closed);
    if (rc > 0)
        rc = read_origin(side, &side->origin_pos, &side->origin_ord);
    if (rc <= 0) {
        *declined = rc == 0;
        return NULL;
    }
    PyObject *role = side_attr(side, ATTR_ROLE);
    if (role == NULL)
        return NULL;
    side->is_server = PyObject_RichCompareBool(role, t_server, Py_EQ);
    Py_DECREF(role);
    if (side->is_server < 0)
        return NULL;

    /* One at a time: a read that fails stops the rest (they may run Python code). */
    static const int wanted[6] = {ATTR_LADDR, ATTR_RADDR, ATTR_LPORT,
                                  ATTR_RPORT, ATTR_HOST_ID, ATTR_NETNS};
    PyObject *attrs[6] = {0};
    int complete = 1;
    for (int i = 0; i < 6 && complete; i++)
        complete = (attrs[i] = side_attr(side, wanted[i])) != NULL;
    PyObject *laddr = attrs[0], *raddr = attrs[1], *lport = attrs[2], *rport = attrs[3];
    PyObject *host = attrs[4], *netns = attrs[5];
    PyObject *key = NULL;
    if (complete) {
        PyObject *local = address_info(cache, laddr, address_text, is_loopback);
        PyObject *remote = local ? address_info(cache, raddr, address_text, is_loopback) : NULL;
        int loopback = remote ? PyObject_IsTrue(PyTuple_GET_ITEM(local, 1)) : -1;
        if (loopback == 0)
            loopback = PyObject_IsTrue(PyTuple_GET_ITEM(remote, 1));
        if (loopback >= 0) {
            PyObject *ours = PyTuple_GET_ITEM(local, 0), *theirs = PyTuple_GET_ITEM(remote, 0);
            side->client_text = side->is_server ? theirs : ours;
            side->server_text = side->is_server ? ours : theirs;
            side->client_port = Py_NewRef(side->is_server ? rport : lport);
            side->server_port = Py_NewRef(side->is_server ? lport : rport);
            key = PyTuple_Pack(6, host, side->client_text, side->client_port, side->server_text,
                               side->server_port, loopback ? netns : Py_None);
        }
    }
    for (int i = 0; i < 6; i++)
        Py_XDECREF(attrs[i]);
    return key;
}

/* _open_order, then the caller's order. */
static int by_open_order(const void *a, const void *b)
{
    const struct side *x = *(const struct side *const *)a, *y = *(const struct side *const *)b;
    long long x_open = x->has_opened ? x->opened : -1, y_open = y->has_opened ? y->opened : -1;
    if (x_open != y_open)
        return x_open < y_open ? -1 : 1;
    if (x->origin_pos != y->origin_pos)
        return x->origin_pos < y->origin_pos ? -1 : 1;
    if (x->origin_ord != y->origin_ord)
        return x->origin_ord < y->origin_ord ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

static int overlaps(const struct side *a, const struct side *b)
{
    long long a_start = a->has_opened ? a->opened : -1, b_start = b->has_opened ? b->opened : -1;
    /* A socket not closed lasts for ever. */
    int a_before_b_ends = !b->has_closed || a_start <= b->closed;
    int b_before_a_ends = !a->has_closed || b_start <= a->closed;
    return a_before_b_ends && b_before_a_ends;
}

/* _endpoint: "[address]:port" for IPv6, "address:port" otherwise. */
static PyObject *endpoint(PyObject *text, PyObject *port)
{
    Py_ssize_t colon = PyUnicode_FindChar(text, ':', 0, PyUnicode_GET_LENGTH(text), 1);
    if (colon == -2)
        return NULL;
    return colon >= 0 ? PyUnicode_FromFormat("[%U]:%S", text, port)
                      : PyUnicode_FromFormat("%U:%S", text, port);
}

/* An object that can never refer to another: None, or an exact str, int (bool), float or
 * bytes. */
static int atomic_scalar(PyObject *value)
{
    return value == Py_None || PyUnicode_CheckExact(value) || PyLong_CheckExact(value) ||
           PyBool_Check(value) || PyFloat_CheckExact(value) || PyBytes_CheckExact(value);
}

/* An atomic scalar, or an exact tuple of them: immutable, and holding nothing that could lead
 * back to what holds it. */
static int atomic(PyObject *value)
{
    if (!PyTuple_CheckExact(value))
        return atomic_scalar(value);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(value); i++)
        if (!atomic_scalar(PyTuple_GET_ITEM(value, i)))
            return 0;
    return 1;
}

/* ``tuple`` as the collector would leave it: untracked if it holds only atomic scalars (it
 * can never be part of a cycle; CPython untracks such tuples itself, at its first pass over
 * them). A table's rows hold one each, and each would be walked by that pass. */
static PyObject *untracked(PyObject *tuple)
{
    if (tuple != NULL && PyObject_GC_IsTracked(tuple) && atomic(tuple))
        PyObject_GC_UnTrack(tuple);
    return tuple;
}

enum { FEW_POSITIONS = 8 };

/* The exact ints of ``positions`` (an exact list or tuple) into values/items after ``*count``:
 * 0, or -1 if it is anything else or holds too many (nothing set). */
static int few_positions(PyObject *positions, long long *values, PyObject **items, int *count)
{
    if (!PyList_CheckExact(positions) && !PyTuple_CheckExact(positions))
        return -1;
    Py_ssize_t size = PySequence_Fast_GET_SIZE(positions);
    if (size > FEW_POSITIONS - *count)
        return -1;
    for (Py_ssize_t i = 0; i < size; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(positions, i);
        int overflow;
        if (!PyLong_CheckExact(item))
            return -1;
        values[*count] = PyLong_AsLongLongAndOverflow(item, &overflow);
        if (overflow)
            return -1;
        items[(*count)++] = item;
    }
    return 0;
}

/* tuple(sorted(set(positions of each view))), for views holding a few ints each (all of
 * them, but for a hand-made view): sorted in place, the ints themselves reused. */
static PyObject *few_merged(const struct side *const *sides, int *fits)
{
    long long values[FEW_POSITIONS];
    PyObject *items[FEW_POSITIONS], *held[2] = {NULL, NULL}, *tuple = NULL;
    int count = 0;
    *fits = 0;
    for (int i = 0; i < 2 && sides[i] != NULL; i++) {
        held[i] = side_attr(sides[i], ATTR_POSITIONS); /* keeps its items alive */
        if (held[i] == NULL || few_positions(held[i], values, items, &count) < 0)
            goto done;
    }
    for (int i = 1; i < count; i++) /* insertion sort: a handful */
        for (int j = i; j > 0 && values[j - 1] > values[j]; j--) {
            long long value = values[j];
            PyObject *item = items[j];
            values[j] = values[j - 1], items[j] = items[j - 1];
            values[j - 1] = value, items[j - 1] = item;
        }
    int unique = 0;
    for (int i = 0; i < count; i++)
        if (!unique || values[i] != values[unique - 1])
            values[unique] = values[i], items[unique++] = items[i];
    *fits = 1;
    tuple = PyTuple_New(unique);
    for (int i = 0; tuple != NULL && i < unique; i++)
        PyTuple_SET_ITEM(tuple, i, Py_NewRef(items[i]));
done:
    Py_XDECREF(held[0]);
    Py_XDECREF(held[1]);
    return untracked(tuple);
}

/* tuple(sorted(set(positions of each view))) */
static PyObject *merged_positions(const struct side *first, const struct side *second)
{
    const struct side *sides[2] = {first, second};
    int fits;
    PyObject *few = few_merged(sides, &fits);
    if (few != NULL || fits || PyErr_Occurred())
        return few;
    PyObject *set = PySet_New(NULL);
    if (set == NULL)
        return NULL;
    for (int i = 0; i < 2 && sides[i] != NULL; i++) {
        PyObject *positions = side_attr(sides[i], ATTR_POSITIONS);
        PyObject *iterator = positions ? PyObject_GetIter(positions) : NULL;
        PyObject *item;
        int rc = iterator ? 0 : -1;
        while (iterator && (item = PyIter_Next(iterator)) != NULL) {
            rc = PySet_Add(set, item);
            Py_DECREF(item);
            if (rc < 0)
                break;
        }
        if (rc == 0 && PyErr_Occurred())
            rc = -1;
        Py_XDECREF(iterator);
        Py_XDECREF(positions);
        if (rc < 0) {
            Py_DECREF(set);
            return NULL;
        }
    }
    PyObject *list = PySequence_List(set), *tuple = NULL;
    Py_DECREF(set);
    if (list != NULL && PyList_Sort(list) == 0)
        tuple = PyList_AsTuple(list);
    Py_XDECREF(list);
    return untracked(tuple);
}

/* separator.join(sorted({a, b} without the false ones)), or None if that is empty. */
static PyObject *joined(PyObject *a, PyObject *b, PyObject *separator, int none_if_empty)
{
    PyObject *set = PySet_New(NULL);
    if (set == NULL)
        return NULL;
    PyObject *values[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        int truth = none_if_empty ? PyObject_IsTrue(values[i]) : 1;
        if (truth < 0 || (truth && PySet_Add(set, values[i]) < 0)) {
            Py_DECREF(set);
            return NULL;
        }
    }
    PyObject *list = PySequence_List(set);
    Py_DECREF(set);
    if (list == NULL || PyList_Sort(list) < 0) {
        Py_XDECREF(list);
        return NULL;
    }
    PyObject *result = PyUnicode_Join(separator, list);
    Py_DECREF(list);
    if (result != NULL && none_if_empty && PyUnicode_GET_LENGTH(result) == 0) {
        Py_DECREF(result);
        result = Py_NewRef(Py_None);
    }
    return result;
}

static PyObject *attr_or_none(const struct side *side, int attr)
{
    return side != NULL ? side_attr(side, attr) : Py_NewRef(Py_None);
}

/* Set values[field] to ``expression`` (a new reference), or stop at the first failure: what
 * comes after may run Python code, which must not run with an exception set. */
#define SET(field, expression)                                                                 \
    do {                                                                                       \
        if ((values[field] = (expression)) == NULL)                                            \
            goto done;                                                                         \
    } while (0)

/* The fields _row computes from both sides, when both ends are sockets of this host. */
static int local_fields(PyObject **values, const struct side *client, const struct side *server,
                        int is_open)
{
    PyObject *pair[2] = {NULL, NULL};
    int rc = -1;
    /* min of the opens, max of the closes: the first of equal ones, as min and max keep */
    const struct side *opened = client->has_opened ? client : server;
    if (client->has_opened && server->has_opened && server->opened < client->opened)
        opened = server;
    const struct side *closed = server->closed > client->closed ? server : client;
    SET(ROW_OPENED_NS, opened->has_opened ? side_attr(opened, ATTR_OPENED_NS)
                                          : Py_NewRef(Py_None));
    SET(ROW_CLOSED_NS, is_open ? Py_NewRef(Py_None) : side_attr(closed, ATTR_CLOSED_NS));
    if ((pair[0] = side_attr(client, ATTR_SOURCE)) == NULL || (pair[1] = side_attr(server, ATTR_SOURCE)) == NULL)
        goto done;
    SET(ROW_SOURCE, joined(pair[0], pair[1], t_plus, 0));
    Py_CLEAR(pair[0]);
    Py_CLEAR(pair[1]);
    if ((pair[0] = side_attr(client, ATTR_CLOSE_NOTE)) == NULL ||
        (pair[1] = side_attr(server, ATTR_CLOSE_NOTE)) == NULL)
        goto done;
    SET(ROW_NOTE, joined(pair[0], pair[1], t_semicolon, 1));
    SET(ROW_BYTES_SENT, side_attr(client, ATTR_BYTES_SENT));
    SET(ROW_BYTES_RECEIVED, side_attr(client, ATTR_BYTES_RECEIVED));
    rc = 0;
done:
    Py_XDECREF(pair[0]);
    Py_XDECREF(pair[1]);
    return rc;
}

/* The fields _row computes from its one side. */
static int single_fields(PyObject **values, const struct side *side, int is_client)
{
    PyObject *note = NULL;
    int rc = -1;
    SET(ROW_OPENED_NS, side_attr(side, ATTR_OPENED_NS));
    SET(ROW_CLOSED_NS, side_attr(side, ATTR_CLOSED_NS));
    SET(ROW_SOURCE, side_attr(side, ATTR_SOURCE));
    if ((note = side_attr(side, ATTR_CLOSE_NOTE)) == NULL)
        goto done;
    int truth = PyObject_IsTrue(note);
    if (truth < 0)
        goto done;
    SET(ROW_NOTE, Py_NewRef(truth ? note : Py_None));
    /* What the client sent is what the server received. */
    SET(ROW_BYTES_SENT, side_attr(side, is_client ? ATTR_BYTES_SENT : ATTR_BYTES_RECEIVED));
    SET(ROW_BYTES_RECEIVED, side_attr(side, is_client ? ATTR_BYTES_RECEIVED : ATTR_BYTES_SENT));
    rc = 0;
done:
    Py_XDECREF(note);
    return rc;
}

/* Leave ``row`` out of the cyclic collector if all of its fields (``values``, what it was
 * made with: the slots were set to them) are atomic: a frozen row holding only strs, ints,
 * None and tuples of those can never be part of a cycle, as CPython reasons for the tuples
 * it untracks. A table's rows would otherwise all be walked by the first collection after
 * they are made. */
static void untrack_if_atomic(PyObject *row, PyObject *const *values, Py_ssize_t count)
{
    if (!PyObject_GC_IsTracked(row))
        return;
    for (Py_ssize_t i = 0; i < count; i++)
        if (!atomic(values[i]))
            return;
    PyObject_GC_UnTrack(row);
}

/* The row of ``client`` and ``server`` (either may be NULL, not both): _row's fields. */
static PyObject *make_row(const struct row_layout *layout, const struct side *client,
                          const struct side *server)
{
    PyObject *values[ROW_FIELD_COUNT] = {0};
    PyObject *row = NULL;
    const struct side *first = client;
    if (client == NULL ||
        (server != NULL && (server->origin_pos < client->origin_pos ||
                            (server->origin_pos == client->origin_pos &&
                             server->origin_ord < client->origin_ord))))
        first = server;
    const struct side *seen = client != NULL ? client : first;
    PyObject *c = client ? client->view : NULL, *s = server ? server->view : NULL;
    int is_open = (client && !client->has_closed) || (server && !server->has_closed);

    SET(ROW_ID, PyUnicode_FromFormat("%lld.%lld", first->origin_pos, first->origin_ord));
    SET(ROW_STATE, Py_NewRef(is_open ? t_open : t_closed));
    SET(ROW_DIRECTION, Py_NewRef(c && s ? t_local : (c ? t_outbound : t_inbound)));
    SET(ROW_HOST, side_attr(first, ATTR_HOST_ID));
    SET(ROW_CLIENT, endpoint(seen->client_text, seen->client_port));
    SET(ROW_SERVER, endpoint(seen->server_text, seen->server_port));
    SET(ROW_CLIENT_PID, attr_or_none(client, ATTR_PID));
    SET(ROW_CLIENT_COMM, attr_or_none(client, ATTR_COMM));
    SET(ROW_CLIENT_NETNS, attr_or_none(client, ATTR_NETNS));
    SET(ROW_SERVER_PID, attr_or_none(server, ATTR_PID));
    SET(ROW_SERVER_COMM, attr_or_none(server, ATTR_COMM));
    SET(ROW_SERVER_NETNS, attr_or_none(server, ATTR_NETNS));
    SET(ROW_POSITIONS,
        merged_positions(c && s ? client : first, c && s ? server : NULL)); /* as Python */
    if ((c && s ? local_fields(values, client, server, is_open)
                : single_fields(values, first, c != NULL)) < 0)
        goto done;
    SET(ROW_CLIENT_IP, Py_NewRef(seen->client_text));
    SET(ROW_CLIENT_PORT, Py_NewRef(seen->client_port));
    SET(ROW_SERVER_IP, Py_NewRef(seen->server_text));
    SET(ROW_SERVER_PORT, Py_NewRef(seen->server_port));
    SET(ROW_CLIENT_LOCAL, PyBool_FromLong(c != NULL));
    SET(ROW_SERVER_LOCAL, PyBool_FromLong(s != NULL));
    PyObject *args[PLAIN_MAX_FIELDS];
    for (Py_ssize_t i = 0; i < layout->count; i++)
        args[i] = layout->source[i] >= 0 ? values[layout->source[i]] : Py_None;
    row = layout->plain.type != NULL
              ? plain_make(&layout->plain, args)
              : PyObject_Vectorcall(layout->type, args, (size_t)layout->count, NULL);
    if (row != NULL && layout->frozen && layout->plain.type != NULL) /* no __init__ of its own */
        untrack_if_atomic(row, args, layout->count);
done:
    for (int i = 0; i < ROW_FIELD_COUNT; i++)
        Py_XDECREF(values[i]);
    return row;
}
#undef SET

static int append_row(PyObject *rows, const struct row_layout *layout, const struct side *client,
                      const struct side *server)
{
    PyObject *row = make_row(layout, client, server);
    if (row == NULL)
        return -1;
    int rc = PyList_Append(rows, row);
    Py_DECREF(row);
    return rc;
}

/* The rows of one group of sockets with the same endpoints: the k-th client (by open time)
 * with the k-th server, when their lives overlap. */
static int pair_group(PyObject *rows, const struct row_layout *layout, struct side **members,
                      Py_ssize_t count, struct side **scratch)
{
    if (count == 1) {
        struct side *only = members[0];
        return append_row(rows, layout, only->is_server ? NULL : only,
                          only->is_server ? only : NULL);
    }
    qsort(members, (size_t)count, sizeof *members, by_open_order);
    struct side **clients = scratch, **servers = scratch + count;
    Py_ssize_t client_count = 0, server_count = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (members[i]->is_server)
            servers[server_count++] = members[i];
        else
            clients[client_count++] = members[i];
    }
    Py_ssize_t ranks = client_count > server_count ? client_count : server_count;
    for (Py_ssize_t rank = 0; rank < ranks; rank++) {
        struct side *client = rank < client_count ? clients[rank] : NULL;
        struct side *server = rank < server_count ? servers[rank] : NULL;
        int rc;
        if (client != NULL && server != NULL && !overlaps(client, server)) {
            rc = append_row(rows, layout, client, NULL);
            if (rc == 0)
                rc = append_row(rows, layout, NULL, server);
        } else {
            rc = append_row(rows, layout, client, server);
        }
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* The row type's fields, in the order it takes them: -1 on error (set). */
static int read_layout(struct row_layout *layout, PyObject *field_names)
{
    layout->count = PyTuple_GET_SIZE(field_names);
    if (layout->count > PLAIN_MAX_FIELDS) {
        PyErr_SetString(PyExc_ValueError, "too many row fields");
        return -1;
    }
    for (Py_ssize_t i = 0; i < layout->count; i++) {
        PyObject *name = PyTuple_GET_ITEM(field_names, i);
        layout->source[i] = -1;
        for (int field = 0; field < ROW_FIELD_COUNT; field++) {
            int same = PyObject_RichCompareBool(name, row_names[field], Py_EQ);
            if (same < 0)
                return -1;
            if (same)
                layout->source[i] = field;
        }
        if (layout->source[i] < 0 && !PyUnicode_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "row field names must be str");
            return -1;
        }
    }
    return 0;
}

PyDoc_STRVAR(pair_rows_doc,
             "pair_rows(views, row_type, field_names, address_text, is_loopback, plain=False,\n"
             "          frozen=False) -> list | None\n\n"
             "replay.connections.pair over ``views`` (SocketView objects): the rows, grouped\n"
             "in the order of each group's first socket, made by calling ``row_type`` with its\n"
             "fields (``field_names``, in order) positionally; fields this loop does not fill\n"
             "(the NAT ones) get None. ``plain``: the caller's word that ``row_type`` is a\n"
             "dataclass with slots whose __init__ only sets them; rows are then made by setting\n"
             "the slots (if every field is one). ``frozen``: the caller's word that rows cannot\n"
             "be assigned to; those whose fields hold no container are then left out of the\n"
             "cyclic collector. None when a view has a NAT translation or a value of a type\n"
             "the loop does not expect.");

static PyObject *pair_rows(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *views, *row_type, *field_names, *address_text, *is_loopback;
    int plain = 0, frozen = 0;
    if (!PyArg_ParseTuple(args, "O!OO!OO|pp", &PyList_Type, &views, &row_type, &PyTuple_Type,
                          &field_names, &address_text, &is_loopback, &plain, &frozen))
        return NULL;
    struct row_layout layout = {.type = row_type, .frozen = frozen};
    if (read_layout(&layout, field_names) < 0)
        return NULL;
    if (plain)
        plain_learn(&layout.plain, row_type, &PyTuple_GET_ITEM(field_names, 0), layout.count);
    /* A tuple of the views, so that they stay alive and in place whatever the callbacks do
     * to the caller's list. */
    PyObject *items = PySequence_Tuple(views);
    if (items == NULL)
        return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(items);
    struct slot_map map = {0};
    struct side *sides = PyMem_Calloc((size_t)count + 1, sizeof *sides);
    Py_ssize_t *group_of = PyMem_Calloc((size_t)count + 1, sizeof *group_of);
    struct side **members = PyMem_Calloc((size_t)count + 1, sizeof *members);
    struct side **scratch = PyMem_Calloc((size_t)count * 2 + 1, sizeof *scratch);
    Py_ssize_t *starts = NULL;
    PyObject *groups = PyDict_New(), *cache = PyDict_New();
    PyObject *rows = NULL, *result = NULL;
    int declined = 0;
    if (!sides || !group_of || !members || !scratch || !groups || !cache) {
        PyErr_NoMemory();
        goto done;
    }
    if (count > 0)
        learn_slots(&map, Py_TYPE(PyTuple_GET_ITEM(items, 0)));
    /* Read every view and number the groups in the order their first socket comes. */
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *view = PyTuple_GET_ITEM(items, i);
        sides[i].index = i;
        sides[i].slots = Py_TYPE(view) == map.type ? map.offsets : NULL;
        PyObject *key = read_side(&sides[i], view, cache, address_text, is_loopback, &declined);
        if (key == NULL)
            goto done;
        PyObject *group = PyDict_GetItemWithError(groups, key);
        if (group == NULL && !PyErr_Occurred()) {
            PyObject *number = PyLong_FromSsize_t(PyDict_GET_SIZE(groups));
            if (number != NULL && PyDict_SetItem(groups, key, number) == 0)
                group = number;
            Py_XDECREF(number); /* the dict holds it */
        }
        Py_DECREF(key);
        if (group == NULL)
            goto done;
        group_of[i] = PyLong_AsSsize_t(group);
    }
    /* Members of each group, contiguous and in the views' order. */
    Py_ssize_t group_count = PyDict_GET_SIZE(groups);
    starts = PyMem_Calloc((size_t)group_count + 2, sizeof *starts);
    if (starts == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++)
        starts[group_of[i] + 2]++;
    for (Py_ssize_t g = 2; g < group_count + 2; g++)
        starts[g] += starts[g - 1];
    for (Py_ssize_t i = 0; i < count; i++)
        members[starts[group_of[i] + 1]++] = &sides[i];
    rows = PyList_New(0);
    if (rows == NULL)
        goto done;
    for (Py_ssize_t g = 0; g < group_count; g++) {
        if (pair_group(rows, &layout, members + starts[g], starts[g + 1] - starts[g], scratch) < 0)
            goto done;
    }
    result = Py_NewRef(rows);
done:
    if (result == NULL && declined && !PyErr_Occurred())
        result = Py_NewRef(Py_None);
    for (Py_ssize_t i = 0; sides != NULL && i < count; i++)
        side_clear(&sides[i]);
    PyMem_Free(sides);
    PyMem_Free(group_of);
    PyMem_Free(members);
    PyMem_Free(scratch);
    PyMem_Free(starts);
    Py_XDECREF(groups);
    Py_XDECREF(cache); /* after the sides: their texts are borrowed from it */
    Py_XDECREF(rows);
    Py_DECREF(items); /* last: the sides borrow their views from it */
    return result;
}

/* -- the table's order ----------------------------------------------------------------------- */

/* A row's ConnectionRow.sort_key: (opened_ns or -1 when None, closed_ns or 0, id), and its
 * index (Python's sort is stable). */
struct row_key {
    long long opened, closed;
    PyObject *id; /* owned: a getattr could hand out a new str each time */
    Py_ssize_t index;
};

static int compare_row_keys(const void *a, const void *b)
{
    const struct row_key *x = a, *y = b;
    if (x->opened != y->opened)
        return x->opened < y->opened ? -1 : 1;
    if (x->closed != y->closed)
        return x->closed < y->closed ? -1 : 1;
    int order = PyUnicode_Compare(x->id, y->id); /* exact strs: cannot fail */
    if (order != 0)
        return order;
    return (x->index > y->index) - (x->index < y->index);
}

/* An int or None (as ``none``) attribute: 0, -1 on error (set), -2 to decline. */
static int time_attr(PyObject *row, PyObject *name, long long none, long long *out)
{
    PyObject *value = PyObject_GetAttr(row, name);
    if (value == NULL)
        return -1;
    int has = 0, read = int_or_none(value, &has, out);
    Py_DECREF(value);
    if (read && !has)
        *out = none;
    return read ? 0 : -2;
}

PyDoc_STRVAR(sorted_rows_doc,
             "sorted_rows(rows) -> list | None\n\n"
             "sorted(rows, key=ConnectionRow.sort_key), with the keys compared in C. None if a\n"
             "row's opened_ns or closed_ns is not an int (or None) of 64 bits, or its id not a\n"
             "str.");

static PyObject *sorted_rows(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *list;
    if (!PyArg_ParseTuple(args, "O!", &PyList_Type, &list))
        return NULL;
    PyObject *rows = PySequence_Tuple(list); /* the rows stay alive whatever getattr does */
    if (rows == NULL)
        return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(rows);
    struct row_key *keys = PyMem_Calloc((size_t)count + 1, sizeof *keys);
    PyObject *result = NULL;
    int rc = keys ? 0 : -1;
    if (keys == NULL)
        PyErr_NoMemory();
    for (Py_ssize_t i = 0; rc == 0 && i < count; i++) {
        PyObject *row = PyTuple_GET_ITEM(rows, i);
        keys[i].index = i;
        rc = time_attr(row, row_names[ROW_OPENED_NS], -1, &keys[i].opened);
        if (rc == 0)
            rc = time_attr(row, row_names[ROW_CLOSED_NS], 0, &keys[i].closed);
        if (rc == 0) {
            keys[i].id = PyObject_GetAttr(row, row_names[ROW_ID]);
            rc = keys[i].id == NULL ? -1 : (PyUnicode_CheckExact(keys[i].id) ? 0 : -2);
        }
    }
    if (rc == 0) {
        qsort(keys, (size_t)count, sizeof *keys, compare_row_keys);
        result = PyList_New(count);
        for (Py_ssize_t i = 0; result != NULL && i < count; i++)
            PyList_SET_ITEM(result, i, Py_NewRef(PyTuple_GET_ITEM(rows, keys[i].index)));
    } else if (rc == -2) {
        result = Py_NewRef(Py_None);
    }
    for (Py_ssize_t i = 0; keys != NULL && i < count; i++)
        Py_XDECREF(keys[i].id);
    PyMem_Free(keys);
    Py_DECREF(rows);
    return result;
}

static PyMethodDef module_methods[] = {
    {"sorted_rows", sorted_rows, METH_VARARGS, sorted_rows_doc},
    {"pair_rows", pair_rows, METH_VARARGS, pair_rows_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef table_module = {
    PyModuleDef_HEAD_INIT, "replay._table", "The connection table's pairing loop in C.", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

static int intern_all(void)
{
    struct {
        PyObject **slot;
        const char *text;
    } names[] = {
        {&t_server, "server"}, {&t_open, "open"}, {&t_closed, "closed"}, {&t_local, "local"},
        {&t_outbound, "outbound"}, {&t_inbound, "inbound"}, {&t_plus, "+"},
        {&t_semicolon, "; "},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        *names[i].slot = PyUnicode_InternFromString(names[i].text);
        if (*names[i].slot == NULL)
            return -1;
    }
    for (int i = 0; i < ATTR_COUNT; i++) {
        attr_names[i] = PyUnicode_InternFromString(ATTR_NAMES[i]);
        if (attr_names[i] == NULL)
            return -1;
    }
    for (int i = 0; i < ROW_FIELD_COUNT; i++) {
        row_names[i] = PyUnicode_InternFromString(ROW_FIELD_NAMES[i]);
        if (row_names[i] == NULL)
            return -1;
    }
    return 0;
}

PyMODINIT_FUNC PyInit__table(void)
{
    if (intern_all() < 0)
        return NULL;
    return PyModule_Create(&table_module);
}
