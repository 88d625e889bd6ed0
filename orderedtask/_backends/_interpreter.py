"""The interpreter backend: ``fn`` runs in subinterpreters (PEP 734), each with its own GIL.

::

    engine worker thread                          worker interpreter (own GIL, same process)
    (indices, one pickle per input) ──interp.call──▶ _enter: sys.path, load runner once per pool
                                                     run_packed: worker_init, fn, retries
    outcome per item          ◀──(status, bytes)── one pickle per outcome

``backend="interpreter"`` (3.14+): one interpreter per engine worker, owned by this backend;
the engine's worker thread calls into it, so no extra thread or queue; ``worker_init`` runs
when a worker starts. ``backend=InterpreterPoolExecutor(...)``: each batch is one ``submit``,
and each of its interpreters keeps one ``workerlocal`` per pool, as the Executor backend's
threads do.

Only bytes, str and tuples cross natively; everything else is pickled on one side and
unpickled on the other (``_wire``), so ``fn``, ``worker_init``, inputs, outputs and errors
must survive that, with a fresh interpreter on the far side: it imports modules anew (C
extensions without subinterpreter support refuse to load, the compiled core among them: the
far side runs the pure-Python core), gets this interpreter's ``sys.path``, and imports a
script's ``__main__`` as ``__mp_main__``, as multiprocessing's spawn does. Whatever fails ends
on the items it concerns as an error that says so; only ``worker_init`` fails a whole pool.
"""

from __future__ import annotations

import atexit
import importlib
import io
import pickle
import sys
import threading
import types
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from time import monotonic
from typing import Any

from ._base import TransportBackend, WorkerInit
from ._executor import WORKERLOCALS_PER_THREAD
from ._wire import PROTOCOL, Outcome, pack_inputs, unpack_outcomes

WHERE = "a subinterpreter"
_OK, _LOAD_FAILED, _INIT_FAILED = "ok", "load", "init"

# An error on the wire: its pickle (None if it has none) and "Type: message", which survives
# even when the exception cannot be pickled or unpickled.
ErrorWire = tuple["bytes | None", str]


def _enter(token: str, setup: bytes, spec: bytes, job: bytes | None) -> tuple[str, bytes]:
    """The entry point, called in the worker interpreter; ``job`` None only loads the runner.

    Stateless (no globals, no closure), so the interpreter receives it by value, before
    ``sys.path`` lets it import orderedtask.
    """
    import sys

    if "orderedtask._backends._interpreter" not in sys.modules:
        import pickle

        sys.path[:] = pickle.loads(setup)[0]
    from orderedtask._backends._interpreter import _serve

    return _serve(token, setup, spec, job)


# -- the worker interpreter's side ---------------------------------------------------------

_specs: OrderedDict[str, tuple[Any, WorkerInit | None]] = OrderedDict()
_setups: set[bytes] = set()


def _apply_setup(setup: bytes) -> None:
    if setup in _setups:
        return
    path, main = pickle.loads(setup)
    sys.path[:] = path + [entry for entry in sys.path if entry not in path]
    if main is not None and "__mp_main__" not in sys.modules:
        _import_main(*main)
    _setups.add(setup)


def _import_main(kind: str, where: str) -> None:
    """Import the parent's ``__main__`` as ``__mp_main__`` (multiprocessing.spawn's way)."""
    import runpy

    module = types.ModuleType("__mp_main__")
    if kind == "path":
        namespace = runpy.run_path(where, run_name="__mp_main__")
    else:
        namespace = runpy.run_module(where, run_name="__mp_main__", alter_sys=True)
    module.__dict__.update(namespace)
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module


