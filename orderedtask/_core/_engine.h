/* C++ helpers of the compiled engine (_engine.pxi): waits, relaxed atomics, and the slot
 * an accepted item lives in.
 *
 * Lock order: the GIL (or, free-threaded, an attached thread state) before the engine's mutex,
 * never the other way round. Code never blocks on the mutex or a condition while holding the
 * GIL: it tries the mutex first and, if that fails, releases the GIL to wait for it.
 */
#ifndef ORDEREDTASK_ENGINE_H
#define ORDEREDTASK_ENGINE_H

#include <Python.h>

#include <algorithm>
#include <deque>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <vector>

namespace ot {

typedef std::mutex Mutex;
typedef std::condition_variable Cond;

/* Wait on cv; m is held on entry and on return. seconds < 0: no timeout.
 * Returns 1 when woken (or spuriously), 0 when the timeout passed. */
static inline int cond_wait(Cond &cv, Mutex &m, double seconds) {
    std::unique_lock<std::mutex> held(m, std::adopt_lock);
    int woken = 1;
    if (seconds < 0) {
        cv.wait(held);
    } else {
        woken = cv.wait_for(held, std::chrono::duration<double>(seconds)) ==
                std::cv_status::no_timeout;
    }
    held.release();  /* still locked: the caller unlocks */
    return woken;
}

/* A short pause inside a spin on the mutex. */
static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline double monotonic(void) {
    return std::chrono::duration<double>(
        std::chrono::steady_clock::now().time_since_epoch()).count();
}

/* Fields written by one thread and read by others without the mutex (watermark, yielded,
 * the stopping flag): relaxed atomics, so that free-threaded readers never see a torn value. */
static inline void store_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline uint64_t load_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void store_int(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
/* A counter with one writer at a time, read under the mutex by others (Cursor._bypass). */
static inline void bump_ssize(Py_ssize_t *p) {
    __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
}
static inline int load_int(const int *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }

/* One accepted item (a Pool's task) or, in a map engine, a chunk of consecutive items that
 * the feeder accepted while no worker had taken the chunk yet. A slot owns references to
 * everything it points to (NULL when unset). */
enum SlotState { QUEUED = 0, RUNNING = 1, DONE = 2 };

struct Slot {
    uint64_t index;              /* the task's index; a chunk's first position */
    Py_ssize_t weight;           /* items in it: 1 for a task */
    PyObject *item;              /* the task (Pool engines) */
    std::vector<PyObject *> items;    /* map engines: the inputs */
    std::vector<PyObject *> outputs;  /* map engines: one per item once run */
    std::vector<PyObject *> errors;   /* map engines: empty, or one per item */
    std::vector<uint64_t> labels;     /* map engines with indexed=True: the source's index */
    Py_hash_t keyhash;
    int state;
};

static inline Slot *new_slot(void) { return new Slot(); }
static inline void delete_slot(Slot *slot) { delete slot; }

/* Python 3.12 replaced the fetch/restore triple by one exception object. */
static inline PyObject *take_exception(void) {
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL) {
        PyException_SetTraceback(value, traceback);
        Py_DECREF(traceback);
    }
    Py_XDECREF(type);
    return value;
#endif
}

typedef std::deque<Slot *> SlotDeque;

static inline bool index_less(const Slot *slot, uint64_t value) { return slot->index < value; }

/* pending is sorted by index: is value in it? */
static inline bool pending_contains(const SlotDeque &pending, uint64_t value) {
    if (pending.empty() || value > pending.back()->index) return false;
    SlotDeque::const_iterator at =
        std::lower_bound(pending.begin(), pending.end(), value, index_less);
    return at != pending.end() && (*at)->index == value;
}

/* Insert keeping pending sorted; in index order (the usual case) it is a push_back. */
static inline void pending_insert(SlotDeque &pending, Slot *slot) {
    if (pending.empty() || slot->index > pending.back()->index) {
        pending.push_back(slot);
        return;
    }
    pending.insert(std::lower_bound(pending.begin(), pending.end(), slot->index, index_less),
                   slot);
}

}  // namespace ot

#endif
