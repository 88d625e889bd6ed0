# The engine, its batches and its cursor (included by _core_c.pyx); _engine_py.py is the
# specification: same names, signatures, docstrings, errors and behaviour. The data flow and
# the accounting rule are described there.
#
# Locking, for every method below: _mutex guards every C field of Engine. It is taken with
# the GIL held (try_lock first; on contention the GIL is released while waiting for it), and
# nothing under it runs Python code, allocates Python objects or drops a reference: those
# happen before locking or after unlocking. So finalizers and signal handlers never run with
# the mutex held, and a Ctrl-C cannot land half-way through an update. Waits release the GIL
# and the mutex; the main thread's waits wake every WAIT_SLICE seconds to run signal handlers.

#: The most items a worker takes at once, whatever the measured cost.
MAX_BATCH = 4096
cdef Py_ssize_t _MAX_BATCH = 4096
# How long the main thread waits before it looks for a signal (Ctrl-C) to handle.
cdef double WAIT_SLICE = 0.05
# How often a thread tries the mutex again before it releases the GIL to wait for it.
cdef int LOCK_SPINS = 200
# Slots kept for reuse, per engine.
cdef size_t FREE_SLOTS = 8192

cdef unsigned long _main_thread = threading.main_thread().ident

#: How many items the feeder pulls at once from a source whose pulls never block.
PULL_BATCH = 256
cdef Py_ssize_t _PULL_BATCH = 256
#: The most items the consumer runs at once at level 0 (whole slots): no other thread to hand
#: them to, so nothing to amortize but a lock round, and outputs made in one go stay alive
#: until yielded, where a cyclic-GC pass would find them (a loop's outputs die at once).
INLINE_BATCH = 32
cdef Py_ssize_t _INLINE_BATCH = 32
#: A level that parks no worker (fixed pools).
UNLIMITED = sys.maxsize
cdef Py_ssize_t _UNLIMITED = sys.maxsize
# Iterators whose next() never waits for anything: the feeder may pull many in a row.
cdef frozenset NEVER_BLOCKING = frozenset(type(iter(items)) for items in (
    [], (), range(0), range(2**64), "", b"", bytearray(), {}, {}.values(), {}.items(), set(),
    frozenset())) | {type(reversed([])), type(reversed(range(0)))}


cdef uint64_t _index_of_pair(object pair, uint64_t position) except? 0:
    if type(pair) is not tuple or len(<tuple>pair) != 2:
        raise TypeError(f"indexed=True: the iterable must yield (index, input) pairs, got "
                        f"{type(pair).__name__} at position {position}")
    return _as_index((<tuple>pair)[0])


class _NotReady:
    __slots__ = ()

    def __repr__(self):
        return "NOT_READY"


#: ``Cursor.poll`` returns this when nothing is released yet (the waker will be called).
NOT_READY = _NotReady()
cdef object _NOTHING = object()  # Cursor._bypass: not possible now

# Why a producer or consumer call is refused; raised after the mutex is released.
cdef enum Refusal:
    OK = 0
    CLOSED
    NOT_ABOVE_RELEASED
    DUPLICATE
    TIMED_OUT
    DEADLOCK_CONSUMER
    DEADLOCK_WORKER
    INTERRUPTED  # a signal handler raised: the exception is set

# What _next_released found.
cdef enum Found:
    GOT = 0
    END
    STOPPED
    NOTHING_YET
    FAILED  # an exception is set
    INLINE  # level 0: a batch for the consumer to run is in cursor._inline
    PULL    # level 0, nothing in flight: the consumer may pull the source itself

# Cursor states.
cdef enum CursorState:
    NEW = 0
    ACTIVE
    FINISHED
    REFUSED


cdef inline void _clear_slot(Slot* slot) noexcept:
    """Drop every reference a slot holds (GIL held, mutex not held); keep its capacity."""
    cdef PyObject* obj
    Py_XDECREF(slot.item)
    slot.item = NULL
    for obj in slot.items:
        Py_XDECREF(obj)
    for obj in slot.outputs:
        Py_XDECREF(obj)
    for obj in slot.errors:
        Py_XDECREF(obj)
    slot.items.clear()
    slot.outputs.clear()
    slot.errors.clear()
    slot.labels.clear()


cdef inline void _drop_slot(Slot* slot) noexcept:
    _clear_slot(slot)
    delete_slot(slot)


cdef void _drop_slots(vector[Slot*]& slots) noexcept:
    cdef Slot* slot
    for slot in slots:
        _drop_slot(slot)
    slots.clear()


