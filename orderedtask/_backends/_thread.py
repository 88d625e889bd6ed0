"""The thread backend: the engine's own worker threads run ``fn`` in place, from C."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._base import Backend, WorkerInit


class ThreadBackend(Backend):
    """Runs batches on the engine's worker threads; ``workerlocal`` is per thread."""

    batch_seconds = 0.002
    min_level = 0  # the consumer can run a batch itself: it is a thread of this process
    start_at_ceiling = False  # threads are cheap, and 64 of them on GIL-bound work cost

    def __init__(self, runner: Any, worker_init: WorkerInit | None) -> None:
        super().__init__(runner, worker_init)
        # Filled by each worker as it starts; read by Engine.run_worker through a weak
        # reference to this backend, once per batch.
        self.workerlocals: dict[int, dict[str, Any]] = {}
        self._inline: tuple[Any, dict[str, Any]] | None = None

    def inline_context(self) -> tuple[Any, dict[str, Any]]:
        if self._inline is None:  # the consumer's own workerlocal, set up on first use
            workerlocal: dict[str, Any] = {}
            if self.worker_init is not None:
                self.worker_init(workerlocal)
            self._inline = (self.runner, workerlocal)
        return self._inline

    @staticmethod
    def worker_main(engine: Any, backend_ref: Callable[[], Backend | None]) -> None:
        worker = engine.worker_enter()
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
