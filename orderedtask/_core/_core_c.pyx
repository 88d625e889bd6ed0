# cython: language_level=3, freethreading_compatible=True
# distutils: language = c++
"""The compiled core: engine, cursor, runner and reorder buffer.

``_core_py.py`` (and the modules it gathers) is the executable specification; this module is
its drop-in replacement: same names, signatures, docstrings, errors and behaviour.
"""

cimport cython
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
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

cdef extern from "_engine.h" namespace "ot" nogil:
    cppclass Mutex:
        void lock()
        void unlock()
        bint try_lock()
    cppclass Cond:
        void notify_one()
        void notify_all()
    int cond_wait(Cond&, Mutex&, double)
    void cpu_relax()
    double monotonic()
    void store_u64(uint64_t*, uint64_t)
    uint64_t load_u64(const uint64_t*)
    void store_int(int*, int)
    void bump_ssize(Py_ssize_t*)
    int load_int(const int*)

    enum SlotState:
        QUEUED
        RUNNING
        DONE
    cppclass Slot:
        uint64_t index
        Py_ssize_t weight
        PyObject* item
        vector[PyObject*] items
        vector[PyObject*] outputs
        vector[PyObject*] errors
        vector[uint64_t] labels
        Py_hash_t keyhash
        int state
    Slot* new_slot()
    void delete_slot(Slot*)
    PyObject* take_exception()
    cppclass SlotDeque:
        SlotDeque()
        bint empty()
        size_t size()
        Slot*& front()
        Slot*& back()
        Slot*& operator[](size_t)
        void push_back(Slot*)
        void push_front(Slot*)
        void pop_front()
        void clear()
    bint pending_contains(const SlotDeque&, uint64_t)
    void pending_insert(SlotDeque&, Slot*)

cdef extern from "Python.h":
    PyObject* PyIter_Next(object)
    unsigned long PyThread_get_thread_ident() nogil
    PyObject* PyObject_CallOneArg(object, object)
    PyObject* PyObject_Vectorcall(object, PyObject**, size_t, PyObject*)
    int PyErr_CheckSignals() except -1
    void* PyMem_RawMalloc(size_t) nogil
    void PyMem_RawFree(void*) nogil


cdef object _taken_exception():
    # The raised exception, which is cleared.
    cdef PyObject* raised = take_exception()
    exc = <object>raised
    Py_DECREF(exc)
    return exc


cdef object _sleep = time.sleep

include "_task.pxi"
include "_reorder.pxi"
include "_runner.pxi"
include "_engine.pxi"
