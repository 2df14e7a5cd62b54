"""Shards as Slurm jobs through `submitit <https://github.com/facebookincubator/submitit>`_ (the ``slurm`` extra).

:class:`SlurmExecutor` is a ``concurrent.futures.Executor``: the shards the runner submits at
once become one array job (a task per shard, at most ``array_parallelism`` running), each task
runs :func:`resil.campaign.runner.run_shard` and the runner writes its part as it finishes. The
run directory (on a file system the nodes share) is the meeting point: submitit keeps its
pickled tasks, results and logs in ``DIR/slurm/``, live models and data are read from
``DIR/live/``. A task that fails or is killed leaves its shard missing: ``resil resume DIR``
submits only the missing shards. ``cluster`` selects submitit's backend: ``slurm`` (``sbatch``),
``local`` (a process per task on this machine, for tests and laptops) or ``debug`` (in this
process; as in submitit, a task that raises stops in ``pdb``).

Example:
    >>> import tempfile
    >>> with SlurmExecutor(tempfile.mkdtemp(), SlurmOptions(cluster="debug")) as ex:
    ...     ex.submit(pow, 2, 10).result()
    1024
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FaultError

CLUSTERS = ("slurm", "local", "debug")

#: sbatch options resil sets itself (through a dedicated option, or submitit's own bookkeeping)
_OWN = {"partition": "--slurm-partition", "time": "--slurm-time", "cpus-per-task": "--slurm-cpus",
        "gpus-per-node": "--slurm-gpus", "array": "--slurm-array-parallelism", "output": None, "error": None,
        "job-name": None, "open-mode": None, "nodes": None, "ntasks-per-node": None, "wckey": None}


class SlurmJobError(FaultError):
    """A shard's Slurm task failed or was killed (its log named); its shard is missing and ``resil resume DIR`` runs it."""