def as_timeout(timeout):
    """``timeout=`` of a blocking call: None (no limit) or seconds >= 0."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if not timeout >= 0:  # also rejects NaN
        raise ValueError(f"timeout must be >= 0 seconds, got {timeout}")
    return float(timeout)


cdef inline double _seconds(object timeout) except? -2.0:
    # -1.0: no limit.
    if timeout is None:
        return -1.0
    return as_timeout(timeout)


@cython.final
@cython.no_gc_clear  # a cycle through the engine is broken elsewhere: it must stay whole
cdef class Engine:
    """Shared state of one pool: window, queue, reorder, release, counters and waits.

    ``kind`` is ``POOL`` (items are ``Task`` objects, whose ``fn`` writes ``task.output``) or
    ``MAP`` (items are inputs; the outcome is kept beside them). With ``key``, items of equal
    ``key(item)`` run one at a time, in arrival order (``key`` runs in the producer's thread,
    before anything is accepted; what it raises propagates). ``batch_seconds`` is the work a batch
    should hold: the engine measures the cost per item and sizes batches to it.
    ``on_terminate()`` is called once, after ``terminate`` (it stops what the workers wait
    on, such as child processes; it must not reach the user's function).

    With ``on_done`` (POOL engines), results are not ordered and no cursor takes them: each
    finished batch is handed to ``on_done(tasks)`` on the worker thread that finished it,
    before its keys are freed, and then leaves the engine (and the window). Termination
    drops what is queued; a batch already taken is still handed over. If ``on_done`` raises,
    the error is kept (``on_done_error``) and the engine terminates.
    """

    cdef Mutex _mutex
    cdef Cond _work_cv
    cdef Cond _room_cv
    cdef Cond _results_cv
    cdef SlotDeque _queue
    cdef SlotDeque _pending          # accepted, unreleased, ascending index
    cdef SlotDeque _released
    cdef unordered_map[Py_hash_t, SlotDeque] _parked   # keyed: slots behind a running key
    cdef unordered_map[Py_hash_t, uint64_t] _key_owner # keyed: key -> the batch holding it
    cdef vector[Slot*] _free
    cdef vector[unsigned long] _owned                  # worker thread idents
    cdef Py_ssize_t _window
    cdef int _kind
    cdef bint _keyed
    cdef double _batch_seconds
    cdef Py_ssize_t _parked_count
    cdef Py_ssize_t _queued                            # items in _queue (not parked)
    cdef uint64_t _next_position                       # MAP engines: the next item's position
    cdef uint64_t _next_batch
    cdef uint64_t _last_released
    cdef bint _has_released
    cdef Py_ssize_t _accepted
    cdef Py_ssize_t _finished
    cdef Py_ssize_t _held
    cdef Py_ssize_t _outstanding
    cdef Py_ssize_t _running
    cdef Py_ssize_t _dropped
    cdef int _closed
    cdef int _stopping
    cdef object _end_error
    cdef object _init_error
    cdef uint64_t _terminated_head
    cdef bint _has_terminated_head
    cdef Py_ssize_t _idle
    cdef double _idle_seconds                          # workers' waits for work, ended
    cdef double _idle_since                            # ... and the start times of those on
    cdef Py_ssize_t _wakeups
    cdef Py_ssize_t _producers_waiting
    cdef bint _consumer_waiting
    cdef object _waker
    cdef object _on_terminate
    cdef object _on_done
    cdef object _on_done_error
    cdef object _key
    cdef unsigned long _consumer
    cdef bint _has_consumer
    cdef unsigned long _feeder
    cdef bint _has_feeder
    cdef Py_ssize_t _live
    cdef Py_ssize_t _ranks                             # worker_enter hands out 0, 1, 2...
    cdef Py_ssize_t _level                             # ranks below it take work; 0: consumer
    cdef Cond _feed_cv                                 # the feeder parks here at level 0
    cdef Cond _parked_cv                               # workers ranked at or above the level
    cdef object _source
    cdef bint _indexed
    cdef object _buffered
    cdef bint _source_consumer                         # the consumer may pull the source now
    cdef bint _consumer_pulling                        # ... and is pulling one (_claim_pull)
    cdef Py_ssize_t _max_batch
    cdef double _cost
    cdef double _started
    cdef double _progress_time
    # Written by the consumer's cursor alone (relaxed atomics), read anywhere.
    cdef uint64_t _watermark
    cdef int _has_watermark
    cdef uint64_t _yielded
    cdef object __weakref__

    def __init__(self, window, kind=POOL, *, key=None, batch_seconds=0.002,
                 on_terminate=None, on_done=None):
        self._window = window
        self._on_done = on_done
        self._kind = kind
        self._key = key
        self._keyed = key is not None
        self._batch_seconds = batch_seconds
        self._on_terminate = on_terminate
        self._next_batch = 1
        self._level = UNLIMITED
        self._max_batch = 1  # until a batch is measured, items may be slow: spread them out
        self._started = monotonic()
        self._progress_time = self._started

    def __dealloc__(self):
        # No worker or batch can be alive here: both hold a reference to the engine.
        cdef vector[Slot*] slots
        cdef Slot* slot
        cdef size_t i
        for i in range(self._pending.size()):
            slots.push_back(self._pending[i])
        for i in range(self._released.size()):
            slots.push_back(self._released[i])
        self._pending.clear()
        self._released.clear()
        self._queue.clear()
        self._parked.clear()
        _drop_slots(slots)
        for slot in self._free:
            delete_slot(slot)
        self._free.clear()

    # -- locking -------------------------------------------------------------------------

    cdef inline void _lock(self) noexcept:
        # Critical sections are short: spin a little before giving up the GIL to wait, which
        # would cost two thread switches.
        cdef int spins
        if self._mutex.try_lock():
            return
        for spins in range(LOCK_SPINS):
            cpu_relax()
            if self._mutex.try_lock():
                return
        with nogil:
            self._mutex.lock()

    cdef inline void _unlock(self) noexcept:
        self._mutex.unlock()

    cdef int _wait(self, Cond* condition, double seconds) noexcept:
        """Wait on ``condition`` (mutex held on entry and return); 0 if ``seconds`` passed."""
        cdef int woken
        with nogil:
            woken = cond_wait(condition[0], self._mutex, seconds)
            self._mutex.unlock()
        self._lock()  # GIL before mutex, always
        return woken

    cdef Refusal _wait_interruptibly(self, Cond* condition, double deadline) noexcept:
        """``_wait`` for producers and the consumer: Ctrl-C and timeouts end it.

        Returns OK (woken), TIMED_OUT, or INTERRUPTED with the exception set; the mutex is
        held on return in every case.
        """
        cdef double seconds = -1.0
        cdef bint main = PyThread_get_thread_ident() == _main_thread
        cdef double now
        if deadline >= 0:
            now = monotonic()
            if now >= deadline:
                return TIMED_OUT
            seconds = deadline - now
        if main and (seconds < 0 or seconds > WAIT_SLICE):
            seconds = WAIT_SLICE
        self._wait(condition, seconds)
        if main:
            self._unlock()  # a handler may call back into the engine
            if _check_signals() < 0:
                self._lock()
                return INTERRUPTED
            self._lock()
        return OK

    # -- properties ----------------------------------------------------------------------

    @property
    def window(self):
        """Items accepted and not yet consumed, at most."""
        return self._window

    @property
    def kind(self):
        """``POOL`` or ``MAP``."""
        return self._kind

    @property
    def closed(self):
        """True once the engine accepts nothing more (closed, failed or terminated)."""
        return bool(load_int(&self._closed))

    @property
    def stopping(self):
        """True once the engine was terminated."""
        return bool(load_int(&self._stopping))

    @property
    def watermark(self):
        """Highest index such that every accepted item at or below it was yielded, or None."""
        if not load_int(&self._has_watermark):
            return None
        return load_u64(&self._watermark)

    @property
    def yielded(self):
        """How many items the cursors yielded."""
        return load_u64(&self._yielded)

    @property
    def level(self):
        """How many workers may take work (``set_level``); 0: the consumer runs it itself."""
        return self._level

    @property
    def completed(self):
        """How many items were finished so far (the rate a concurrency controller reads)."""
        return self._finished

    @property
    def idle_seconds(self):
        """How long workers waited for work so far, summed over them (a controller reads it:
        the workers wait for work, not work for them)."""
        cdef double seconds
        self._lock()
        seconds = self._idle_seconds + self._idle * monotonic() - self._idle_since
        self._unlock()
        return seconds

    @property
    def on_done_error(self):
        """What ``on_done`` raised, if it did (the engine then terminated)."""
        return self._on_done_error

    @property
    def cost(self):
        """Measured seconds of work per item (moving average); 0.0 before the first batch."""
        cdef double cost
        self._lock()
        cost = self._cost
        self._unlock()
        return cost

    @property
    def max_batch(self):
        """The most items a worker takes at once now (sized from ``cost``)."""
        cdef Py_ssize_t size
        self._lock()
        size = self._max_batch
        self._unlock()
        return size

    # -- producers -----------------------------------------------------------------------

    def put(self, item, timeout=None):
        """Accept ``item`` at the next position of a MAP engine; wait while the window is full.

        Raises, with the engine unchanged: ``TypeError``/``ValueError`` for a bad timeout,
        ``PoolClosed`` once closed, ``TimeoutError`` after ``timeout`` seconds of a full window,
        ``RuntimeError`` when the caller is a thread that the wait would deadlock (the
        consumer, or one of the engine's workers).
        """
        cdef double seconds = _seconds(timeout)
        cdef Py_ssize_t accepted
        cdef list items = [item]
        refusal = self._append_run(items, NULL, seconds, &accepted)
        if refusal != OK:
            self._raise_refusal(refusal, 0, 0, seconds)

    def put_task(self, task, timeout=None):
        """``put(task.index, task, timeout)`` for a POOL engine; ``TypeError`` for a non-Task."""
        cdef uint64_t value
        cdef double seconds
        cdef Py_hash_t keyhash = 0
        if type(task) is Task:
            value = _as_index((<Task>task).index)
        elif isinstance(task, Task):
            value = _as_index(task.index)
        else:
            raise TypeError(f"enqueue() takes an orderedtask.Task, not {type(task).__name__}")
        seconds = -1.0 if timeout is None else _seconds(timeout)
        if self._keyed:
            keyhash = hash(self._key(task))
        self._put(value, task, keyhash, seconds)

    cdef int _put(self, uint64_t value, object item, Py_hash_t keyhash,
                  double timeout) except -1:
        cdef Refusal refusal
        cdef Py_ssize_t window = self._window
        cdef uint64_t last = 0
        self._lock()
        refusal = self._refusal(value)
        if refusal == OK and self._outstanding >= window:
            refusal = self._wait_for_room(timeout)
            if refusal == OK:
                refusal = self._refusal(value)
        if refusal == OK:
            self._accept_task(value, item, keyhash)
            self._wake_workers()
        last = self._last_released
        self._unlock()
        if refusal != OK:
            self._raise_refusal(refusal, value, last, timeout)
        return 0

    def put_tasks(self, tasks, timeout=None):
        """Accept ``tasks`` in order, a window's room at a time; return how many were accepted.

        Every task's type and index are checked first (and ``key`` applied to each): a bad
        one raises before anything is accepted. A task refused by the engine's state (a
        duplicate index, one not above the last released, the pool closed) raises after the
        tasks before it were accepted.
        """
        cdef double seconds = _seconds(timeout)
        cdef list items = list(tasks)  # keeps them alive while the mutex is held
        cdef Py_ssize_t count = len(items), done = 0, position
        cdef vector[uint64_t] values
        cdef vector[Py_hash_t] hashes
        cdef Refusal refusal = OK
        cdef uint64_t last = 0
        values.reserve(count)
        for position in range(count):
            task = <object>PyList_GET_ITEM(items, position)
            if type(task) is Task:
                values.push_back(_as_index((<Task>task).index))
            elif isinstance(task, Task):
                values.push_back(_as_index(task.index))
            else:
                raise TypeError(f"enqueue_many() takes orderedtask.Task items, not "
                                f"{type(task).__name__} (at position {position})")
        if self._keyed:
            for position in range(count):
                hashes.push_back(hash(self._key(<object>PyList_GET_ITEM(items, position))))
        refusal = self._put_run(values, items, &hashes if self._keyed else NULL, seconds,
                                &done, &last)
        if refusal != OK:
            self._raise_refusal(refusal, values[done], last, seconds)
        return done

    def set_source(self, source, indexed=False, buffered=None):
        """A MAP engine's items: ``feed`` pulls them on the feeder thread (and, at level 0,
        the consumer pulls them itself). ``indexed``: the source yields ``(index, item)``
        pairs; ``buffered()``: how many items it can give now without blocking."""
        self._lock()
        old = (self._source, self._buffered)  # dropped after the unlock
        self._source = source
        self._indexed = indexed
        self._buffered = buffered
        self._source_consumer = self._level == 0
        self._unlock()
        old = None

    def feed(self):
        """Pull the source into the engine until it ends, then close: the feeder thread's job.

        Each item is accepted as soon as it is pulled, so none waits for the next pull. Items
        are pulled one at a time, or up to ``PULL_BATCH`` at once when no pull can block (a
        list, tuple, range, str, bytes, dict or set iterator) or ``buffered()`` says how many
        are ready. Whatever ends the feed early (the source raising, a malformed pair, an
        index the engine refuses) closes the engine with that error, which the consumer
        raises after every item before it; termination ends the feed quietly. At level 0 the
        feeder parks and leaves the source to the consumer.
        """
        cdef uint64_t position = 0
        cdef vector[uint64_t] labels
        cdef list items
        cdef Py_ssize_t want, accepted
        cdef bint never_blocks, indexed, ended = False
        cdef Refusal refusal
        cdef PyObject* pulled
        failure = None
        self._lock()
        self._feeder = PyThread_get_thread_ident()
        self._has_feeder = True
        source, indexed, buffered = self._source, self._indexed, self._buffered
        self._unlock()
        if source is None:
            raise RuntimeError("feed() needs set_source() first")
        never_blocks = type(source) in NEVER_BLOCKING
        while not ended and failure is None:
            if not self._may_pull(&position):
                return
            want = _PULL_BATCH if never_blocks else 1
            if buffered is not None and not never_blocks:
                try:
                    want = max(1, min(_PULL_BATCH, buffered()))
                except BaseException as exc:
                    failure = exc
                    break
            items = []
            labels.clear()
            while PyList_GET_SIZE(items) < want:
                pulled = PyIter_Next(source)
                if pulled == NULL:
                    if PyErr_Occurred() != NULL:
                        failure = _taken_exception()
                    else:
                        ended = True
                    break
                item = <object>pulled
                Py_DECREF(item)  # ``item`` holds it now
                if indexed:
                    try:
                        labels.push_back(_index_of_pair(item, position + PyList_GET_SIZE(items)))
                    except BaseException as exc:
                        failure = exc
                        break
                    item = (<tuple>item)[1]
                items.append(item)
            if not PyList_GET_SIZE(items):
                break
            refusal = self._append_run(items, &labels if indexed else NULL, -1.0, &accepted)
            if refusal == CLOSED and load_int(&self._closed):
                return  # terminated, or a worker failed to start: nobody wants more
            if refusal != OK:
                try:
                    self._raise_refusal(refusal, 0, 0, -1.0)
                except BaseException as exc:
                    failure = exc
        self.close(failure)

    cdef bint _may_pull(self, uint64_t* position) noexcept:
        """The feeder, before each pull: park while the level is 0; False once closed."""
        cdef bint open_
        self._lock()
        while (self._level == 0 or self._consumer_pulling) and not self._closed:
            if not self._source_consumer:
                self._source_consumer = True  # the consumer may be waiting for this
                if self._consumer_waiting:
                    self._results_cv.notify_one()
            self._wait(&self._feed_cv, -1.0)  # the feeder is never the main thread
        self._source_consumer = False
        position[0] = self._next_position
        open_ = not self._closed
        self._unlock()
        return open_

    cdef Refusal _append_run(self, list items, vector[uint64_t]* labels, double timeout,
                             Py_ssize_t* accepted) noexcept:
        """MAP engines: accept ``items`` in order, a window's room at a time. Each joins the
        newest chunk while no worker has taken it and it has room, so a fast source fills
        chunks and a slow one hands items on one by one."""
        cdef Py_ssize_t count = PyList_GET_SIZE(items), done = 0, cap
        cdef Refusal refusal = OK
        cdef Slot* slot
        cdef PyObject* item
        self._lock()
        while done < count:
            if self._closed:
                refusal = CLOSED
                break
            if self._outstanding >= self._window:
                refusal = self._wait_for_room(timeout)
                if refusal != OK:
                    break
                continue
            # A chunk never outgrows a batch, nor a share of the window per worker.
            cap = min(self._max_batch, max(1, self._window // (2 * max(1, self._live))))
            while done < count and self._outstanding < self._window:
                slot = NULL
                if not self._pending.empty():
                    slot = self._pending.back()
                    if slot.state != QUEUED or slot.weight >= cap:
                        slot = NULL
                if slot == NULL:
                    slot = self._new_slot()
                    slot.index = self._next_position
                    slot.weight = 0
                    self._pending.push_back(slot)
                    self._queue.push_back(slot)
                item = PyList_GET_ITEM(items, done)
                Py_INCREF(<object>item)
                slot.items.push_back(item)
                if labels != NULL:
                    slot.labels.push_back(deref(labels)[done])
                slot.weight += 1
                self._next_position += 1
                self._queued += 1
                if not self._outstanding:
                    self._progress_time = monotonic()
                self._outstanding += 1
                self._accepted += 1
                done += 1
            self._wake_workers()
        self._unlock()
        accepted[0] = done
        return refusal

    cdef Refusal _put_run(self, vector[uint64_t]& values, list items,
                          vector[Py_hash_t]* hashes, double timeout, Py_ssize_t* accepted,
                          uint64_t* last) noexcept:
        """Accept ``items`` in order, a window's room at a time, under as few lock rounds as
        that allows; ``accepted`` says how many, the refusal why it stopped early."""
        cdef Py_ssize_t count = values.size(), done = 0
        cdef Refusal refusal = OK
        self._lock()
        while done < count:
            refusal = self._refusal(values[done])
            if refusal != OK:
                break
            if self._outstanding >= self._window:
                refusal = self._wait_for_room(timeout)
                if refusal != OK:
                    break
                continue
            while (done < count and self._outstanding < self._window
                   and self._refusal(values[done]) == OK):
                self._accept_task(values[done], <object>PyList_GET_ITEM(items, done),
                                  deref(hashes)[done] if hashes != NULL else 0)
                done += 1
            self._wake_workers()
        last[0] = self._last_released
        self._unlock()
        accepted[0] = done
        return refusal

    cdef Refusal _refusal(self, uint64_t value) noexcept:
        if self._closed:
            return CLOSED
        if self._has_released and value <= self._last_released:
            return NOT_ABOVE_RELEASED
        if pending_contains(self._pending, value):
            return DUPLICATE
        return OK

    cdef int _raise_refusal(self, Refusal refusal, uint64_t value, uint64_t last,
                            double timeout) except -1:
        if refusal == INTERRUPTED:
            _raise_signal_error()
        if refusal == CLOSED:
            if self._init_error is not None:
                raise PoolClosed("the pool is closed: worker_init failed") from self._init_error
            if load_int(&self._stopping):
                raise PoolClosed("the pool was terminated and accepts no more tasks")
            raise PoolClosed("the pool is closed and accepts no more tasks")
        if refusal == NOT_ABOVE_RELEASED:
            raise ValueError(f"task index {value} is not greater than the last released index "
                             f"{last}")
        if refusal == DUPLICATE:
            raise ValueError(f"task index {value} is already pending (duplicate index)")
        if refusal == TIMED_OUT:
            raise TimeoutError(f"enqueue timed out after {timeout} s: the window of "
                               f"{self._window} tasks stayed full")
        who = ("the one iterating results()" if refusal == DEADLOCK_CONSUMER
               else "one of the pool's own workers")
        raise RuntimeError(
            f"enqueue would wait forever: the window of {self._window} tasks is full and "
            f"this thread is {who}; enqueue from another thread, use orderedtask.map, or "
            "use a larger window")

    cdef Slot* _new_slot(self) noexcept:
        cdef Slot* slot
        if self._free.empty():
            slot = new_slot()
        else:
            slot = self._free.back()
            self._free.pop_back()
        slot.item = NULL
        slot.weight = 1
        slot.keyhash = 0
        slot.state = QUEUED
        return slot

    cdef void _accept_task(self, uint64_t value, object item, Py_hash_t keyhash) noexcept:
        cdef Slot* slot = self._new_slot()
        slot.index = value
        Py_INCREF(item)
        slot.item = <PyObject*>item
        slot.keyhash = keyhash
        if self._on_done is None:  # delivered unordered: nothing to keep in index order
            pending_insert(self._pending, slot)
        self._queue.push_back(slot)
        self._queued += 1
        if not self._outstanding:
            self._progress_time = monotonic()
        self._outstanding += 1
        self._accepted += 1

    cdef Refusal _wait_for_room(self, double timeout) noexcept:
        cdef unsigned long me = PyThread_get_thread_ident(), ident
        cdef double deadline = -1.0
        cdef Refusal refusal = OK
        if self._has_consumer and me == self._consumer:
            return DEADLOCK_CONSUMER
        for ident in self._owned:
            if ident == me:
                return DEADLOCK_WORKER
        if timeout >= 0:
            deadline = monotonic() + timeout
        self._producers_waiting += 1
        while self._outstanding >= self._window:
            if self._closed:
                refusal = CLOSED
                break
            refusal = self._wait_interruptibly(&self._room_cv, deadline)
            if refusal != OK:
                break
        self._producers_waiting -= 1
        return refusal

    cdef void _wake_workers(self) noexcept:
        # One idle worker per batch's worth of queued work not already promised to a woken
        # one: a lone item wakes a worker even while others run slow items, and a fast
        # producer does not turn into a notify per item. At level 0 the worker is the consumer.
        if not self._level:
            if self._consumer_waiting:
                self._results_cv.notify_one()
            return
        if self._idle > self._wakeups and self._queued > self._wakeups * self._max_batch:
            self._wakeups += 1
            self._work_cv.notify_one()

    # -- workers -------------------------------------------------------------------------

    def set_level(self, level):
        """Let the workers ranked below ``level`` take work; park the others.

        At 0 no worker takes work: the consumer runs queued batches itself, and (map engines)
        pulls and runs the source's items itself once the feeder parks. Batches already taken
        run to their end.
        """
        cdef Py_ssize_t value = level
        if value < 0:
            raise ValueError(f"level must be >= 0, got {level}")
        self._lock()
        self._level = value
        self._wakeups = 0
        self._work_cv.notify_all()
        self._parked_cv.notify_all()
        if value > 0:
            self._source_consumer = False
            self._feed_cv.notify_all()
        elif not self._has_feeder:  # no feeder to park: the source is the consumer's now
            self._source_consumer = True
        if value == 0 and self._queued and self._consumer_waiting:
            self._results_cv.notify_one()
        self._unlock()

    def worker_enter(self):
        """A worker thread starts: count it, know it (it must never wait for room), rank it.

        Returns its rank: workers ranked at or above the level park.
        """
        cdef Py_ssize_t rank
        self._lock()
        self._owned.push_back(PyThread_get_thread_ident())
        self._live += 1
        rank = self._ranks
        self._ranks += 1
        self._unlock()
        return rank

    def worker_exit(self):
        """A worker thread ends; the last one fails what no worker is left to run."""
        cdef unsigned long me = PyThread_get_thread_ident()
        cdef size_t i
        cdef Batch batch = Batch.__new__(Batch)
        batch._engine = self
        self._lock()
        for i in range(self._owned.size()):
            if self._owned[i] == me:
                self._owned.erase(self._owned.begin() + i)
                break
        self._live -= 1
        if self._live or self._stopping or not (self._queued or self._parked_count):
            self._notify_all()
            self._unlock()
            return
        self._take_all_queued(batch)
        self._unlock()
        self.fail(batch, RuntimeError("every worker of the pool exited before running it"))

    def fail_init(self, error):
        """A worker could not start: close, and fail every item no worker has taken."""
        cdef Batch batch = Batch.__new__(Batch)
        batch._engine = self
        failure = WorkerInitError(f"worker_init failed: {error!r}")
        failure.__cause__ = error
        self._lock()
        if self._init_error is None:
            self._init_error = error  # the old value is None: no reference is dropped here
        store_int(&self._closed, 1)
        self._take_all_queued(batch)
        self._notify_all()
        waker = self._take_waker()
        self._unlock()
        self.fail(batch, failure)
        if waker is not None:
            waker()

    cdef void _take_all_queued(self, Batch batch) noexcept:
        cdef Slot* slot
        cdef size_t i
        cdef pair[Py_hash_t, SlotDeque] parked
        for i in range(self._queue.size()):
            slot = self._queue[i]
            slot.state = RUNNING
            batch._slots.push_back(slot)
            self._running += slot.weight
        self._queue.clear()
        self._queued = 0
        for parked in self._parked:
            for i in range(parked.second.size()):
                slot = parked.second[i]
                slot.state = RUNNING
                batch._slots.push_back(slot)
                self._running += slot.weight
        self._parked.clear()
        self._parked_count = 0
        batch._open = True

    def take(self, worker=0):
        """Wait for work and take a batch; None when the worker should exit.

        ``worker`` is the rank ``worker_enter`` gave: at or above the level, it waits.
        """
        cdef Batch batch = Batch.__new__(Batch)
        batch._engine = self
        if not self._take(worker, batch._slots, batch._keys):
            return None
        batch._open = True
        return batch

    cdef bint _take(self, Py_ssize_t worker, vector[Slot*]& slots,
                    vector[Py_hash_t]& keys) noexcept:
        """Wait (GIL released) for work; True with a batch in ``slots``, False to exit."""
        cdef Py_ssize_t limit
        cdef double waited
        self._lock()
        while True:
            if self._stopping:
                self._unlock()
                return False
            if self._queued and worker < self._level:
                limit = self._max_batch
                if self._idle:  # leave a fair share for the idle workers
                    limit = min(limit, (self._queued + self._idle) // (self._idle + 1))
                self._take_slots(limit, slots, keys)
                if not slots.empty():
                    if self._queued:
                        self._wake_workers()
                    self._unlock()
                    return True
                continue  # every queued item was parked behind a running key
            if self._closed and not self._parked_count and not self._queued:
                self._unlock()
                return False
            if worker >= self._level:  # parked: only set_level (or the end) wakes it
                if self._queued:
                    # It may have been woken (and counted) for this work: pass it on to a
                    # worker that may take it, or to the consumer at level 0.
                    self._wake_workers()
                self._wait(&self._parked_cv, -1.0)
                continue
            self._idle += 1
            waited = monotonic()
            self._idle_since += waited
            self._wait(&self._work_cv, -1.0)  # workers are never the main thread
            self._idle -= 1
            self._idle_since -= waited
            self._idle_seconds += monotonic() - waited
            if self._wakeups:
                self._wakeups -= 1

    cdef void _take_slots(self, Py_ssize_t limit, vector[Slot*]& slots,
                          vector[Py_hash_t]& keys) noexcept:
        # Whole slots, up to ``limit`` items (at least one slot: a chunk is never split).
        cdef Slot* slot
        cdef Py_ssize_t taken = 0
        cdef uint64_t batch_id
        cdef unordered_map[Py_hash_t, uint64_t].iterator holder
        if not self._keyed:
            while not self._queue.empty() and (taken == 0 or taken + self._queue.front().weight <= limit):
                slot = self._queue.front()
                self._queue.pop_front()
                slot.state = RUNNING
                slots.push_back(slot)
                taken += slot.weight
            self._queued -= taken
            self._running += taken
            return
        batch_id = self._next_batch
        self._next_batch += 1
        while not self._queue.empty() and taken < limit:
            slot = self._queue.front()
            self._queue.pop_front()
            self._queued -= 1
            holder = self._key_owner.find(slot.keyhash)
            if holder == self._key_owner.end():
                self._key_owner[slot.keyhash] = batch_id
                keys.push_back(slot.keyhash)
            elif deref(holder).second != batch_id:
                self._parked[slot.keyhash].push_back(slot)
                self._parked_count += 1
                continue
            slot.state = RUNNING
            slots.push_back(slot)
            taken += 1
        self._running += taken

    def finish(self, batch, outcomes, elapsed=0.0):
        """Store one ``(output, error)`` per item of ``batch`` (in its order) and finish it."""
        cdef Batch held = <Batch?>batch
        cdef Slot* slot
        cdef Py_ssize_t at = 0, i, count
        held._check_open()
        count = held._count()
        if len(outcomes) != count:
            self.fail(batch, RuntimeError(
                f"the backend returned {len(outcomes)} outcomes for a batch of {count}"),
                elapsed)
            return
        held._open = False
        try:
            for slot in held._slots:
                if self._kind == _POOL:
                    output, error = outcomes[at]
                    _set_task(<object>slot.item, output, error)
                    at += 1
                    continue
                _size_outcomes(slot)
                for i in range(slot.weight):
                    output, error = outcomes[at]
                    _set_outcome(slot, i, output, error)
                    at += 1
        except BaseException as exc:
            held._open = True
            self.fail(batch, exc)
            return
        self._complete(held._slots, held._keys, elapsed)

    def fail(self, batch, error, elapsed=0.0):
        """Finish every item of ``batch`` with ``error``: the batch failed as a whole."""
        cdef Batch held = <Batch?>batch
        held._check_open()
        held._open = False
        _fail_slots(held._slots, self._kind, error)
        self._complete(held._slots, held._keys, 0.0)

    cdef void _complete(self, vector[Slot*]& slots, vector[Py_hash_t]& keys,
                        double elapsed) noexcept:
        """The one way a taken batch comes back (GIL held, mutex not held)."""
        cdef Slot* slot
        cdef vector[Slot*] dead
        cdef Py_ssize_t count = 0, released
        if self._on_done is not None:
            self._deliver(slots, keys, elapsed)
            return
        for slot in slots:
            count += slot.weight
        waker = None
        self._lock()
        self._running -= count
        if self._stopping:
            dead.swap(slots)  # terminated meanwhile: dropped and counted then
        else:
            for slot in slots:
                slot.state = DONE
            slots.clear()
            self._finished += count
            self._held += count
            if keys.size():
                self._free_keys(keys)
            released = self._release_run()
            if elapsed > 0 and count:
                self._learn(count, elapsed)
            if self._queued:
                self._wake_workers()
            if released:
                waker = self._take_waker()
            if self._closed and self._idle:
                self._work_cv.notify_all()  # workers waiting for parked keys may now exit
            if self._closed and not self._queued and self._level < _UNLIMITED:
                self._parked_cv.notify_all()  # parked workers: nothing left, exit
        keys.clear()
        self._unlock()
        _drop_slots(dead)
        if waker is not None:
            _call_waker(waker)

    cdef void _deliver(self, vector[Slot*]& slots, vector[Py_hash_t]& keys,
                       double elapsed) noexcept:
        """Delivery mode: hand the batch to on_done, then let it leave and free its keys."""
        cdef Slot* slot
        cdef vector[Slot*] done
        cdef Py_ssize_t count = slots.size()
        cdef list tasks = []
        failure = None
        try:
            for slot in slots:
                tasks.append(<object>slot.item)
            self._on_done(tasks)
        except BaseException as exc:
            failure = exc
        tasks = None
        self._lock()
        self._running -= count
        self._finished += count
        self._outstanding -= count
        if keys.size() and not self._stopping:
            self._free_keys(keys)
        if elapsed > 0 and count:
            self._learn(count, elapsed)
        if self._queued:
            self._wake_workers()
        if self._producers_waiting:
            self._room_cv.notify_all()
        if self._closed and self._idle:
            self._work_cv.notify_all()
        if failure is not None and self._on_done_error is None:
            self._on_done_error = failure  # the old value is None: nothing is dropped here
        done.swap(slots)
        keys.clear()
        self._unlock()
        _drop_slots(done)
        if failure is not None:
            self.terminate()

    cdef void _free_keys(self, vector[Py_hash_t]& keys) noexcept:
        cdef Py_hash_t keyhash
        cdef unordered_map[Py_hash_t, SlotDeque].iterator waiting
        cdef size_t i, n
        for keyhash in keys:
            self._key_owner.erase(keyhash)
            waiting = self._parked.find(keyhash)
            if waiting != self._parked.end():
                # They were taken off the front before any same-key item still queued.
                n = deref(waiting).second.size()
                for i in range(n):
                    self._queue.push_front(deref(waiting).second[n - 1 - i])
                self._parked_count -= n
                self._queued += n
                self._parked.erase(waiting)

    cdef Py_ssize_t _release_run(self) noexcept:
        cdef Py_ssize_t count = 0
        cdef Slot* slot = NULL
        while not self._pending.empty() and self._pending.front().state == DONE:
            slot = self._pending.front()
            self._pending.pop_front()
            self._released.push_back(slot)
            count += slot.weight
        if count:
            self._held -= count
            self._last_released = slot.index + slot.weight - 1
            self._has_released = True
            self._progress_time = monotonic()
            if self._consumer_waiting:
                self._results_cv.notify_one()
        return count

    cdef void _learn(self, Py_ssize_t count, double elapsed) noexcept:
        cdef double per_item = elapsed / count
        cdef double target
        self._cost = per_item if not self._cost else 0.8 * self._cost + 0.2 * per_item
        # A batch aims at batch_seconds of work: the hand-off stays a small part of it while
        # slow items still spread over every worker.
        target = self._batch_seconds / max(self._cost, 1e-9)
        self._max_batch = max(1, min(_MAX_BATCH, <Py_ssize_t>min(target, <double>_MAX_BATCH)))

    def run_worker(self, context_ref, worker):
        """A thread worker's life: take a batch, run it, finish it, until the engine ends.

        ``context_ref()`` (a weak reference) gives the object holding ``runner`` and
        ``workerlocals``; it is looked up per batch, so an idle worker holds nothing that
        the pool's own function could make into a cycle with the pool.
        """
        cdef vector[Slot*] slots
        cdef vector[Py_hash_t] keys
        while self._take(worker, slots, keys):
            try:
                context = context_ref()
                if context is None:  # the pool was garbage-collected: nobody will consume
                    self.terminate()
                    self._complete(slots, keys, 0.0)  # terminated: this only counts it back
                    return
                runner = context.runner
                workerlocal = context.workerlocals[worker]
                context = None
            except BaseException as exc:  # whatever broke, the batch fails
                self._fail_taken(slots, keys, exc)
                continue
            self._run_taken(slots, keys, runner, workerlocal)
            runner = workerlocal = None

    cdef void _run_taken(self, vector[Slot*]& slots, vector[Py_hash_t]& keys, object runner,
                         object workerlocal) noexcept:
        """Run a taken batch (a worker's, or the consumer's at level 0) and complete it."""
        cdef double started = monotonic()
        try:
            self._run_slots(slots, <Runner?>runner, workerlocal)
        except BaseException as exc:  # whatever broke, the batch fails
            self._fail_taken(slots, keys, exc)
            return
        self._complete(slots, keys, monotonic() - started)

    cdef void _fail_taken(self, vector[Slot*]& slots, vector[Py_hash_t]& keys,
                          object error) noexcept:
        cdef Batch batch = Batch.__new__(Batch)
        batch._engine = self
        batch._slots.swap(slots)
        batch._keys.swap(keys)
        batch._open = True
        try:
            self.fail(batch, error)
        except BaseException:
            _unraisable(self)

    cdef int _run_slots(self, vector[Slot*]& slots, Runner runner,
                        object workerlocal) except -1:
        cdef Slot* slot
        cdef PyObject* error
        cdef Py_ssize_t i
        cdef bint labelled
        if self._kind == _POOL:
            for slot in slots:
                runner._run_task(workerlocal, <object>slot.item)
            return 0
        for slot in slots:
            _size_outcomes(slot)
            labelled = not slot.labels.empty()
            for i in range(slot.weight):
                error = NULL
                slot.outputs[i] = runner._run_value(
                    slot.labels[i] if labelled else slot.index + i,
                    <object>slot.items[i], &error)
                if error != NULL:
                    if slot.errors.empty():
                        slot.errors.assign(slot.weight, NULL)
                    slot.errors[i] = error
        return 0

    cdef bint _claim_pull(self, uint64_t* position) noexcept:
        """Level 0, a map engine with nothing in flight: the consumer may pull one item."""
        cdef bint ok
        self._lock()
        ok = (self._level == 0 and self._source_consumer and self._source is not None
              and not self._consumer_pulling and self._pending.empty()
              and self._released.empty() and not self._closed)
        if ok:
            self._consumer_pulling = True
            position[0] = self._next_position
        self._unlock()
        return ok

    cdef void _end_pull(self, uint64_t position) noexcept:
        """The consumer stops pulling; ``position`` is the next item's."""
        self._lock()
        self._next_position = position
        self._consumer_pulling = False
        if self._level > 0:
            self._feed_cv.notify_all()
        self._unlock()

    # -- the consumer (through Cursor) ---------------------------------------------------

    cdef int _claim(self) except -1:
        cdef unsigned long me = PyThread_get_thread_ident(), ident
        cdef int reason = 0
        self._lock()
        if self._has_consumer:
            reason = 1
        elif self._has_feeder and me == self._feeder:
            reason = 2
        else:
            for ident in self._owned:
                if ident == me:
                    reason = 2
            if not reason:
                self._consumer = me
                self._has_consumer = True
        self._unlock()
        if reason == 1:
            raise RuntimeError("results() is already being iterated by another consumer")
        if reason == 2:
            raise RuntimeError("a thread of the pool itself (a worker or the feeder) cannot "
                               "iterate its results: it would wait for itself")
        return 0

    cdef void _unclaim(self, Py_ssize_t unyielded) noexcept:
        # The cursor leaves with ``unyielded`` items still in hand: they count as dropped.
        self._lock()
        self._dropped += unyielded
        self._has_consumer = False
        old = self._waker
        self._waker = None
        self._unlock()
        old = None

    cdef Found _next_released(self, Cursor cursor, object waker, bint inline) noexcept:
        """Move the released slots into ``cursor``; see Found for the outcomes.

        ``cursor._credit`` items were consumed since the last call: they leave the window.
        With ``waker``, returns NOTHING_YET instead of waiting and calls ``waker`` once
        something changes. With ``inline`` at level 0, takes a queued batch for the consumer
        to run (INLINE) instead of waiting for workers that are parked.
        """
        cdef Found found = GOT
        cdef Refusal refusal
        cdef Slot* slot
        old = None
        self._lock()
        if cursor._credit:
            self._outstanding -= cursor._credit
            cursor._credit = 0
            if self._producers_waiting:
                self._room_cv.notify_all()
        for slot in cursor._spent:
            if self._free.size() < FREE_SLOTS:
                self._free.push_back(slot)
            else:
                delete_slot(slot)
        cursor._spent.clear()
        while self._released.empty():
            if self._stopping:
                found = STOPPED
                break
            if self._closed and self._pending.empty():
                found = END
                break
            if inline and self._level == 0:
                if self._queued:
                    self._take_slots(_INLINE_BATCH, cursor._inline_slots,
                                     cursor._inline_keys)
                    if not cursor._inline_slots.empty():
                        found = INLINE
                        break
                    continue  # every queued item was parked behind a running key
                if (self._source_consumer and self._source is not None
                        and self._pending.empty()):
                    found = PULL  # the same test as _claim_pull's
                    break
            if waker is not None:
                old = self._waker
                self._waker = waker
                found = NOTHING_YET
                break
            self._consumer_waiting = True
            refusal = self._wait_interruptibly(&self._results_cv, -1.0)
            self._consumer_waiting = False
            if refusal != OK:
                found = FAILED
                break
        if found == GOT:
            while not self._released.empty():
                cursor._buffer.push_back(self._released.front())
                self._released.pop_front()
        self._unlock()
        old = None
        return found

    cdef object _take_waker(self):
        # Mutex held: moving the reference out drops nothing.
        waker = self._waker
        self._waker = None
        return waker

    # -- lifecycle -----------------------------------------------------------------------

    cdef void _notify_all(self) noexcept:
        self._wakeups = 0
        self._work_cv.notify_all()
        self._room_cv.notify_all()
        self._results_cv.notify_all()
        self._parked_cv.notify_all()
        self._feed_cv.notify_all()

    def close(self, error=None):
        """Accept nothing more; accepted items still run and are yielded. Idempotent.

        ``error`` (the feeder's: the source failed) is raised by the consumer after every
        item accepted before it.
        """
        self._lock()
        if error is not None and not self._closed:
            self._end_error = error  # the old value is None: no reference is dropped here
        store_int(&self._closed, 1)
        self._notify_all()
        waker = self._take_waker()
        self._unlock()
        if waker is not None:
            _call_waker(waker)

    def terminate(self):
        """Stop now: drop every item not yet yielded; workers exit after their batch.

        Returns how many items this call dropped.
        """
        cdef vector[Slot*] dead
        cdef bint first
        cdef Py_ssize_t before, count
        self._lock()
        first = not self._stopping
        before = self._dropped
        self._terminate_locked(dead)
        count = self._dropped - before
        waker = self._take_waker()
        self._unlock()
        _drop_slots(dead)  # outside the lock: an item's finalizer may call back in
        if waker is not None:
            _call_waker(waker)
        if first and self._on_terminate is not None:
            self._on_terminate()
        return count

    def terminate_soon(self):
        """``terminate``, from a finalizer: on another thread if this one holds the lock."""
        # Nothing runs Python code under the mutex here, so a finalizer never finds it held.
        self.terminate()

    cdef void _terminate_locked(self, vector[Slot*]& dead) noexcept:
        cdef Slot* slot
        cdef size_t i
        if self._stopping:
            return
        store_int(&self._closed, 1)
        store_int(&self._stopping, 1)
        self._has_consumer = False  # a new cursor may claim it, to hear that it was terminated
        # The first item dropped: released slots come before the pending ones.
        self._has_terminated_head = not (self._released.empty() and self._pending.empty())
        if self._has_terminated_head:
            slot = self._released.front() if not self._released.empty() else self._pending.front()
            self._terminated_head = slot.labels[0] if not slot.labels.empty() else slot.index
        for i in range(self._pending.size()):
            slot = self._pending[i]
            if slot.state != RUNNING:  # a running slot is its worker's until it comes back
                dead.push_back(slot)
            self._dropped += slot.weight
        for i in range(self._released.size()):
            dead.push_back(self._released[i])
            self._dropped += self._released[i].weight
        if self._on_done is not None:  # delivery mode keeps no pending run: what waits
            self._drop_waiting(dead)
        self._queue.clear()
        self._queued = 0
        self._parked.clear()
        self._parked_count = 0
        self._key_owner.clear()
        self._pending.clear()
        self._released.clear()
        self._held = 0
        self._notify_all()

    cdef void _drop_waiting(self, vector[Slot*]& dead) noexcept:
        cdef size_t i
        cdef pair[Py_hash_t, SlotDeque] parked
        for i in range(self._queue.size()):
            dead.push_back(self._queue[i])
            self._dropped += self._queue[i].weight
        for parked in self._parked:
            for i in range(parked.second.size()):
                dead.push_back(parked.second[i])
                self._dropped += parked.second[i].weight

    def stats(self):
        """A snapshot of the counters (README, "Observability")."""
        cdef double now, elapsed, wait = 0.0, cost
        cdef Py_ssize_t accepted, finished, queued, running, held, pending, released
        cdef Py_ssize_t outstanding, dropped, live, batch, level
        cdef uint64_t head = 0
        cdef int closed
        cdef size_t i
        cdef Slot* slot
        self._lock()  # C values only under the mutex: the dict is built after it
        now = monotonic()
        accepted, finished = self._accepted, self._finished
        queued = self._queued + self._parked_count
        running, held = self._running, self._held
        pending = self._queued + self._parked_count + self._running + self._held
        released = 0
        for i in range(self._released.size()):
            released += self._released[i].weight
        outstanding, dropped, live = self._outstanding, self._dropped, self._live
        level = self._level
        batch, cost, closed = self._max_batch, self._cost, self._closed
        if not self._pending.empty():
            slot = self._pending.front()
            head = slot.labels[0] if not slot.labels.empty() else slot.index
            if self._released.empty():
                wait = now - self._progress_time
        elapsed = now - self._started
        self._unlock()
        yielded = load_u64(&self._yielded)
        return {
            "accepted": accepted,
            "completed": finished,
            "yielded": yielded,
            "queued": queued,
            "in_flight": running,
            "reorder_depth": held,
            "pending": pending,
            "released": released,
            "outstanding": outstanding,
            "window": self._window,
            "head": head if pending else None,
            "head_wait_seconds": wait,
            "throughput_per_second": yielded / elapsed if elapsed > 0 else 0.0,
            "watermark": self.watermark,
            "closed": bool(closed),
            "dropped": dropped,
            "workers": live,
            "level": level if level < _UNLIMITED else live,
            "batch": batch,
            "seconds_per_item": cost,
        }


