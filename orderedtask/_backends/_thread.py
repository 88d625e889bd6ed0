"""The thread backend: the engine's own worker threads run ``fn`` in place, from C."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._base import Backend, WorkerInit


class ThreadBackend(Backend):
    """Runs batches on the engine's worker threads; ``workerlocal`` is per thread."""

    batch_seconds = 0.002

    def __init__(self, runner: Any, worker_init: WorkerInit | None) -> None:
        super().__init__(runner, worker_init)
        # Filled by each worker as it starts; read by Engine.run_worker through a weak
        # reference to this backend, once per batch.
        self.workerlocals: dict[int, dict[str, Any]] = {}

    @staticmethod
    def worker_main(engine: Any, backend_ref: Callable[[], Backend | None], worker: int) -> None:
        engine.worker_enter()
        try:
            backend = backend_ref()
            if not isinstance(backend, ThreadBackend):
                return
            workerlocal: dict[str, Any] = {}
            init = backend.worker_init
            if init is not None:
                try:
                    init(workerlocal)
                except BaseException as exc:  # noqa: BLE001 - fails every task no worker took
                    engine.fail_init(exc)
                    return
            backend.workerlocals[worker] = workerlocal
            del backend, init, workerlocal
            engine.run_worker(backend_ref, worker)
        finally:
            engine.worker_exit()
