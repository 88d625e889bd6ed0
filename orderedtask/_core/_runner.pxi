# How a worker runs one item (included by _core_c.pyx); _runner_py.py is its specification.

#: ``fn(workerlocal, task)``: the Pool's function, which writes ``task.output``.
POOL = 0
#: ``output = fn(item)``: the function of ``map``, ``map_tasks`` and ``decode``.
MAP = 1

cdef enum:
    _POOL = 0
    _MAP = 1


@cython.final
cdef class Runner:
    """Runs ``fn`` on one item, retrying an ``Exception`` up to ``retries`` times.

    ``kind`` is ``POOL`` (``fn(workerlocal, task)``; ``task.output`` is reset before each
    retry, and the last error is stored on ``task.error``) or ``MAP`` (``fn(item)`` returns the
    output). A ``BaseException`` that is not an ``Exception`` is never retried: it is stored
    like an error, and the consumer raises it. ``describe(index, item, error)``, if given,
    replaces the final ``Exception`` of a ``MAP`` item by a more telling one.
    """

    cdef readonly int kind
    cdef readonly object fn
    cdef readonly Py_ssize_t retries
    cdef readonly double backoff
    cdef readonly object describe

    def __init__(self, kind, fn, retries=0, backoff=0.0, describe=None):
        if kind != POOL and kind != MAP:
            raise ValueError(f"kind must be POOL or MAP, not {kind!r}")
        self.kind = kind
        self.fn = fn
        self.retries = retries
        self.backoff = backoff
        self.describe = describe

    cdef int _run_task(self, object workerlocal, object task) except -1:
        # Only an error in this function's own bookkeeping escapes (it fails the batch).
        cdef PyObject* args[2]
        cdef PyObject* result
        cdef Py_ssize_t attempt = 0
        args[0] = <PyObject*>workerlocal
        args[1] = <PyObject*>task
        while True:
            result = PyObject_Vectorcall(self.fn, args, 2, NULL)
            if result != NULL:
                Py_DECREF(<object>result)
                return 0
            failure = _taken_exception()
            if isinstance(failure, Exception) and attempt < self.retries:
                attempt += 1
                if type(task) is Task:
                    (<Task>task).output = None
                else:
                    task.output = None
                if self.backoff:
                    _sleep(self.backoff)
                continue
            if type(task) is Task:
                (<Task>task).error = failure
            else:
                task.error = failure
            return 0

    cdef PyObject* _run_value(self, uint64_t index, object item, PyObject** error) noexcept:
        """A new reference to ``fn(item)``; or NULL, with ``error`` a new reference."""
        cdef PyObject* result = PyObject_CallOneArg(self.fn, item)
        if result != NULL:
            return result
        return self._failed_value(index, item, error)

    cdef PyObject* _failed_value(self, uint64_t index, object item, PyObject** error) noexcept:
        # fn raised (the exception is set): retry an Exception, then describe it.
        cdef PyObject* result
        cdef Py_ssize_t attempt = 0
        failure = _taken_exception()
        while isinstance(failure, Exception) and attempt < self.retries:
            attempt += 1
            if self.backoff:
                try:
                    _sleep(self.backoff)
                except BaseException as exc:
                    failure = exc
                    break
            result = PyObject_CallOneArg(self.fn, item)
            if result != NULL:
                return result
            failure = _taken_exception()
        if self.describe is not None and isinstance(failure, Exception):
            try:
                failure = self.describe(index, item, failure)
            except Exception:
                pass  # a failing describe keeps the original error
        Py_INCREF(failure)
        error[0] = <PyObject*>failure
        return NULL

    def run_task(self, workerlocal, task):
        """``POOL``: run ``fn(workerlocal, task)``; what it raises goes to ``task.error``."""
        self._run_task(workerlocal, task)

    def run_value(self, index, item):
        """``MAP``: return ``(fn(item), None)``, or ``(None, the error)``."""
        cdef PyObject* error = NULL
        cdef PyObject* result = self._run_value(_as_index(index), item, &error)
        if result != NULL:
            output = <object>result
            Py_DECREF(output)
            return output, None
        failure = <object>error
        Py_DECREF(failure)
        return None, failure

    def run(self, workerlocal, indices, items):
        """Run a batch away from the engine (a process, an Executor): one outcome per item.

        ``POOL`` items are the tasks' inputs: each gets a fresh ``Task`` here, and its outcome
        is ``(task.output, task.error)``.
        """
        cdef list outcomes = []
        if self.kind == _POOL:
            for index, value in zip(indices, items):
                task = Task(index, value)
                self._run_task(workerlocal, task)
                outcomes.append((task.output, task.error))
            return outcomes
        for index, item in zip(indices, items):
            outcomes.append(self.run_value(index, item))
        return outcomes

    def __reduce__(self):
        # By way of the selector: the receiving side may run the other twin.
        from orderedtask import _core
        return (_core.make_runner, (self.kind, self.fn, self.retries, self.backoff,
                                    self.describe))
