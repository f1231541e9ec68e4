#define PY_SSIZE_T_CLEAN
#include <Python.h>
static struct PyModuleDef cards_module = {PyModuleDef_HEAD_INIT, "_cards", NULL, -1, NULL};
PyMODINIT_FUNC PyInit__cards(void) { return PyModule_Create(&cards_module); }