def _serve(token: str, setup: bytes, spec: bytes, job: bytes | None) -> tuple[str, bytes]:
    from ._executor import _workerlocal
    from ._wire import run_packed

    try:
        loaded = _specs.get(token)
        if loaded is None:
            _apply_setup(setup)
            loaded = _specs[token] = pickle.loads(spec)
            if len(_specs) > WORKERLOCALS_PER_THREAD:
                _specs.popitem(last=False)
        else:
            _specs.move_to_end(token)
    except BaseException as exc:  # noqa: BLE001 - reported to the caller
        return _LOAD_FAILED, pickle.dumps(_error_wire(exc))
    if job is None:
        return _OK, b""
    runner, worker_init = loaded
    try:
        workerlocal = _workerlocal(token, worker_init)
    except BaseException as exc:  # noqa: BLE001 - worker_init raised
        return _INIT_FAILED, pickle.dumps(_error_wire(exc))
    indices, blobs = pickle.loads(job)  # ints and bytes: always unpickles
    packed = run_packed(runner, workerlocal, indices, blobs, WHERE)
    return _OK, pickle.dumps(packed, PROTOCOL)


def _error_wire(error: BaseException) -> ErrorWire:
    description = f"{type(error).__name__}: {error}"
    try:
        return pickle.dumps(error, PROTOCOL), description
    except Exception:  # noqa: BLE001 - anything the pickler raises
        return None, description


def _error_from_wire(wire: ErrorWire) -> BaseException:
    blob, description = wire
    if blob is None:
        reason = "it could not be pickled"
    else:
        try:
            error: BaseException = pickle.loads(blob)
            return error
        except Exception as exc:  # noqa: BLE001 - e.g. an __init__ that pickle cannot call
            reason = f"it could not be unpickled: {exc}"
    return RuntimeError(f"{description} (raised in a subinterpreter; {reason})")


# -- this interpreter's side ---------------------------------------------------------------


class _FindMain(pickle.Pickler):
    """A pickler that notes whether anything is pickled by reference to ``__main__``."""

    uses_main = False

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)) and \
                getattr(obj, "__module__", None) == "__main__":
            self.uses_main = True
        return NotImplemented


def _check_sendable(what: str, obj: object) -> bool:
    """Raise TypeError unless ``obj`` pickles; return whether it refers to ``__main__``."""
    pickler = _FindMain(io.BytesIO(), PROTOCOL)
    try:
        pickler.dump(obj)
    except Exception as exc:
        raise TypeError(
            f"{what} could not be pickled to send it to a subinterpreter (use a module-level "
            f"function; lambdas and closures do not pickle): {exc}") from exc
    return pickler.uses_main


