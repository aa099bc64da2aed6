"""Starting or joining Ray for a command, and keeping its console readable.

A command's console shows its own lines (training steps, what it wrote where) and one
progress display per step; what Ray, Ray Data, Serve, DeepSpeed and W&B print in the
cluster's processes stays in Ray's log files, which the command names (and links from its
run directory). ``verbose=True`` (the CLI's ``--verbose``) forwards everything as Ray does
by default.

Training workers reach the console through a :class:`Console`: a queue actor that rank 0
puts its progress lines into and the driver prints from while the runs go on. Ray's own
log forwarding (``log_to_driver``) cannot tell a step line from a Ray Data progress redraw,
so the lines that matter travel apart from it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from imagen_ray import ray_compat, storage

T = TypeVar("T")

# Driver-side loggers whose INFO lines (dataset execution plans, deployment updates) are
# Ray's diary rather than the command's output; warnings and errors still show.
_CHATTY_LOGGERS = ("ray", "ray.data", "ray.serve", "ray.train", "ray.tune", "deepspeed")
LOGS_LINK = "logs"


def init_ray(
    *,
    num_cpus: float | None = None,
    verbose: bool = False,
    run_dir: str | Path | None = None,
    address: str | None = None,
    **kwargs: Any,
) -> Path | None:
    """Join the cluster in ``address`` / ``RAY_ADDRESS``, or start a local Ray.

    Args:
        num_cpus: logical CPUs of a local cluster (ignored when joining one).
        verbose: forward every worker's output to this console (Ray's default).
        run_dir: a local directory that gets a ``logs`` link to Ray's log directory.
        address: a cluster to join; default ``RAY_ADDRESS``, else a new local cluster.
        kwargs: more ``ray.init`` arguments.

    Returns:
        Ray's log directory on this machine (None when it is not on this machine).
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    notices = _HeldNotices()
    if not ray.is_initialized():
        init: dict[str, Any] = {"log_to_driver": verbose, **kwargs}
        if not verbose:  # "Started a local Ray instance." and other INFO lines of ray.init
            init.setdefault("logging_level", logging.WARNING)
            quiet_driver_loggers()
        if address:
            init["address"] = address
        else:
            # "local": never attach to a stale cluster left in /tmp/ray by `ray start`.
            init.update(address="local", num_cpus=num_cpus, include_dashboard=False)
        ours = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        with contextlib.nullcontext() if verbose else notices.held():
            ray.init(**init)
        for sig, handler in ours.items():  # ray.init installs its own SIGTERM handler
            if handler is _raise_interrupt:
                signal.signal(sig, handler)
    if not verbose:
        quiet_driver_loggers()
        drop_startup_concurrency_warning()
        # Ray Data run on this driver (encoding, batch generation): one overall progress
        # bar, not one per operator.
        import ray.data

        ray.data.DataContext.get_current().enable_operator_progress_bars = False
    logs = ray_logs_dir()
    if logs is not None:
        notices.write(logs / DRIVER_LOG)
        if run_dir is not None and not storage.is_uri(run_dir):
            link_logs(Path(run_dir), logs)
    return logs


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def stop_on_signals(exit_code: int = 130) -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM stop the command within seconds, Ray with it.

    Inside the block both signals raise ``KeyboardInterrupt`` (SIGINT explicitly: a process
    started in the background inherits it ignored). On it, Ray is shut down (a local
    cluster this process started is stopped: GCS, raylet, agents, workers) and the process
    exits with ``exit_code`` at once, without waiting for threads still blocked in Ray calls
    (``TorchTrainer.fit`` runs in one). A run on a joined cluster ends with this driver:
    Ray kills the actors it owns (the Train controller and its workers).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except KeyboardInterrupt:
        for s in old:
            signal.signal(s, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        print("interrupted: stopping Ray…", file=sys.stderr, flush=True)
        import ray

        with contextlib.suppress(Exception):
            ray.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _warnings_and_above(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def quiet_driver_loggers() -> None:
    """Show only warnings and errors of Ray's, Serve's and DeepSpeed's driver-side loggers.

    A filter as well as the level: ``serve.start`` sets its logger back to INFO.
    """
    for name in _CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        if _warnings_and_above not in logger.filters:
            logger.addFilter(_warnings_and_above)


# Notices Ray prints on the driver that are not problems go to this file in Ray's log
# directory instead of the console.
DRIVER_LOG = "imagen-ray-driver.log"


class _HeldNotices(logging.Filter):
    """Ray's notice, on every ``ray.init`` that starts a local cluster, that token auth is on
    by default: held off the console while ``ray.init`` runs (the warning that auth is OFF
    still shows), then written to :data:`DRIVER_LOG`."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith(ray_compat.AUTH_ON_NOTICE):
            self.records.append(record)
            return False
        return True

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        logger = ray_compat.auth_notice_logger()
        logger.addFilter(self)
        try:
            yield
        finally:
            logger.removeFilter(self)

    def write(self, path: Path) -> None:
        if not self.records:
            return
        fmt = logging.Formatter("%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s")
        with path.open("a") as f:
            f.writelines(fmt.format(r) + "\n" for r in self.records)
        self.records.clear()


# The raylet warns on the driver's console whenever it has started a few times more worker
# processes than the node has cores ("... PYTHON worker processes have been started ... 4x the
# maximum expected startup concurrency"). Our read/decode tasks ask for fractional CPUs on
# purpose, so on a 2-core machine every run printed it; it stays in Ray's log files.
_STARTUP_CONCURRENCY = "maximum expected startup concurrency"


def _startup_concurrency(line: str) -> bool:
    return _STARTUP_CONCURRENCY in line


def drop_startup_concurrency_warning() -> None:
    """Keep the raylet's startup-concurrency warning off this console (other raylet errors,
    e.g. a worker killed for memory, still show)."""
    ray_compat.filter_raylet_console_lines(_startup_concurrency)


def ray_logs_dir() -> Path | None:
    """The log directory of the Ray session this process is connected to, if on this machine."""
    path = ray_compat.global_node_logs_dir()
    return path if path is not None and path.is_dir() else None


def link_logs(run_dir: Path, logs: Path) -> Path:
    """``run_dir/logs`` -> Ray's log directory (replacing an older link)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    link = run_dir / LOGS_LINK
    if link.is_symlink():
        link.unlink()
    if not link.exists():
        link.symlink_to(logs, target_is_directory=True)
    return link


def logs_hint(logs: Path | None, verbose: bool) -> str:
    """One line saying where the cluster's own logs are."""
    if verbose:
        return "Ray, Serve and DeepSpeed output is shown here (--verbose)"
    where = str(logs) if logs is not None else "the head node's /tmp/ray/session_latest/logs"
    return f"Ray, Serve and DeepSpeed logs: {where} (--verbose shows them here)"


class ConsoleSink:
    """What a worker holds: ``put(line)`` sends one line to the driver's console.

    Picklable (it carries an actor handle); a line that cannot be delivered is dropped,
    never raised into the training step.
    """

    def __init__(self, queue: Any) -> None:
        self._queue = queue

    def put(self, line: str) -> None:
        with contextlib.suppress(Exception):  # a full or gone queue must not stop training
            self._queue.put_nowait(line)


class Console:
    """The driver's end: prints what workers put, while blocking calls run in threads.

    Args:
        stream: where lines go (default: stdout).
        maxsize: lines held before workers' lines are dropped (a stalled console must
            not block training).
    """

    def __init__(self, stream: Any = None, maxsize: int = 10_000) -> None:
        from ray.util.queue import Queue

        self._queue = Queue(maxsize=maxsize, actor_options={"num_cpus": 0})
        self._stream = stream
        self._lock = threading.Lock()

    def sink(self) -> ConsoleSink:
        return ConsoleSink(self._queue)

    def print(self, line: str) -> None:
        with self._lock:
            print(line, file=self._stream or sys.stdout, flush=True)

    def drain(self) -> None:
        """Print every line waiting in the queue."""
        for line in self._take():
            self.print(line)

    def _take(self) -> list[str]:
        try:
            n = self._queue.qsize()
            return list(self._queue.get_nowait_batch(n)) if n else []
        except Exception:
            return []

    def run(self, calls: Sequence[Callable[[], T]], poll_s: float = 0.5) -> list[T]:
        """Run ``calls`` at once in threads, printing worker lines until all return.

        Returns their results in order; the first exception raised is raised here (after
        the others finished and the last lines were printed). An interrupt (Ctrl-C) is
        raised at once, without waiting for the calls (see :func:`stop_on_signals`).
        """
        pool = ThreadPoolExecutor(max_workers=max(1, len(calls)))
        try:
            futures: list[Future[T]] = [pool.submit(c) for c in calls]
            while not all(f.done() for f in futures):
                self.drain()
                time.sleep(poll_s)
            self.drain()
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        import ray

        with contextlib.suppress(Exception):  # already gone with its Ray session
            ray.kill(self._queue.actor)  # type: ignore[arg-type]  # Queue types it loosely
