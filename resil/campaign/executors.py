"""Executors behind one seam, ``concurrent.futures.Executor``: in this process, local processes,
or a Dask cluster (the ``dask`` extra) or Slurm jobs (the ``slurm`` extra, :mod:`resil.campaign.slurm`)
for users who outgrow one machine.

Workers that die (killed, out of memory, ``os._exit``) are recognised (:func:`worker_lost`); a local
process pool is replaced by a fresh one (:func:`restarted`), a Dask cluster restarts its workers
itself and reports a task that kept killing them. A local Dask cluster started here listens on
127.0.0.1 only (other users of the machine can still reach it).
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, CancelledError, Executor, Future, ProcessPoolExecutor
from multiprocessing import forkserver
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import FaultError

if TYPE_CHECKING:
    from .slurm import SlurmOptions


class SerialExecutor(Executor):
    """Runs each task at submission, in this process (the reference executor)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # delivered through the future, as other executors do
            future.set_exception(e)
        return future


class ProcessPool(ProcessPoolExecutor):
    """A local pool of ``workers`` processes (started as :func:`worker_context` says) that knows
    its size, so that a run keeps it busy (:func:`in_flight`) and replaces it when its workers die
    (:func:`restarted`), and whether a task has finished yet (:func:`starts_slowly`)."""

    def __init__(self, workers: int) -> None:
        context = worker_context()
        if context.get_start_method() == "forkserver":
            forkserver.ensure_running()  # it imports in the background while the caller builds its campaign
        super().__init__(max_workers=workers, mp_context=context)
        self.workers = workers
        self.reported = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future = super().submit(fn, *args, **kwargs)
        future.add_done_callback(self._report)
        return future

    def _report(self, future: Future[Any]) -> None:
        self.reported = True


def make_executor(kind: str = "serial", workers: int = 2, address: str | None = None, *,
                  folder: str | Path | None = None, slurm: SlurmOptions | None = None) -> Executor:
    """``serial``, ``process`` (``workers`` local processes), ``dask`` (a local cluster of
    ``workers`` processes on 127.0.0.1, or the scheduler at ``address``) or ``slurm`` (jobs with
    the ``slurm`` options, their files in ``folder``: see :mod:`resil.campaign.slurm`).

    Raises:
        FaultError: for an unknown kind or a worker count that is not an integer >= 1 (before
            any process starts).

    Example:
        >>> make_executor("process", 0)
        Traceback (most recent call last):
        ...
        resil.errors.FaultError: workers must be an integer >= 1, got 0
    """
    if kind not in ("serial", "process", "dask", "slurm"):
        raise FaultError(f"unknown executor {kind!r}: serial, process, dask or slurm")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise FaultError(f"workers must be an integer >= 1, got {workers!r}")
    if kind == "serial":
        return SerialExecutor()
    if kind == "process":
        return ProcessPool(workers)
    if kind == "slurm":
        from .slurm import SlurmExecutor, SlurmOptions

        if folder is None:
            raise FaultError("the slurm executor needs a folder for its jobs on a file system the nodes share, e.g. DIR/slurm")
        return SlurmExecutor(folder, slurm or SlurmOptions())
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise FaultError("the dask executor needs the dask extra: pip install 'resil[dask]'") from None
    if address:
        return _DaskExecutor(Client(address))
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None)
    return _DaskExecutor(Client(cluster))


#: what a forkserver imports once, so each worker forked from it starts without importing torch again
PRELOAD = ["resil.campaign.runner"]


def worker_context() -> multiprocessing.context.BaseContext:
    """How local worker processes start: forked from a forkserver that imported torch and resil
    once (a worker starts in well under a second instead of seconds of imports each), where the
    platform has forkservers (Linux, macOS); spawned (a fresh interpreter each) elsewhere. Both start
    from a clean process, never a fork of the caller with its threads.

    Example:
        >>> worker_context().get_start_method() in ("forkserver", "spawn")
        True
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)  # read when the forkserver starts (once per process)
    return context


def worker_lost(error: BaseException | None) -> bool:
    """Whether ``error`` (a task's) says its worker died rather than the task failing: a broken
    process pool, a Dask task that killed its workers, a task cancelled when its cluster went away.

    Example:
        >>> from concurrent.futures.process import BrokenProcessPool
        >>> worker_lost(BrokenProcessPool("a child process terminated abruptly")), worker_lost(ValueError())
        (True, False)
    """
    if error is None:
        return False
    if isinstance(error, (BrokenExecutor, CancelledError)):
        return True
    distributed = sys.modules.get("distributed")
    return distributed is not None and isinstance(error, distributed.KilledWorker)


def restarted(executor: Executor) -> Executor | None:
    """A fresh executor like ``executor`` after its workers died (``executor`` is shut down):
    a new local process pool; None for others (a Dask cluster restarts its own workers)."""
    if not isinstance(executor, ProcessPool):
        return None
    executor.shutdown(wait=True, cancel_futures=True)
    return ProcessPool(executor.workers)


class _DaskExecutor(Executor):
    """A Dask client as a ``concurrent.futures.Executor`` that closes the client on shutdown."""

    def __init__(self, client: Any) -> None:
        self.client, self.inner = client, client.get_executor(pure=False)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self.inner.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.inner.shutdown(wait=wait)
        cluster = getattr(self.client, "cluster", None)
        self.client.close()
        if cluster is not None:
            cluster.close()


def starts_slowly(executor: Executor) -> bool:
    """Whether ``executor``'s workers are still coming up (a local process pool none of whose
    tasks has finished yet): the caller may run tasks itself until the first one reports.

    Example:
        >>> starts_slowly(SerialExecutor())
        False
    """
    return isinstance(executor, ProcessPool) and not executor.reported


def in_flight(executor: Executor) -> int:
    """How many shards to keep submitted at once: enough to keep every worker busy, few enough
    that finished shards stream to the store instead of piling up in memory.

    Example:
        >>> in_flight(SerialExecutor())
        1
    """
    if isinstance(executor, SerialExecutor):
        return 1
    if isinstance(executor, ProcessPool):
        return 2 * executor.workers
    if isinstance(executor, _DaskExecutor):
        return 2 * max(1, sum(executor.client.nthreads().values()))
    return getattr(executor, "in_flight", 4)