def _main_module() -> tuple[str, str] | None:
    """How a fresh interpreter finds this one's ``__main__``: by module name or by path."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name and name != "__main__" and not name.endswith(".__main__"):
        return "name", name
    path = getattr(main, "__file__", None)
    return None if path is None else ("path", path)


class Interpreters:
    """The subinterpreters one backend owns: each serves one worker thread at a time.

    Holds no user object (the pool's finalizer keeps its ``stop``). All of them are closed
    before the runtime finalizes (``_close_at_exit``): at exit a pool's finalizer wakes its
    workers, and a worker closing its interpreter while the runtime finalizes the others
    crashes CPython 3.14. So creating and closing happen under ``lock``, and once ``exiting``
    is set only the exit hook closes.
    """

    def __init__(self) -> None:
        # lock guards the fields below; call_ended is notified when a call returns.
        self.lock = threading.Lock()
        self.call_ended = threading.Condition(self.lock)
        self.open: set[Any] = set()  # created and not yet closed
        self.busy: set[Any] = set()  # inside a call now
        self.spare: list[Any] = []  # loaded at construction, for the workers to take
        self.exiting = False
        global _exit_hook_registered
        with _owners_lock:
            if not _exit_hook_registered:
                atexit.register(_close_at_exit)
                _exit_hook_registered = True
            _owners.add(self)

    def create(self) -> Any:
        with self.lock:
            self._check_open()
            interp = importlib.import_module("concurrent.interpreters").create()
            self.open.add(interp)
        return interp

    def take_spare(self) -> Any:
        with self.lock:
            return self.spare.pop() if self.spare else None

    def call(self, interp: Any, *args: Any) -> tuple[str, bytes]:
        with self.lock:
            if interp not in self.open:
                self._check_open()
                raise RuntimeError("the worker's subinterpreter is closed")
            self.busy.add(interp)
        try:
            result: tuple[str, bytes] = interp.call(_enter, *args)
        finally:
            with self.lock:
                self.busy.discard(interp)
                self.call_ended.notify_all()
        return result

    def close(self, interp: Any) -> None:
        with self.lock:
            if interp in self.open and not self.exiting:
                self.open.discard(interp)
                _close(interp)

    def stop(self) -> None:
        """Terminate: close the spares now (a running call cannot be interrupted: its worker
        closes its interpreter when the call returns)."""
        with self.lock:
            spare, self.spare = self.spare, []
        for interp in spare:
            self.close(interp)

    def close_all(self, timeout: float) -> None:
        """At exit: no more calls; close every interpreter, waiting ``timeout`` for calls."""
        deadline = monotonic() + timeout
        with self.lock:
            self.exiting = True
            while self.busy and deadline > monotonic():
                self.call_ended.wait(deadline - monotonic())
            idle = self.open - self.busy  # one still running after that is left to the runtime
            self.open -= idle
            for interp in idle:
                _close(interp)

    def _check_open(self) -> None:
        if self.exiting:
            raise RuntimeError("the process is exiting: its subinterpreters are closed")


_owners: weakref.WeakSet[Interpreters] = weakref.WeakSet()
_owners_lock = threading.Lock()
_exit_hook_registered = False
# How long the exit hook waits for batches still running in subinterpreters.
EXIT_WAIT_SECONDS = 5.0


def _close_at_exit() -> None:
    with _owners_lock:
        owners = list(_owners)
    deadline = monotonic() + EXIT_WAIT_SECONDS
    for owner in owners:
        owner.close_all(max(0.0, deadline - monotonic()))


def _close(interp: Any) -> None:
    try:
        interp.close()
    except Exception:  # noqa: BLE001 - e.g. fn left a thread running in it; GC retries
        pass


def check_python() -> None:
    if sys.version_info < (3, 14):
        raise ValueError(
            "backend='interpreter' needs Python 3.14 or newer (concurrent.interpreters, "
            f"PEP 734); this is Python {sys.version.split()[0]}")


def is_interpreter_executor(executor: object) -> bool:
    pool = getattr(importlib.import_module("concurrent.futures"), "InterpreterPoolExecutor", None)
    return pool is not None and isinstance(executor, pool)


class InterpreterBackend(TransportBackend):
    """Runs ``fn`` in subinterpreters: its own (``executor=None``) or an executor's."""

    batch_seconds = 0.02  # an interp.call costs ~0.15 ms, pickling aside

    def __init__(self, runner: Any, worker_init: WorkerInit | None,
                 executor: Executor | None = None, workers: int = 1) -> None:
        check_python()
        super().__init__(runner, worker_init)
        uses_main = _check_sendable("fn", runner.fn)
        if worker_init is not None:
            uses_main = _check_sendable("worker_init", worker_init) or uses_main
        main = _main_module() if uses_main else None
        if uses_main and main is None:
            raise TypeError(
                "fn or worker_init is defined in __main__ of a session without a script file "
                "(-c, stdin or a REPL), which a subinterpreter cannot import: define it in a "
                "module")
        if uses_main:
            # Outputs of classes that the worker defined in __mp_main__ unpickle here too.
            sys.modules.setdefault("__mp_main__", sys.modules["__main__"])
        self.setup = pickle.dumps((list(sys.path), main))
        self.spec = pickle.dumps((runner, worker_init), PROTOCOL)
        # Unique across pools: an executor's interpreters keep fn and workerlocal per token.
        self.token = f"orderedtask-{uuid.uuid4().hex}"
        self.executor = executor
        self.interpreters = Interpreters() if executor is None else None
        if self.interpreters is not None:
            self._load_spares(workers)
            # A map that is never iterated still gives its loaded interpreters back.
            weakref.finalize(self, self.interpreters.stop)

    def stopper(self) -> Callable[[], None] | None:
        return None if self.interpreters is None else self.interpreters.stop

    def _load_spares(self, count: int) -> None:
        """Create an interpreter per worker and load fn in each, side by side, for the workers.

        This proves now that fn can be sent (TypeError otherwise), and costs the time of one
        load (imports, mostly: ~0.2 s) rather than one more before the workers start theirs.
        """
        interpreters = self.interpreters
        assert interpreters is not None
        loaded: list[Any] = []
        errors: list[BaseException] = []

        def load() -> None:
            try:
                interp = self._load(interpreters.create(), TypeError, run_init=False)
            except BaseException as exc:  # noqa: BLE001 - raised below, in the caller
                errors.append(exc)
            else:
                loaded.append(interp)

        helpers = [threading.Thread(target=load, name="orderedtask-interpreter-load")
                   for _ in range(count - 1)]
        for thread in helpers:
            thread.start()
        load()
        for thread in helpers:
            thread.join()
        if errors:
            for interp in loaded:
                interpreters.close(interp)
            raise errors[0]
        with interpreters.lock:
            interpreters.spare = loaded

    def _load(self, interp: Any, failure: type[Exception], run_init: bool) -> Any:
        """``interp`` with the runner loaded and, if ``run_init``, ``worker_init`` run in it.

        If that fails, ``interp`` is closed and ``failure`` raised (what ``worker_init``
        raised is raised as it is).
        """
        interpreters = self.interpreters
        assert interpreters is not None
        empty = pickle.dumps(([], []))  # an empty batch runs worker_init
        jobs: list[bytes | None] = [None, empty] if run_init else [None]
        status, payload = _OK, b""
        try:
            for job in jobs:
                status, payload = interpreters.call(interp, self.token, self.setup, self.spec,
                                                    job)
                if status != _OK:
                    break
        except BaseException:
            interpreters.close(interp)
            raise
        if status != _OK:
            interpreters.close(interp)
            cause = _error_from_wire(pickle.loads(payload))
            if status == _INIT_FAILED:
                raise cause
            raise failure(f"fn cannot be loaded in a subinterpreter: {cause}") from cause
        return interp

    def start_worker(self, worker: int) -> Any:
        if self.interpreters is None:
            return None
        interp = self.interpreters.take_spare()
        if interp is None:
            interp = self.interpreters.create()
        # worker_init runs now, on this worker's thread, so that its failure fails the pool.
        return self._load(interp, RuntimeError, run_init=True)

    def run_batch(self, state: Any, batch: Any) -> list[Outcome]:
        indices = batch.indices
        blobs, failed = pack_inputs(indices, batch.inputs, WHERE)
        job = pickle.dumps((indices, blobs), PROTOCOL)
        if self.interpreters is not None:
            status, payload = self.interpreters.call(state, self.token, self.setup, self.spec,
                                                     job)
        else:
            assert self.executor is not None
            status, payload = self.executor.submit(
                _enter, self.token, self.setup, self.spec, job).result()
        if status == _OK:
            return unpack_outcomes(indices, pickle.loads(payload), failed, WHERE)
        cause = _error_from_wire(pickle.loads(payload))
        if status == _LOAD_FAILED:
            raise TypeError(f"fn cannot be loaded in a subinterpreter: {cause}") from cause
        raise cause  # worker_init raised in an executor's interpreter: the batch fails

    def stop_worker(self, state: Any) -> None:
        if self.interpreters is not None:
            self.interpreters.close(state)


__all__ = ["InterpreterBackend", "check_python", "is_interpreter_executor"]
