"""Executors behind one seam, ``concurrent.futures.Executor``: in this process, local processes,
or a Dask cluster (the ``dask`` extra) or Slurm jobs (the ``slurm`` extra) for users who outgrow one machine."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
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


def make_executor(kind: str = "serial", workers: int = 2, address: str | None = None, *,
                  folder: str | Path | None = None, slurm: SlurmOptions | None = None) -> Executor:
    """``serial``, ``process`` (``workers`` local processes), ``dask`` (a local cluster of
    ``workers`` processes, or the scheduler at ``address``) or ``slurm`` (jobs with the ``slurm``
    options, their files in ``folder``: see :mod:`resil.campaign.slurm`)."""
    if kind == "serial":
        return SerialExecutor()
    if kind == "process":
        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    if kind == "dask":
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise FaultError("the dask executor needs the dask extra: pip install 'resil[dask]'") from None
        client = Client(address) if address else Client(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None))
        return _DaskExecutor(client)
    if kind == "slurm":
        from .slurm import SlurmExecutor, SlurmOptions

        if folder is None:
            raise FaultError("the slurm executor needs a folder for its jobs on a file system the nodes share, e.g. DIR/slurm")
        return SlurmExecutor(folder, slurm or SlurmOptions())
    raise FaultError(f"unknown executor {kind!r}: serial, process, dask or slurm")


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


def in_flight(executor: Executor) -> int:
    """How many shards to keep submitted at once: enough to keep every worker busy, few enough
    that finished shards stream to the store instead of piling up in memory.

    Example:
        >>> in_flight(SerialExecutor())
        1
    """
    if isinstance(executor, SerialExecutor):
        return 1
    if isinstance(executor, ProcessPoolExecutor):
        return 2 * executor._max_workers
    if isinstance(executor, _DaskExecutor):
        return 2 * max(1, sum(executor.client.nthreads().values()))
    return getattr(executor, "in_flight", 4)
