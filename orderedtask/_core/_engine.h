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

static inline double monotonic(void) {
    return std::chrono::duration<double>(
        std::chrono::steady_clock::now().time_since_epoch()).count();
}

/* Fields written by one thread and read by others without the mutex (watermark, yielded,
 * the stopping flag): relaxed atomics, so that free-threaded readers never see a torn value. */
static inline void store_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline uint64_t load_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void store_int(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline int load_int(const int *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }

/* One accepted item. It owns references to item, output and error (NULL when unset). */
enum SlotState { QUEUED = 0, RUNNING = 1, DONE = 2 };

struct Slot {
    uint64_t index;
    PyObject *item;
    PyObject *output;
    PyObject *error;
    Py_hash_t keyhash;
    int state;
};

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
