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

from imagen_ray import storage

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
    if logs is not None and run_dir is not None and not storage.is_uri(run_dir):
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


# Ray 2.60 warns on every `ray.init` that starts a local cluster that token auth is on by
# default; a notice, not a problem (the warning that it is OFF still shows).
_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
_AUTH_ON_NOTICE = "Token authentication is enabled for this Ray cluster"


def _not_the_auth_on_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_AUTH_ON_NOTICE)


def quiet_driver_loggers() -> None:
    """Show only warnings and errors of Ray's, Serve's and DeepSpeed's driver-side loggers,
    without Ray's notice that token auth is on.

    A filter as well as the level: ``serve.start`` sets its logger back to INFO.
    """
    for name in _CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        if _warnings_and_above not in logger.filters:
            logger.addFilter(_warnings_and_above)
    auth = logging.getLogger(_AUTH_LOGGER)
    if _not_the_auth_on_notice not in auth.filters:
        auth.addFilter(_not_the_auth_on_notice)


# The raylet warns on the driver's console whenever it has started a few times more worker
# processes than the node has cores ("... PYTHON worker processes have been started ... 4x the
# maximum expected startup concurrency"). Our read/decode tasks ask for fractional CPUs on
# purpose, so on a 2-core machine every run printed it; it stays in Ray's log files.
_STARTUP_CONCURRENCY = "maximum expected startup concurrency"


def drop_startup_concurrency_warning() -> None:
    """Keep the raylet's startup-concurrency warning off this console (other raylet errors,
    e.g. a worker killed for memory, still show). Ray prints what its error listener receives
    through ``ray._private.worker.print_to_stdstream``; there is no public switch for one
    message, so that function is wrapped once; a Ray without it is left alone."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:  # pragma: no cover - a Ray without the private module
        return
    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "_imagen_ray_filtered", False):
        return

    def print_to_stdstream(data: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if data.get("pid") == "raylet":
            lines = [ln for ln in data.get("lines", []) if _STARTUP_CONCURRENCY not in ln]
            if not lines:
                return None
            data = {**data, "lines": lines}
        return original(data, *args, **kwargs)

    print_to_stdstream._imagen_ray_filtered = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = print_to_stdstream


def ray_logs_dir() -> Path | None:
    """The log directory of the Ray session this process is connected to, if on this machine."""
    import ray

    try:
        node = ray._private.worker._global_node  # no public accessor in Ray 2.60
        path = Path(node.get_logs_dir_path()) if node is not None else None
    except Exception:  # a client connection or a Ray that moved the attribute
        return None
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
