"""The Ray path of the collection runner (:mod:`avloc.applications.runner`, ``workers=N``).

* **Workers**: ``N`` Ray actors (:class:`_Worker`, one CPU and ``gpus_per_worker`` GPUs each), each building
  the job's model once (``job.load()``) and running ``job.per_worker`` inputs at once (one thread each).
* **Streaming**: for each input, its worker starts one Ray task running ``job.decode`` as a *streaming
  generator* (``num_returns="streaming"``) and feeds the pieces to ``job.infer`` as they come. The task may
  run at most ``decode_ahead`` pieces ahead of its worker (Ray's generator backpressure), so an input in
  flight holds a few pieces (localize: a few batches of frames), never a whole video: memory is flat in the
  video's length, as on the sequential path. The task is placed on its worker's node when it can be.
* **Scheduling**: the driver gives each worker its next input (in the given order) as soon as it has room,
  and records each outcome as it comes; ``commit`` runs in the worker, so outputs are written where they were
  computed (on a cluster, the output folder must be shared by the nodes).
* **Failures**: ``execute`` isolates each input in the worker; a decode task's error reaches it as the
  original exception; a worker that dies (killed, out of memory) fails the inputs it held and is replaced.
* **Ray itself**: started locally (``include_dashboard=False``, ``log_to_driver=False``; enough CPUs for the
  workers and their decode tasks) and shut down at the end, unless already running; ``ray_address`` joins a
  cluster (``auto`` or ``HOST:PORT``) after a TCP probe with ``connect_timeout`` (a wrong address fails in
  seconds with one line, instead of Ray's minutes of retries).
"""

from __future__ import annotations

import logging
import os
import socket
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from avloc.applications.runner import Item, Job, Outcome, RunnerConfig, execute, failed
from avloc.errors import AvlocError, ConfigError

log = logging.getLogger("avloc")


class WorkerLostError(AvlocError):
    """A Ray worker died while it held an input (killed, out of memory): the input fails with one line."""


def require_ray() -> None:
    """Raise :class:`ConfigError` (what to install) unless Ray can be imported."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError("--workers needs Ray: pip install 'avloc[ray]' (or run without --workers)") from None


#: RFC 9113 Sec. 3.4: an HTTP/2 client's connection preface, then an empty SETTINGS frame (9-byte header: length 0,
#: type 0x4, no flags, stream 0). A gRPC server (Ray's GCS) answers with its own SETTINGS frame first.
_H2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 0x4, 0, 0, 0, 0, 0])
_H2_SETTINGS = 0x4
_H2_FRAME_HEADER = 9


def probe_address(address: str, timeout: float) -> None:
    """Raise :class:`ConfigError` unless a gRPC (HTTP/2) server answers at ``HOST:PORT`` within ``timeout`` s, as
    a Ray head's GCS does: a closed port, an unreachable host, a silent peer or another protocol fail in seconds
    with one line, instead of ``ray.init``'s minutes of retries."""
    import time

    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--ray-address {address!r}: give auto or HOST:PORT (the cluster's head, e.g. 10.0.0.5:6379)")
    deadline = time.monotonic() + timeout
    head = b""
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as s:
            s.sendall(_H2_HELLO)
            while len(head) < _H2_FRAME_HEADER:
                s.settimeout(max(deadline - time.monotonic(), 1e-3))
                if not (more := s.recv(_H2_FRAME_HEADER - len(head))):
                    break
                head += more
    except OSError as e:
        why = "no answer" if isinstance(e, TimeoutError) else (e.strerror or str(e) or type(e).__name__).lower()
        raise ConfigError(f"--ray-address {address}: cannot reach a Ray cluster there ({why} within {timeout:g} s); "
                          "start it (ray start --head) or fix the address") from None
    if len(head) < _H2_FRAME_HEADER or head[3] != _H2_SETTINGS:
        raise ConfigError(f"--ray-address {address}: something answers there, but not a Ray cluster's head (no gRPC); "
                          "give the head's GCS address (ray start --head prints it; port 6379 by default)")


def start_ray(config: RunnerConfig, cpus_needed: int) -> bool:
    """Join ``config.ray_address`` or start a local Ray (module doc); returns whether this call started it."""
    import ray

    if ray.is_initialized():
        return False
    common: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if config.ray_address:
        if config.ray_address != "auto":
            probe_address(config.ray_address, config.connect_timeout)
        try:
            ray.init(address=config.ray_address, **common)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError(f"--ray-address {config.ray_address}: {' '.join(str(e).split())}") from None
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, cpus_needed), **common)
    return True


