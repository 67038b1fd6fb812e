"""Where independent tasks run: in this process, in local worker processes, or on a Ray cluster.

The SqueezeNet paper's design-space exploration (Iandola et al. 2016, section 5)
trained over 1,000 points, and the playbook behind it (section 3) ran them as
jobs on 128-GPU clusters; an evolve population (SquishedNets, section 3) is
the same kind of work, K offspring of one parent, each trained alone. Both go
through one :class:`Executor`, chosen by :class:`ExecConfig`:

* ``workers=1`` (the default): each task runs here, in order;
* ``workers=N``: N local processes (``spawn``, since forking a process that
  has started torch's thread pools is unsafe), each with a share of the cores;
* ``ray_address``: Ray tasks, on a running cluster (``auto``, ``HOST:PORT``)
  or on a Ray instance started here (``local``).

A task is shaped so that losing it costs nothing but time:

* its arguments are plain and picklable: paths, dicts, genome dicts. It reads
  its data from a path every node can reach (the decoded-image cache makes
  reloading cheap) instead of being shipped tensors, so a task is cheap to
  send, to retry and to run anywhere;
* it writes its checkpoint and result with the atomic writers of ``io.py``, so
  a worker killed mid-write leaves the previous state, never half a file;
* it is idempotent: if its result file exists it returns that and computes
  nothing. A task lost with its worker (a killed or crashed process, a lost
  node) is therefore simply run again, up to ``retries`` times: a process
  pool that breaks is replaced and its unfinished tasks resubmitted; Ray does
  the same through ``max_retries``. Ordinary exceptions are never retried;
  they propagate to the caller. Only the caller (the driver) records results,
  so a retried task is never recorded twice, and a retry whose first run got
  as far as writing its result just returns that result.

On a cluster, every node needs squishednets installed (``pip install
'squishednets[ray]'``) and the run folder and data at the same paths (a
shared file system): tasks find their inputs and write their outputs there.

Results come back as each task finishes (``map_unordered`` yields ``(index,
result)``), and callers put them in order by index, so what they record does
not depend on which worker was faster.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import socket
import sys
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence, TypeVar

from .config import option
from .errors import ConfigError, SquishedError

__all__ = ["ExecConfig", "Executor", "TaskLostError", "make_executor", "IN_PROCESS"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

IN_PROCESS = "in-process"
RAY_EXTRA = "--ray-address needs Ray: pip install 'squishednets[ray]' (ray==2.60.0)"
# How long to wait for a TCP answer from a Ray head before giving up: ray.init
# itself keeps retrying an unreachable address for minutes.
_CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ExecConfig:
    """Where tasks run. With ``ray_address='local'``, ``workers`` is the
    number of CPUs of the Ray instance started here (1: every core); with a
    cluster address the cluster decides and ``workers`` must stay 1."""

    workers: int = option(1, help="local worker processes (1: in-process)", resume=False)
    ray_address: str | None = option(
        None, help="run tasks on a Ray cluster: auto, HOST:PORT, or local (start one here, with --workers CPUs; "
                   "1: every core); off: no Ray", resume=False)
    retries: int = option(2, help="times a task lost with its worker is retried", resume=False)
    gpus: float = option(0.0, help="GPUs each Ray task reserves (a share such as 0.25 packs tasks on a GPU); Ray "
                                   "shows a task only the GPUs it reserves, so 0 trains on CPU", resume=False)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1 (1: in-process), got {self.workers}")
        if self.retries < 0:
            raise ConfigError(f"--retries must be >= 0, got {self.retries}")
        if self.gpus < 0:
            raise ConfigError(f"--gpus must be >= 0, got {self.gpus}")
        if self.gpus and self.ray_address is None:
            raise ConfigError(f"--gpus {self.gpus:g} reserves GPUs for Ray tasks; in-process and local workers see "
                              "every GPU already: drop --gpus, or add --ray-address")
        a = self.ray_address
        if a is None:
            return
        if a not in ("auto", "local") and _host_port(a) is None:
            raise ConfigError(f"--ray-address must be auto, local, HOST:PORT or ray://HOST:PORT (off: no Ray), "
                              f"got {a!r}")
        if self.workers > 1 and a != "local":
            raise ConfigError(f"--workers {self.workers} counts local processes; on a Ray cluster (--ray-address {a}) "
                              "its CPUs decide: drop --workers (with --ray-address local it sets the local Ray's CPUs)")


    def check_device(self, device: str) -> None:
        """Refuse training on CUDA in Ray tasks that reserve no GPU (Ray hides the GPUs from them)."""
        if self.ray_address is not None and device == "cuda" and not self.gpus:
            raise ConfigError("--device cuda on Ray needs GPUs reserved per task, which Ray otherwise hides from "
                              "it: add --gpus 1 (or a share such as 0.25)")


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``HOST:PORT`` or ``ray://HOST:PORT``, else ``None``."""
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)


