# cython: language_level=3, freethreading_compatible=True
# distutils: language = c++
"""The compiled core: engine, cursor, runner and reorder buffer.

``_core_py.py`` (and the modules it gathers) is the executable specification; this module is
its drop-in replacement: same names, signatures, docstrings, errors and behaviour.
"""

cimport cython
from cpython.list cimport PyList_GET_ITEM
from cpython.ref cimport PyObject, Py_DECREF, Py_INCREF, Py_XDECREF
from cython.operator cimport dereference as deref
from libc.stdint cimport uint64_t
from libcpp.functional cimport greater
from libcpp.unordered_map cimport unordered_map
from libcpp.utility cimport pair
from libcpp.vector cimport vector

import sys
import threading
import time

cdef extern from "<algorithm>" namespace "std" nogil:
    # Redeclared without ``except +``: on a uint64 array with std::greater they cannot throw.
    void push_heap[Iter, Compare](Iter first, Iter last, Compare comp)
    void pop_heap[Iter, Compare](Iter first, Iter last, Compare comp)

cdef extern from "Python.h":
    # Declared without an exception clause so that we can word the error ourselves.
    unsigned long long PyLong_AsUnsignedLongLong(object) noexcept
    PyObject* PyErr_Occurred()
    void PyErr_Clear()

from .._errors import PoolClosed, PoolTerminated, WorkerInitError

cdef object _sleep = time.sleep

include "_task.pxi"
include "_reorder.pxi"
include "_runner.pxi"
include "_engine.pxi"