def _decode(job: Job, item: Item) -> Iterator[Any]:
    """Ray task (streaming generator): ``job.decode(item)``'s pieces, one object each."""
    yield from job.decode(item)


def _pieces(refs: Any) -> Iterator[Any]:
    """The pieces of a streaming decode task, fetched as they come; its error raised as the original one."""
    import ray

    for ref in refs:
        try:
            yield ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if isinstance(e.cause, BaseException) else e
            raise cause from None


class _Worker:
    """Ray actor: the job's model, built once; ``run`` streams one input's decode task into infer + commit."""

    def __init__(self, job: Job, threads: int, decode_ahead: int) -> None:
        import ray
        import torch
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if threads:
            torch.set_num_threads(threads)
        self.job, self.state = job, job.load()
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        self.decode = ray.remote(_decode).options(
            num_returns="streaming", num_cpus=1, scheduling_strategy=here,
            _generator_backpressure_num_objects=decode_ahead,  # Ray's generator backpressure (module doc)
        )

    def run(self, item: Item) -> Outcome:
        return execute(self.job, self.state, item, _pieces(self.decode.remote(self.job, item)))


def actor_threads(config: RunnerConfig) -> int:
    """Torch threads of each Ray worker: ``threads_per_worker``, or this process's count (0)."""
    import torch

    return config.threads_per_worker or torch.get_num_threads()


class _Pool:
    """The driver's side: N workers, each given its next input as soon as it has room (module doc)."""

    def __init__(self, job: Job, config: RunnerConfig, n: int) -> None:
        import ray

        self.job, self.config = job, config
        self.cls = ray.remote(_Worker)
        self.threads = actor_threads(config)
        self.actors = [self._spawn() for _ in range(n)]
        self.load = [0] * n
        self.running: dict[Any, tuple[int, Any, Item]] = {}  # ref -> (slot, actor, item)

    def _spawn(self) -> Any:
        return self.cls.options(num_cpus=1, num_gpus=self.config.gpus_per_worker or None,
                                max_concurrency=self.job.per_worker).remote(self.job, self.threads,
                                                                            self.config.decode_ahead)

    def submit(self, slot: int, queue: deque[Item]) -> None:
        while queue and self.load[slot] < self.job.per_worker:
            it = queue.popleft()
            self.running[self.actors[slot].run.remote(it)] = (slot, self.actors[slot], it)
            self.load[slot] += 1

    def next_outcome(self) -> tuple[int, Outcome]:
        """Wait for any input to finish: (its worker's slot, its outcome)."""
        import ray

        [ref], _ = ray.wait(list(self.running), num_returns=1)
        slot, actor, it = self.running.pop(ref)
        self.load[slot] -= 1
        try:
            return slot, ray.get(ref)
        except ray.exceptions.RayActorError as e:
            if self.actors[slot] is actor:  # the first of its inputs to report it: replace the worker
                self.actors[slot] = self._spawn()
            err = WorkerLostError(f"its Ray worker died ({' '.join(str(e).split())[:300]})")
            return slot, failed(self.job, it, err)
        except ray.exceptions.RayError as e:
            return slot, failed(self.job, it, e)


def run_on_ray(job: Job, todo: list[Item], config: RunnerConfig, finished: Callable[[Outcome], None]) -> None:
    """Run ``todo`` on Ray (module doc), reporting each input's outcome to ``finished`` as it comes."""
    require_ray()
    import ray

    n = min(config.workers, len(todo))
    ours = start_ray(config, cpus_needed=n * (1 + job.per_worker))  # each worker and its decode tasks
    try:
        pool = _Pool(job, config, n)
        queue = deque(todo)
        for slot in range(n):
            pool.submit(slot, queue)
        while pool.running:
            slot, outcome = pool.next_outcome()
            finished(outcome)
            pool.submit(slot, queue)
    finally:
        if ours:
            ray.shutdown()
