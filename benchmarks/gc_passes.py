"""GC passes during the demo's Pool and map variants (300,000 messages, default settings).

    python benchmarks/gc_passes.py CHECKOUT [adaptive]

CHECKOUT is the tree whose ``orderedtask`` is measured (``.`` for this one, or a worktree of an
older commit, built in place, to compare); ``adaptive`` runs map with ``workers=None`` instead
of 2 workers. Output in ``results/gc-passes-*.txt``.
"""
import gc, sys, threading, time
sys.path.insert(0, sys.argv[1])
import orderedtask, orjson
from orderedtask import Pool, Task
try:
    from orderedtask._cli._demo import make_messages
except ImportError:
    from orderedtask._demo import make_messages
print(orderedtask.__file__, getattr(orderedtask, "IMPLEMENTATION", "?"))
msgs = make_messages(300_000)
exp = [o for o, _ in msgs]; bodies = [b for _, b in msgs]; del msgs
workers = None if len(sys.argv) > 2 and sys.argv[2] == "adaptive" else 2
stats = {"n": [0, 0, 0], "t": 0.0}
start = [0.0]
def cb(phase, info):
    if phase == "start":
        start[0] = time.perf_counter()
    else:
        stats["n"][info["generation"]] += 1
        stats["t"] += time.perf_counter() - start[0]
def measure(label, run):
    gc.collect()
    stats["n"] = [0, 0, 0]; stats["t"] = 0.0
    gc.callbacks.append(cb)
    t = time.perf_counter(); run(); el = time.perf_counter() - t
    gc.callbacks.remove(cb)
    print(f"{label:10} {el:6.3f} s  gc passes gen0/1/2 {stats['n']}  {stats['t']*1000:.0f} ms in gc")
def loop():
    for b in bodies: orjson.loads(b)
def decode(wl, t): t.output = orjson.loads(t.input)
def pool():
    with Pool(workers, decode) as p:
        def produce():
            for s in range(0, len(exp), 256):
                p.enqueue_many([Task(o, b) for o, b in zip(exp[s:s+256], bodies[s:s+256])])
            p.close()
        th = threading.Thread(target=produce); th.start()
        for t in p.results(): pass
        th.join()
def pmap():
    for _ in orderedtask.map(orjson.loads, bodies, workers=workers): pass
measure("loop", loop); measure("Pool", pool); measure("map", pmap)
