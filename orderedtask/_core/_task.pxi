# The compiled Task (included by _core_c.pyx); _task_py.py is its specification.


# Recycled memory for exact Tasks (Cython skips subclasses): a freed Task's slot serves the
# next one without the allocator, and, the point, without counting towards CPython's first GC
# threshold; a window of Tasks made in bursts by a producer would otherwise trigger a cyclic
# pass every ~700 of them, which promotes every live task and output (benchmarks/gc_passes.py).
# Sized to the largest default window. Cython turns it off on free-threaded builds.
@cython.freelist(2048)
cdef class Task:
    """One piece of work: an ``index`` that orders it and an ``input``.

    The pool's function writes ``output``; if the function raised, ``error`` holds the
    exception and the task is still yielded in its place.
    """

    cdef public object index
    cdef public object input
    cdef public object output
    cdef public object error

    def __init__(self, index, input=None):
        self.index = index
        self.input = input
        self.output = None
        self.error = None

    def __repr__(self):
        state = f"error={self.error!r}" if self.error is not None else f"output={self.output!r}"
        return f"Task(index={self.index!r}, input={self.input!r}, {state})"

    def __reduce__(self):
        # By way of the selector: the receiving side may run the other twin.
        from orderedtask import _core
        cls = None if type(self) is Task else type(self)
        return (_core.make_task, (cls, self.index, self.input), (self.output, self.error))

    def __setstate__(self, state):
        self.output, self.error = state