# The exception a signal handler raised inside a wait, kept until the waiting call raises it.
# Only the main thread runs signal handlers, so only it writes and reads this.
cdef list _signal_error = [None]


cdef int _check_signals() noexcept:
    """Run pending signal handlers; -1 if one raised (kept for ``_raise_signal_error``)."""
    try:
        PyErr_CheckSignals()
    except BaseException as exc:
        _signal_error[0] = exc
        return -1
    return 0


cdef int _raise_signal_error() except -1:
    error = _signal_error[0]
    _signal_error[0] = None
    raise error


cdef void _call_waker(object waker) noexcept:
    try:
        waker()
    except BaseException:
        _unraisable(waker)


cdef void _unraisable(object obj) noexcept:
    try:
        exc = sys.exc_info()[1]
        sys.unraisablehook(_Unraisable(exc, obj))
    except BaseException:
        pass


class _Unraisable:
    __slots__ = ("exc_type", "exc_value", "exc_traceback", "err_msg", "object")

    def __init__(self, exc, obj):
        self.exc_type = type(exc)
        self.exc_value = exc
        self.exc_traceback = exc.__traceback__
        self.err_msg = "Exception ignored in an orderedtask waker"
        self.object = obj


cdef inline int _set_task(object task, object output, object error) except -1:
    if type(task) is Task:
        (<Task>task).output = output
        (<Task>task).error = error
    else:
        task.output = output
        task.error = error
    return 0