class Executor(Protocol):
    """Runs ``fn`` over items; see the module docstring."""

    name: str
    # Tasks that can run at once: how many a caller should hand over together
    # (explore asks its study for this many design points per batch).
    slots: int

    def map_unordered(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[tuple[int, R]]:
        """Yield ``(index into items, result)`` as each task finishes. ``fn``
        must be a module-level function (it is sent by name to other
        processes); its exceptions propagate."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> "Executor": ...

    def __exit__(self, *exc: Any) -> None:
        """Closes it."""
        ...


class TaskLostError(SquishedError):
    """A task whose worker died more often than ``retries`` allows."""


class _Base:
    name: str
    slots: int = 1

    def __enter__(self) -> "_Base":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<executor {self.name}>"


class _InProcess(_Base):
    """Each task in this process, in order: no start-up, no copies."""

    name = IN_PROCESS

    def map_unordered(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[tuple[int, R]]:
        for i, item in enumerate(items):
            yield i, fn(item)


def _init_worker(threads: int) -> None:
    """Each worker gets its share of the cores (workers x threads <= cores):
    through the environment for a torch imported later (so that a worker
    whose tasks never need torch starts in a second, not several), directly
    if torch is already loaded (e.g. by the main module, re-imported under spawn)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def _check_by_name(fn: Callable[..., Any]) -> None:
    if "<" in getattr(fn, "__qualname__", "<"):
        raise TypeError(f"{fn!r} cannot be sent to another process: give a module-level function")


class _Processes(_Base):
    """N spawned processes; a pool that loses a worker is replaced."""

    def __init__(self, workers: int, retries: int) -> None:
        self.workers, self.retries = workers, retries
        self.name = f"processes({workers})"
        self.slots = workers
        # workers x threads <= cores; a task's own --threads still wins.
        self.threads = max(1, (os.cpu_count() or 1) // workers)
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=(self.threads,))
        return self._pool

    def _drop_pool(self, kill: bool = False) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if kill:
            # Tasks are idempotent and write atomically, so stopping them
            # mid-way loses nothing but their time (Python 3.14 has
            # terminate_workers; before it, the pool's process table).
            if hasattr(pool, "terminate_workers"):
                pool.terminate_workers()
            for p in list((getattr(pool, "_processes", None) or {}).values()):
                with contextlib.suppress(Exception):
                    p.kill()
        pool.shutdown(wait=True, cancel_futures=True)

    def map_unordered(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[tuple[int, R]]:
        _check_by_name(fn)
        items = list(items)
        pending = deque(range(len(items)))
        lost = [0] * len(items)
        # At most one task per worker is in flight, so the tasks a broken pool
        # takes with it are exactly those that were running: only they are
        # charged a retry.
        running: dict[Future, int] = {}
        finished = False
        try:
            while pending or running:
                pool = self._get_pool()
                broken = False
                while pending and len(running) < self.workers:
                    i = pending.popleft()
                    try:
                        running[pool.submit(fn, items[i])] = i
                    # OSError: a worker died and the pool is closing its pipes
                    # but has not marked itself broken yet, so submit's spawn
                    # of a replacement finds a closed handle (seen under load).
                    except (BrokenProcessPool, OSError):
                        self._lose(i, lost, pending)
                        broken = True
                        break
                if running:
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    if any(isinstance(f.exception(), BrokenProcessPool) for f in done):
                        done, _ = wait(running)  # the others fall with the pool
                    for f in sorted(done, key=running.__getitem__):
                        i = running.pop(f)
                        if isinstance(f.exception(), BrokenProcessPool):
                            self._lose(i, lost, pending)
                            broken = True
                        else:
                            yield i, f.result()
                if broken:
                    log.warning("%s: a worker died; restarting the pool and retrying %d task(s)", self.name,
                                len(pending))
                    self._drop_pool()
            finished = True
        finally:
            if not finished:
                for f in running:
                    f.cancel()
                # Whatever stopped the loop (a task's exception, a lost task, a
                # caller that stopped reading), the pool may be broken or busy:
                # the next call starts a fresh one rather than charge its tasks.
                self._drop_pool(kill=bool(running))

    def _lose(self, i: int, lost: list[int], pending: deque) -> None:
        lost[i] += 1
        if lost[i] > self.retries:
            raise TaskLostError(f"task {i} lost its worker {lost[i]} times (killed, out of memory, or it could not "
                                f"start); it is retried {self.retries} times (--retries); try fewer --workers")
        pending.appendleft(i)

    def close(self) -> None:
        self._drop_pool()


def _call(fn: Callable[[T], R], item: T) -> R:
    return fn(item)


class _Ray(_Base):
    """Ray tasks with ``max_retries``: Ray reruns a task whose worker died."""

    def __init__(self, cfg: ExecConfig) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError(RAY_EXTRA) from None
        self._ray = ray
        self.name = f"ray({cfg.ray_address})"
        self.retries = cfg.retries
        self._started = False
        if not ray.is_initialized():
            _connect(ray, cfg)
            self._started = True
        self._remote = ray.remote(max_retries=cfg.retries, retry_exceptions=False, num_gpus=cfg.gpus)(_call)
        # Each task reserves one CPU (Ray's default) and --gpus GPUs: the cluster's
        # CPUs, or its GPUs over --gpus, are its slots.
        res = ray.cluster_resources()
        self.slots = max(1, int(res.get("CPU", 1)))
        if cfg.gpus:
            self.slots = max(1, min(self.slots, int(res.get("GPU", 0) / cfg.gpus)))
        elif res.get("GPU"):
            log.warning("the Ray cluster has %g GPU(s) but its tasks reserve none (--gpus 0): they train on CPU",
                        res["GPU"])

    def map_unordered(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[tuple[int, R]]:
        ray = self._ray
        _check_by_name(fn)
        refs = {self._remote.remote(fn, item): i for i, item in enumerate(items)}
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                for ref in ready:
                    i = refs.pop(ref)
                    try:
                        r = ray.get(ref)
                    except ray.exceptions.RayTaskError as e:
                        cause = getattr(e, "cause", None)
                        raise (cause if isinstance(cause, BaseException) else e) from None
                    except ray.exceptions.RayError as e:
                        raise TaskLostError(f"task {i} was lost on the Ray cluster after {self.retries} "
                                            f"retries ({type(e).__name__}); see the Ray logs") from e
                    yield i, r
        finally:
            for ref in refs:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False


def _connect(ray: Any, cfg: ExecConfig) -> None:
    """``ray.init`` for ``cfg.ray_address``; a failure is one ``ConfigError`` line."""
    a = cfg.ray_address
    fix = "start one with `ray start --head` there, or use --ray-address local to start one here"
    hp = _host_port(a) if a not in ("auto", "local") else None
    if hp is not None:
        try:
            socket.create_connection(hp, timeout=_CONNECT_TIMEOUT_S).close()
        except OSError as e:
            raise ConfigError(f"no Ray cluster answers at {a} ({e.strerror or e}); {fix}") from None
    try:
        if a == "local":
            ray.init(num_cpus=cfg.workers if cfg.workers > 1 else os.cpu_count(), include_dashboard=False)
        else:
            ray.init(address=a, ignore_reinit_error=True)
    except Exception as e:  # Ray raises ConnectionError, RuntimeError, ValueError...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot start Ray at {a} ({first})" if a == "local"
                          else f"cannot connect to a Ray cluster at {a} ({first}); {fix}") from None


def make_executor(cfg: ExecConfig) -> Executor:
    """The executor ``cfg`` asks for; close it when done (or use it in ``with``)."""
    if cfg.ray_address is not None:
        return _Ray(cfg)
    if cfg.workers > 1:
        return _Processes(cfg.workers, cfg.retries)
    return _InProcess()