@dataclass(frozen=True)
class SlurmOptions:
    """Where and how shards run: submitit ``cluster``, Slurm ``partition`` (empty: the cluster's
    default), ``time`` limit per task in minutes, ``cpus`` (torch threads) and ``gpus`` per task,
    ``array_parallelism`` (tasks running at once) and ``extra`` sbatch options (``{"account": "me"}``
    gives ``--account=me``).

    Example:
        >>> SlurmOptions(time=0)
        Traceback (most recent call last):
        ...
        resil.errors.FaultError: --slurm-time must be a whole number of minutes >= 1, not 0
    """

    cluster: str = "slurm"
    partition: str = ""
    time: int = 60
    cpus: int = 1
    gpus: int = 0
    array_parallelism: int = 256
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cluster not in CLUSTERS:
            raise FaultError(f"--slurm-cluster must be one of {', '.join(CLUSTERS)}, not {self.cluster!r}")
        for name, least in (("time", 1), ("cpus", 1), ("gpus", 0), ("array_parallelism", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                unit = "a whole number of minutes" if name == "time" else "an integer"
                raise FaultError(f"--slurm-{name.replace('_', '-')} must be {unit} >= {least}, not {value!r}")
        if not isinstance(self.partition, str) or not re.fullmatch(r"[\w.,-]*", self.partition):
            raise FaultError(f"--slurm-partition must be a partition name (letters, digits, _ . , -), not {self.partition!r}")
        for key, value in self.extra.items():
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key) or not isinstance(value, str) or not value:
                raise FaultError(f"--slurm-extra {key}={value}: give sbatch options as KEY=VALUE, e.g. account=myproject or mem=8G")
            own = key.replace("_", "-")
            if own in _OWN:
                how = f"use {_OWN[own]}" if _OWN[own] else "resil sets it"
                raise FaultError(f"--slurm-extra {key}: {how}")
        if self.cluster == "slurm" and shutil.which("sbatch") is None:
            raise FaultError("--slurm-cluster slurm needs sbatch on PATH (run on the cluster's login node); "
                             "--slurm-cluster local runs the tasks as processes on this machine")


def parse_extra(items: list[str] | None) -> dict[str, str]:
    """``["account=me", "mem=8G"]`` as a dict.

    Example:
        >>> parse_extra(["account=me", "constraint=a100|h100"])
        {'account': 'me', 'constraint': 'a100|h100'}
    """
    extra = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key or not value:
            raise FaultError(f"--slurm-extra {item!r}: give sbatch options as KEY=VALUE, e.g. account=myproject or mem=8G")
        if key in extra:
            raise FaultError(f"--slurm-extra gives {key} twice")
        extra[key] = value
    return extra


class SlurmExecutor(Executor):
    """Runs each submitted call as a submitit job; calls submitted inside :meth:`batch` go out as one array job.

    Futures resolve from a thread that polls the jobs every ``poll`` seconds (submitit limits
    how often it asks ``sacct``); a failed or killed task sets :class:`SlurmJobError`.
    Shutting down cancels the jobs whose results nobody waits for any more.
    """

    def __init__(self, folder: str | Path, options: SlurmOptions, poll: float | None = None) -> None:
        try:
            import submitit
        except ImportError:
            raise FaultError("the slurm executor needs the slurm extra: pip install 'resil[slurm]'") from None
        self.options, self.folder = options, Path(folder)
        self.poll = poll if poll is not None else (5.0 if options.cluster == "slurm" else 0.2)
        #: torch threads per task
        self.threads = options.cpus
        #: shards submitted at once: every missing one on Slurm (one array job), as many as the cores take locally
        local = max(1, min(options.array_parallelism, (os.cpu_count() or 1) // options.cpus))
        self.in_flight = {"slurm": 1 << 30, "local": local, "debug": 1}[options.cluster]
        self._ex = submitit.AutoExecutor(folder=self.folder, cluster=options.cluster)
        params: dict[str, Any] = {"timeout_min": options.time, "cpus_per_task": options.cpus, "name": "resil"}
        if options.gpus:
            params["gpus_per_node"] = options.gpus
        if options.cluster == "slurm":
            params.update(slurm_array_parallelism=options.array_parallelism,
                          slurm_additional_parameters=dict(options.extra))
            if options.partition:
                params["slurm_partition"] = options.partition
        self._ex.update_parameters(**params)
        self._jobs: list[tuple[Any, Future[Any]]] = []
        self._queued: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], Future[Any]]] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._watch, name="resil-slurm-poll", daemon=True)
        self._poller.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        if self._queued is not None:
            self._queued.append((fn, args, kwargs, future))
        else:
            with self._submission():
                self._track([self._ex.submit(fn, *args, **kwargs)], [future])
        return future

    @contextlib.contextmanager
    def _submission(self) -> Iterator[None]:
        """sbatch refusing a job (an unknown partition or account, a time over the limit) as one error."""
        from submitit.core.utils import FailedSubmissionError, UncompletedJobError

        try:
            yield
        except (FailedSubmissionError, UncompletedJobError) as e:  # sbatch's error, or output without a job id
            raise FaultError(f"sbatch refused the job: {' '.join(str(e).split())[-600:]}") from None

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Submit the calls made inside as one array job when the block ends."""
        self._queued = []
        try:
            yield
        finally:
            queued, self._queued = self._queued, None
            if queued:
                with self._submission(), self._ex.batch():
                    jobs = [self._ex.submit(fn, *args, **kwargs) for fn, args, kwargs, _ in queued]
                self._track(jobs, [f for *_, f in queued])

    def _track(self, jobs: list[Any], futures: list[Future[Any]]) -> None:
        for f in futures:  # running before the poller may resolve it
            f.set_running_or_notify_cancel()
        with self._lock:
            self._jobs += zip(jobs, futures, strict=True)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            with self._lock:
                jobs = list(self._jobs)
            for job, future in jobs:
                if self._stop.is_set():
                    return
                if job.done():
                    with self._lock:
                        self._jobs.remove((job, future))
                    self._resolve(job, future)

    def _resolve(self, job: Any, future: Future[Any]) -> None:
        from submitit.core.utils import UncompletedJobError

        try:
            future.set_result(job.result())
        except UncompletedJobError as e:  # failed, killed, cancelled, out of time
            logs = Path(job.paths.stderr)
            future.set_exception(SlurmJobError(
                f"Slurm task {job.job_id} failed or was killed (its log: {logs}); `resil resume DIR` runs its shard again. "
                f"{' '.join(str(e).split())[-600:]}"))
        except BaseException as e:
            future.set_exception(e)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._stop.set()
        self._poller.join()
        with self._lock:
            left, self._jobs = self._jobs, []
        for job, future in left:
            with contextlib.suppress(Exception):  # finished meanwhile
                job.cancel(check=False)
            future.set_exception(SlurmJobError(f"Slurm task {job.job_id} cancelled: the campaign stopped before it finished"))
