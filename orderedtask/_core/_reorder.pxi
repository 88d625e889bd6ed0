# The stand-alone reorder buffer (included by _core_c.pyx); _reorder_py.py is its specification.

# Runs at least this long are gathered with the GIL released; shorter ones are not worth
# the GIL hand-off (and the wait to get it back).
cdef Py_ssize_t NOGIL_RUN = 4096

ctypedef unordered_map[uint64_t, PyObject*] SlotMap


cdef inline void _heap_push(vector[uint64_t]& heap, uint64_t value) except *:
    heap.push_back(value)
    push_heap(heap.data(), heap.data() + heap.size(), greater[uint64_t]())


cdef inline void _heap_pop(vector[uint64_t]& heap) noexcept nogil:
    pop_heap(heap.data(), heap.data() + heap.size(), greater[uint64_t]())
    heap.pop_back()


def as_index(index):
    """``index`` as a task index: an ``int`` (not a ``bool``) in ``[0, 2**64)``, else raises."""
    return _as_index(index)


cdef uint64_t _as_index(object index) except? 0:
    cdef unsigned long long value
    if type(index) is not int and (isinstance(index, bool) or not isinstance(index, int)):
        raise TypeError(
            f"task index must be an int, not {type(index).__name__} ({index!r})")
    value = PyLong_AsUnsignedLongLong(index)
    if value == <unsigned long long>-1 and PyErr_Occurred() != NULL:
        PyErr_Clear()
        if index < 0:
            raise ValueError(f"task index {index} is negative; indices must be in [0, 2**64)")
        raise OverflowError(f"task index {index} does not fit in 64 bits; indices must be < 2**64")
    return value


@cython.final
cdef class ReorderBuffer:
    """Releases finished items in ascending index order.

    Invariant: an index is *pending* from ``accept`` until ``release`` hands its item back;
    ``release`` returns the longest run whose lowest finished index equals the lowest pending
    index. Indices need not be contiguous (gaps are legal), but each must be greater than the
    last released index and not pending already.

    Thread safety: every method and property may be called from any thread; one mutex per
    buffer serialises them.
    """

    # _lock protects every C field below, on GIL and free-threaded builds alike.
    cdef cython.pymutex _lock
    cdef vector[uint64_t] _pending_heap    # lowest pending (accepted, unreleased) index on top
    cdef vector[uint64_t] _finished_heap   # lowest finished, unreleased index on top
    cdef SlotMap _slots                    # pending index -> owned item, NULL until finished
    cdef uint64_t _last_released
    cdef bint _has_released
    cdef Py_ssize_t _accepted
    cdef Py_ssize_t _finished
    cdef Py_ssize_t _released

    def __init__(self):
        pass

    def __dealloc__(self):
        cdef pair[uint64_t, PyObject*] slot
        for slot in self._slots:
            if slot.second != NULL:
                Py_DECREF(<object>slot.second)
        self._slots.clear()

    def accept(self, index):
        """Register ``index`` as pending; its item is released only once it is finished.

        Raises ``TypeError`` (not an int, or a bool), ``ValueError`` (negative, not greater
        than the last released index, or already pending) or ``OverflowError`` (>= 2**64).
        The buffer is unchanged when it raises.
        """
        cdef uint64_t value = _as_index(index)
        with self._lock:
            if self._has_released and value <= self._last_released:
                raise ValueError(
                    f"task index {index} is not greater than the last released index "
                    f"{self._last_released}")
            if self._slots.count(value):
                raise ValueError(f"task index {index} is already pending (duplicate index)")
            _heap_push(self._pending_heap, value)
            self._slots[value] = NULL
            self._accepted += 1

    def finish(self, index, item):
        """Store ``item`` as the result of the pending ``index``.

        Raises ``ValueError`` if ``index`` is not pending or already finished, and the index
        errors of ``accept``. The buffer is unchanged when it raises.
        """
        cdef uint64_t value = _as_index(index)
        cdef SlotMap.iterator slot
        with self._lock:
            slot = self._slots.find(value)
            if slot == self._slots.end():
                raise ValueError(f"task index {index} is not pending (never accepted, or released)")
            if deref(slot).second != NULL:
                raise ValueError(f"task index {index} is already finished")
            _heap_push(self._finished_heap, value)
            Py_INCREF(item)
            deref(slot).second = <PyObject*>item
            self._finished += 1

    def release(self):
        """Remove and return, in ascending index order, every item that is now releasable."""
        cdef vector[PyObject*] run
        cdef list items = []
        cdef PyObject* item
        with self._lock:
            if self._finished_heap.empty():
                return items
            run.reserve(self._finished_heap.size())
            if <Py_ssize_t>self._finished_heap.size() >= NOGIL_RUN:
                with nogil:
                    self._collect_run(run)
            else:
                self._collect_run(run)
        # The references the buffer owned move into the list.
        for item in run:
            items.append(<object>item)
            Py_DECREF(<object>item)
        return items

    # Touches both heaps, _slots and the counters: the caller holds _lock.
    cdef void _collect_run(self, vector[PyObject*]& run) noexcept nogil:
        cdef uint64_t value
        cdef SlotMap.iterator slot
        while (not self._finished_heap.empty() and not self._pending_heap.empty()
               and self._finished_heap[0] == self._pending_heap[0]):
            value = self._finished_heap[0]
            _heap_pop(self._finished_heap)
            _heap_pop(self._pending_heap)
            slot = self._slots.find(value)
            run.push_back(deref(slot).second)
            self._slots.erase(slot)
            self._last_released = value
            self._has_released = True
            self._released += 1

    def clear(self):
        """Drop every pending index and finished item; return how many were pending.

        Counters and ``last_released`` are kept, so dropped indices are not accepted again
        unless they are above ``last_released``.
        """
        cdef pair[uint64_t, PyObject*] slot
        cdef list items = []
        cdef Py_ssize_t dropped
        with self._lock:
            dropped = self._slots.size()
            for slot in self._slots:
                if slot.second != NULL:
                    items.append(<object>slot.second)
                    Py_DECREF(<object>slot.second)
            self._slots.clear()
            self._pending_heap.clear()
            self._finished_heap.clear()
        return dropped

    def __len__(self):
        """Number of pending indices (accepted, not yet released)."""
        with self._lock:
            return self._slots.size()

    @property
    def head(self):
        """The lowest pending index, or None."""
        with self._lock:
            if self._pending_heap.empty():
                return None
            return self._pending_heap[0]

    @property
    def last_released(self):
        """The highest index released so far, or None."""
        with self._lock:
            return self._last_released if self._has_released else None

    @property
    def accepted(self):
        """How many indices were ever accepted."""
        with self._lock:
            return self._accepted

    @property
    def finished(self):
        """How many items were ever finished."""
        with self._lock:
            return self._finished

    @property
    def released(self):
        """How many items were ever released."""
        with self._lock:
            return self._released

    @property
    def held(self):
        """How many finished items wait for a lower index to finish (or for ``release``)."""
        with self._lock:
            return self._finished_heap.size()