cdef inline void _size_outcomes(Slot* slot) noexcept:
    # A running slot belongs to its batch: no lock needed (GIL held, mutex not).
    if <Py_ssize_t>slot.outputs.size() != slot.weight:
        slot.outputs.assign(slot.weight, NULL)


cdef inline void _set_outcome(Slot* slot, Py_ssize_t i, object output, object error) noexcept:
    # The slot's outputs are sized (_size_outcomes); old values are dropped.
    cdef PyObject* old = slot.outputs[i]
    Py_INCREF(output)
    slot.outputs[i] = <PyObject*>output
    Py_XDECREF(old)
    if error is None and slot.errors.empty():
        return
    if slot.errors.empty():
        slot.errors.assign(slot.weight, NULL)
    old = slot.errors[i]
    slot.errors[i] = NULL
    if error is not None:
        Py_INCREF(error)
        slot.errors[i] = <PyObject*>error
    Py_XDECREF(old)


cdef void _fail_slots(vector[Slot*]& slots, int kind, object error) noexcept:
    """Every item of ``slots`` gets ``error``: the accounting rule's batch failure."""
    cdef Slot* slot
    cdef Py_ssize_t i
    for slot in slots:
        if kind == _POOL:
            try:
                _set_task(<object>slot.item, None, error)
            except BaseException:
                pass  # a task type that refuses attributes: the cursor still yields it
            continue
        _size_outcomes(slot)
        for i in range(slot.weight):
            _set_outcome(slot, i, None, error)


