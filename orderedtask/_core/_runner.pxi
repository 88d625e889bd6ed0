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
        cdef Py_ssize_t attempt = 0
        while True:
            try:
                self.fn(workerlocal, task)
                return 0
            except Exception as exc:
                if attempt < self.retries:
                    attempt += 1
                    if type(task) is Task:
                        (<Task>task).output = None
                    else:
                        task.output = None
                    if self.backoff:
                        _sleep(self.backoff)
                    continue
                failure = exc
            except BaseException as exc:
                failure = exc
            if type(task) is Task:
                (<Task>task).error = failure
            else:
                task.error = failure
            return 0

    cdef object _run_value(self, uint64_t index, object item, PyObject** error):
        """``(output, NULL)``, or ``(None, a new reference to the error)``."""
        cdef Py_ssize_t attempt = 0
        while True:
            try:
                return self.fn(item)
            except Exception as exc:
                if attempt < self.retries:
                    attempt += 1
                    if self.backoff:
                        _sleep(self.backoff)
                    continue
                failure = exc
                if self.describe is not None:
                    try:
                        failure = self.describe(index, item, exc)
                    except Exception:
                        failure = exc
                Py_INCREF(failure)
                error[0] = <PyObject*>failure
                return None
            except BaseException as exc:
                Py_INCREF(exc)
                error[0] = <PyObject*>exc
                return None

    def run_task(self, workerlocal, task):
        """``POOL``: run ``fn(workerlocal, task)``; what it raises goes to ``task.error``."""
        self._run_task(workerlocal, task)

    def run_value(self, index, item):
        """``MAP``: return ``(fn(item), None)``, or ``(None, the error)``."""
        cdef PyObject* error = NULL
        output = self._run_value(_as_index(index), item, &error)
        if error == NULL:
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
        return (Runner, (self.kind, self.fn, self.retries, self.backoff, self.describe))
