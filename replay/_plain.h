/* Making objects of a plain slots dataclass without calling it, for replay's C loops.
 *
 * A dataclass with slots=True whose generated __init__ only sets its fields: a C loop that
 * makes tens of thousands of them (a connection table's sockets and rows) can set the slots
 * itself, as the slot descriptors would, at a fraction of the cost of running __init__.
 * The caller vouches that the type is plain (replay.connections.plain_slots); this header
 * checks that every field is a writable object slot of that very type, and otherwise leaves
 * the caller to call the type.
 */
#ifndef REPLAY_PLAIN_H
#define REPLAY_PLAIN_H

#include <Python.h>
#include <structmember.h>

enum { PLAIN_MAX_FIELDS = 64 };

struct plain_type {
    PyTypeObject *type; /* NULL: not plain, call it */
    Py_ssize_t count;
    PyMemberDef *members[PLAIN_MAX_FIELDS]; /* owned by the type, valid while it lives */
};

/* Learn the slots of ``type`` for ``names`` (its fields, in the order values will come).
 * Leaves plain->type NULL if one is not a writable object slot of the type itself. Never
 * fails: what it cannot use is called instead. */
static void plain_learn(struct plain_type *plain, PyObject *type, PyObject *const *names,
                        Py_ssize_t count)
{
    plain->type = NULL;
    if (!PyType_Check(type) || count > PLAIN_MAX_FIELDS)
        return;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *descriptor = PyObject_GetAttr(type, names[i]);
        if (descriptor == NULL) {
            PyErr_Clear();
            return;
        }
        PyMemberDef *member = Py_IS_TYPE(descriptor, &PyMemberDescr_Type) &&
                                      PyDescr_TYPE(descriptor) == (PyTypeObject *)type
                                  ? ((PyMemberDescrObject *)descriptor)->d_member
                                  : NULL;
        Py_DECREF(descriptor);
        if (member == NULL || member->type != T_OBJECT_EX || (member->flags & READONLY))
            return;
        plain->members[i] = member;
    }
    plain->count = count;
    plain->type = (PyTypeObject *)type;
}

/* An object of the learnt type with ``values`` (its fields, in order) in its slots: a new
 * reference, or NULL with an error set. */
static PyObject *plain_make(const struct plain_type *plain, PyObject *const *values)
{
    PyObject *made = plain->type->tp_alloc(plain->type, 0);
    for (Py_ssize_t i = 0; made != NULL && i < plain->count; i++)
        if (PyMember_SetOne((char *)made, plain->members[i], values[i]) < 0)
            Py_CLEAR(made);
    return made;
}

#endif