@cython.final
@cython.no_gc_clear  # its dealloc must still reach the engine
cdef class Batch:
    """Items a worker took at once; the worker hands it back to ``finish`` or ``fail``."""

    cdef Engine _engine
    cdef vector[Slot*] _slots
    cdef vector[Py_hash_t] _keys
    cdef bint _open

    def __dealloc__(self):
        # A batch must never vanish unfinished: its items would never come out.
        if self._open and self._engine is not None:
            self._open = False
            _fail_slots(self._slots, self._engine._kind,
                        RuntimeError("a worker dropped its batch before finishing it"))
            self._engine._complete(self._slots, self._keys, 0.0)

    cdef int _check_open(self) except -1:
        if not self._open:
            raise RuntimeError("this batch was already finished")
        return 0

    cdef Py_ssize_t _count(self) noexcept:
        cdef Slot* slot
        cdef Py_ssize_t count = 0
        for slot in self._slots:
            count += slot.weight
        return count

    @property
    def indices(self):
        """The items' indices, in the order the worker took them.

        A task's index; an item's position, or the index its source gave (``indexed``).
        """
        cdef Slot* slot
        cdef Py_ssize_t i
        cdef list indices = []
        for slot in self._slots:
            if self._engine._kind == _POOL:
                indices.append(slot.index)
            elif not slot.labels.empty():
                for i in range(slot.weight):
                    indices.append(slot.labels[i])
            else:
                for i in range(slot.weight):
                    indices.append(slot.index + i)
        return indices

    @property
    def items(self):
        """The items: the tasks of a POOL engine, the inputs of a MAP engine."""
        cdef Slot* slot
        cdef PyObject* item
        cdef list items = []
        for slot in self._slots:
            if self._engine._kind == _POOL:
                items.append(<object>slot.item)
            else:
                for item in slot.items:
                    items.append(<object>item)
        return items

    @property
    def inputs(self):
        """What crosses to a worker process: ``task.input`` (POOL) or the item itself (MAP)."""
        if self._engine._kind == _POOL:
            return [(<object>slot.item).input for slot in self._slots]
        return self.items

    def __len__(self):
        """How many items the batch holds."""
        return self._count()


