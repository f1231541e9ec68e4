/* The binding's Python helpers: buffer checks through the buffer protocol (no numpy headers), and
 * the table of games as module attributes. Included by binding.c only. */
#ifndef FASTVLMRL_PY_GLUE_H
#define FASTVLMRL_PY_GLUE_H
#include <Python.h>
#include <ctype.h>
#include <string.h>
#include "games.h"

/* Get a C-contiguous buffer and check its element kind, item size and shape. `kinds` lists the
 * acceptable struct format characters. Raises ValueError naming the argument on mismatch. */
static int get_buffer(PyObject *obj, Py_buffer *view, const char *name, const char *kinds, Py_ssize_t itemsize,
                      int writable, int ndim, const Py_ssize_t *shape) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be a C-contiguous%s array, got %R", name,
                     writable ? " writable" : "", (PyObject *)Py_TYPE(obj));
        return -1;
    }
    const char *fmt = view->format ? view->format : "B";
    if (*fmt == '@' || *fmt == '=' || *fmt == '<') fmt++;
    if (view->itemsize != itemsize || strlen(fmt) != 1 || !strchr(kinds, fmt[0])) {
        PyErr_Format(PyExc_ValueError, "%s has the wrong dtype (buffer format '%s', item size %zd)", name,
                     view->format ? view->format : "B", view->itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    if (view->ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must have %d dimensions, got %d", name, ndim, view->ndim);
        PyBuffer_Release(view);
        return -1;
    }
    for (int d = 0; d < ndim; d++) {
        if (view->shape[d] != shape[d]) {
            PyErr_Format(PyExc_ValueError, "%s has shape[%d] = %zd, expected %zd", name, d, view->shape[d], shape[d]);
            PyBuffer_Release(view);
            return -1;
        }
    }
    return 0;
}

/* A game's state layout as {field: (start, length)}. */
static PyObject *layout_dict(const StateField *f) {
    PyObject *d = PyDict_New();
    for (; d && f->name; f++) {
        PyObject *v = Py_BuildValue("(ii)", f->start, f->length);
        if (!v || PyDict_SetItemString(d, f->name, v) < 0) Py_CLEAR(d);
        Py_XDECREF(v);
    }
    return d;
}

/* The games' ids (GAME_IDS {name: id}, and each as an upper-case constant: NUMBERLINE, ...) and
 * their state layouts (LAYOUTS {name: {field: (start, length)}}). */
static int add_games(PyObject *m) {
    PyObject *ids = PyDict_New(), *layouts = PyDict_New();
    int ok = ids && layouts;
    for (int g = 0; ok && g < NUM_GAMES; g++) {
        char upper[32];
        size_t k = 0;
        for (; GAMES[g]->name[k] && k < sizeof upper - 1; k++) upper[k] = (char)toupper((unsigned char)GAMES[g]->name[k]);
        upper[k] = 0;
        PyObject *id = PyLong_FromLong(g), *layout = layout_dict(GAMES[g]->layout);
        ok = id && layout && PyDict_SetItemString(ids, GAMES[g]->name, id) == 0 &&
             PyDict_SetItemString(layouts, GAMES[g]->name, layout) == 0 && PyModule_AddIntConstant(m, upper, g) == 0;
        Py_XDECREF(id);
        Py_XDECREF(layout);
    }
    if (ok && PyModule_AddObject(m, "GAME_IDS", ids) == 0) ids = NULL;
    else ok = 0;
    if (ok && PyModule_AddObject(m, "LAYOUTS", layouts) == 0) layouts = NULL;
    else ok = 0;
    Py_XDECREF(ids);
    Py_XDECREF(layouts);
    return ok ? 0 : -1;
}

#endif