@cython.final
@cython.no_gc_clear  # its dealloc must still reach the engine, to terminate it
cdef class Cursor:
    """The consumer's side: yields released items in order, one at a time.

    ``mode`` says what the consumer sees, the one expansion rule for every API, sync or
    async: ``POOL`` yields the tasks (``task.error`` holds an ``Exception``; any other
    ``BaseException`` is raised); ``MAP`` yields each output and raises an item's error at
    its position; ``MAP_TASKS`` yields a new ``Task`` per item with ``output`` or ``error``
    set. The cursor owns the watermark and the yielded count. It claims the engine on the
    first ``next`` (one consumer at a time: a refused cursor stays refused) and calls
    ``on_start`` then. Leaving before the end (``close``, an error, garbage collection)
    terminates the engine; termination from elsewhere raises ``PoolTerminated``.
    """

    POOL = 0
    MAP = 1
    MAP_TASKS = 2

    cdef Engine _engine
    cdef int _mode
    cdef SlotDeque _buffer          # released slots taken from the engine; front is current
    cdef Py_ssize_t _pos            # the front slot's next item
    cdef vector[Slot*] _spent       # emptied slots, given back to the engine on the next refill
    cdef Py_ssize_t _credit         # items yielded since the last refill
    cdef int _state
    cdef object _on_start
    cdef object _keepalive
    cdef object _helper             # adaptive concurrency: tunes the level, runs work at 0
    cdef Py_ssize_t _untuned        # items the consumer pulled itself since the last tune
    cdef Py_ssize_t _tune_every     # ... and how many it may pull before the next (tune says)
    cdef vector[Slot*] _inline_slots  # level 0: the batch the consumer runs itself
    cdef vector[Py_hash_t] _inline_keys
    cdef bint _pulling              # level 0: this cursor holds the claim on the source
    cdef uint64_t _pull_next        # ... and the next item's position
    cdef object _inline_runner      # helper.inline_context(), taken once
    cdef object _inline_local
    cdef object __weakref__

    def __init__(self, engine, mode, on_start=None, keepalive=None, helper=None):
        if mode != 0 and mode != 1 and mode != 2:
            raise ValueError(f"mode must be Cursor.POOL, MAP or MAP_TASKS, not {mode!r}")
        self._engine = <Engine?>engine
        self._mode = mode
        self._state = NEW
        self._on_start = on_start
        self._keepalive = keepalive  # what the workers reach by weak reference
        # With a helper (adaptive concurrency), the consumer runs work itself at level 0:
        # helper.inline_context() gives (runner, workerlocal), helper.tune(completed) is
        # shown the progress every refill (and, for items run here, as often as it asks).
        self._helper = helper
        self._tune_every = 1

    def __dealloc__(self):
        if self._engine is not None:
            self._fold()
        if self._engine is not None and self._state == ACTIVE:
            self._state = FINISHED
            self._engine._unclaim(self._unyielded())
            try:
                self._engine.terminate()
            except BaseException:
                pass
        self._drop_buffer()
        _drop_slots(self._spent)

    cdef Py_ssize_t _unyielded(self) noexcept:
        cdef Py_ssize_t count = -self._pos
        cdef size_t i
        for i in range(self._buffer.size()):
            count += self._buffer[i].weight
        return count

    cdef void _drop_buffer(self) noexcept:
        cdef vector[Slot*] slots
        while not self._buffer.empty():
            slots.push_back(self._buffer.front())
            self._buffer.pop_front()
        self._pos = 0
        _drop_slots(slots)

    @property
    def engine(self):
        """The engine this cursor consumes."""
        return self._engine

    def __iter__(self):
        return self

    def __next__(self):
        return self._next(None)

    def poll(self, waker):
        """``next`` that never waits: the next item, or ``NOT_READY`` and ``waker()`` later.

        Raises ``StopIteration`` at the end, like ``next``. A ``NOT_READY`` poll takes
        nothing, so abandoning the wait (a cancelled ``await``) loses nothing.
        """
        return self._next(waker)

    cdef object _next(self, object waker):
        if (self._pulling and waker is None and self._untuned + 1 < self._tune_every
                and not load_int(&self._engine._stopping)):
            # Level 0 with the claim held (so nothing in flight, nothing buffered): the
            # loop's own path, with none of _step's checks. A MAP item needs no ``try``
            # (saving the exception state costs every item): _pull_one ends the iteration
            # itself before its errors escape; a MAP_TASKS item's Task may fail to allocate.
            self._untuned += 1
            value = self._pull_one() if self._mode == 1 else self._guarded_pull()
            if value is not _NOTHING:
                return value
        try:
            if self._state != ACTIVE:
                self._begin()
            return self._step(waker)
        except BaseException:
            self._escaped()
            raise

    cdef object _guarded_pull(self):
        try:
            return self._pull_one()
        except BaseException:
            self._escaped()
            raise

    cdef void _escaped(self) noexcept:
        # Whatever escapes ``next`` ends the iteration, like a generator's.
        if self._state == ACTIVE:
            self._leave(True)

    cdef object _step(self, object waker):
        cdef Engine engine = self._engine
        cdef Found found
        cdef Slot* slot
        cdef Py_ssize_t position
        if load_int(&engine._stopping):
            self._report_termination()
        while True:
            if not self._buffer.empty():
                slot = self._buffer.front()
                if self._pos < slot.weight:
                    break
                self._buffer.pop_front()
                self._pos = 0
                self._spend(slot)
                continue
            helper = self._helper
            if helper is not None:
                if waker is None and self._mode != 0:
                    self._untuned += 1
                    if self._untuned >= self._tune_every:
                        self._untuned = 0
                        self._fold()
                        self._tune_every = helper.tune(engine._finished)
                    value = self._bypass()
                    if value is not _NOTHING:
                        return value
                    self._fold()
                helper.tune(engine._finished)
            found = engine._next_released(self, waker, helper is not None and waker is None)
            if found == GOT:
                continue
            if found == INLINE:
                self._run_inline()
                continue
            if found == PULL:
                continue
            if found == FAILED:
                self._leave(True)
                _raise_signal_error()
            if found == END:
                self._leave(False)
                if engine._end_error is not None:
                    raise engine._end_error
                raise StopIteration
            if found == STOPPED:
                self._report_termination()
            return NOT_READY
        position = self._pos
        self._pos += 1
        self._credit += 1
        return self._expand(slot, position)

    cdef int _begin(self) except -1:
        if self._state == FINISHED:
            raise StopIteration
        if self._state == REFUSED:
            raise RuntimeError("results() is already being iterated by another consumer")
        try:
            self._engine._claim()
        except RuntimeError:
            self._state = REFUSED
            raise
        self._state = ACTIVE
        on_start = self._on_start
        self._on_start = None
        if on_start is not None:
            try:
                on_start()
            except BaseException:
                self._leave(True)
                raise
        return 0

    cdef inline void _spend(self, Slot* slot) noexcept:
        # Outside the mutex: drop what the slot still holds; the engine reuses it later.
        _clear_slot(slot)
        self._spent.push_back(slot)

    cdef void _run_inline(self) noexcept:
        """Level 0: run the batch _next_released took, here, as a worker would."""
        cdef Engine engine = self._engine
        try:
            runner, workerlocal = self._helper.inline_context()
        except BaseException as exc:  # worker_init failed here: the batch and the pool fail
            engine._fail_taken(self._inline_slots, self._inline_keys, exc)
            try:
                engine.fail_init(exc)
            except BaseException:
                _unraisable(self)
            return
        engine._run_taken(self._inline_slots, self._inline_keys, runner, workerlocal)

    cdef object _bypass(self):
        """Level 0, a map engine with nothing in flight: pull, run and yield one item here,
        the way a plain loop would, with no slot and no other thread. The claim on the
        source lasts until the next reading (``_fold``); the consumer is then the only
        writer of the counters it bumps."""
        cdef Engine engine = self._engine
        cdef uint64_t position
        if not self._pulling:
            if not engine._claim_pull(&position):
                return _NOTHING
            self._pulling = True
            self._pull_next = position
            if self._inline_runner is None:  # before the pull: a failure loses nothing
                try:
                    self._inline_runner, self._inline_local = self._helper.inline_context()
                except BaseException:
                    self._fold()
                    raise
        return self._pull_one()

    cdef object _pull_one(self):
        # _bypass with the claim held. In MAP mode whatever escapes it has ended the
        # iteration first (_next calls it outside any ``try``).
        cdef Engine engine = self._engine
        cdef uint64_t position, label
        cdef PyObject* pulled
        cdef PyObject* output
        cdef PyObject* error = NULL
        position = self._pull_next
        pulled = PyIter_Next(engine._source)
        if pulled == NULL:
            failure = _taken_exception() if PyErr_Occurred() != NULL else None
            self._end_pulls(failure)  # raised at its position, as the feeder's would be
            return _NOTHING
        item = <object>pulled
        Py_DECREF(item)  # ``item`` holds it now
        label = position
        if engine._indexed:
            try:
                label = _index_of_pair(item, position)
            except BaseException as exc:
                self._end_pulls(exc)
                return _NOTHING
            item = (<tuple>item)[1]
        self._pull_next = position + 1
        bump_ssize(&engine._accepted)
        output = (<Runner>self._inline_runner)._run_value(label, item, &error)
        bump_ssize(&engine._finished)
        return self._expand_value(label, item, output, error)

    cdef int _end_pulls(self, object failure) except -1:
        # The source ended (``failure``: it raised): close the engine, which raises
        # ``failure`` after every item before it. A failure to close ends the iteration.
        self._fold()
        try:
            self._engine.close(failure)
        except BaseException:
            self._escaped()
            raise
        return 0

    cdef void _fold(self) noexcept:
        # End the claim on the source: the feeder (or the next claim) goes on from here.
        if self._pulling:
            self._pulling = False
            self._engine._end_pull(self._pull_next)

    cdef object _expand(self, Slot* slot, Py_ssize_t position):
        # What the consumer sees of one item, and the watermark moving past it.
        cdef int mode = self._mode
        cdef uint64_t index
        cdef PyObject* output
        cdef PyObject* taken = NULL
        if mode == 0:  # POOL
            task = <object>slot.item
            Py_DECREF(task)  # ``task`` holds it now
            slot.item = NULL
            error = (<Task>task).error if type(task) is Task else task.error
            if error is not None and not isinstance(error, Exception):
                self._leave(True)
                raise error
            self._mark(slot.index)
            return task
        index = slot.labels[position] if not slot.labels.empty() else slot.index + position
        if not slot.errors.empty():
            taken = slot.errors[position]
            slot.errors[position] = NULL
        output = slot.outputs[position]
        slot.outputs[position] = NULL
        item = <object>slot.items[position]  # a reference of its own: _leave drops the slot
        return self._expand_value(index, item, output, taken)

    cdef object _expand_value(self, uint64_t index, object item, PyObject* output,
                              PyObject* error):
        # A MAP item's outcome (``output`` and ``error``: new references, or NULL) as the
        # consumer sees it.
        cdef int mode = self._mode
        if output == NULL:  # only with an error: a run sets every output
            output_object = None
        else:
            output_object = <object>output
            Py_DECREF(output_object)  # ``output_object`` holds it now
        if error != NULL:
            error_object = <object>error
            Py_DECREF(error_object)
            if mode == 1 or not isinstance(error_object, Exception):
                self._leave(True)
                if mode == 1 and isinstance(error_object, StopIteration):
                    # It would end the caller's loop silently.
                    raise RuntimeError("fn raised StopIteration") from error_object
                raise error_object
        else:
            error_object = None
        self._mark(index)
        if mode == 1:  # MAP
            return output_object
        task = Task(index, item)  # MAP_TASKS
        (<Task>task).output = output_object
        (<Task>task).error = error_object
        return task

    cdef inline void _mark(self, uint64_t index) noexcept:
        cdef Engine engine = self._engine
        store_u64(&engine._watermark, index)
        store_int(&engine._has_watermark, 1)
        store_u64(&engine._yielded, load_u64(&engine._yielded) + 1)

    cdef int _report_termination(self) except -1:
        cdef Engine engine = self._engine
        cdef Py_ssize_t dropped
        cdef Slot* slot
        cdef object first = None
        engine._lock()
        dropped = engine._accepted - <Py_ssize_t>load_u64(&engine._yielded)
        engine._unlock()
        if not self._buffer.empty() and self._pos < self._buffer.front().weight:
            slot = self._buffer.front()
            if engine._kind == _POOL:
                first = slot.index
            elif not slot.labels.empty():
                first = slot.labels[self._pos]
            else:
                first = slot.index + self._pos
        elif engine._has_terminated_head:
            first = engine._terminated_head
        self._leave(False)
        if dropped:
            raise PoolTerminated(dropped, first)
        raise StopIteration

    cdef void _leave(self, bint terminate) noexcept:
        self._fold()
        if self._state != ACTIVE:
            self._state = FINISHED
            return
        self._state = FINISHED
        self._engine._unclaim(self._unyielded())
        self._drop_buffer()
        if terminate:
            try:
                self._engine.terminate()
            except BaseException:
                _unraisable(self)

    def close(self):
        """Stop consuming; if the iteration had started and not ended, terminate the engine."""
        self._leave(True)

    def stats(self):
        """The engine's counters (with a helper: the level and its decisions too)."""
        stats = self._engine.stats()
        if self._helper is not None:
            stats.update(self._helper.stats())
        return stats
