"""A command's console: cluster output and Ray's notices stay in Ray's log files, worker lines
sent through a Console reach the driver, and the run directory links the logs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from imagen_ray.ray_compat import AUTH_ON_NOTICE
from imagen_ray.runtime import DRIVER_LOG

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import sys
    import time
    import ray
    from imagen_ray.runtime import Console, init_ray, logs_hint

    verbose = sys.argv[2] == "verbose"
    logs = init_ray(num_cpus=2, verbose=verbose, run_dir=sys.argv[1], object_store_memory=10**8)
    print(logs_hint(logs, verbose), flush=True)
    console = Console()

    @ray.remote(num_cpus=0.1)
    def work(sink):
        print("NOISE-FROM-A-TASK", flush=True)
        sink.put("LINE-FROM-A-TASK")
        return 7

    sink = console.sink()
    assert console.run([lambda: ray.get(work.remote(sink))], poll_s=0.1) == [7]
    time.sleep(5)  # Ray forwards worker output asynchronously: give it time to show (or not)
    console.close()
    ray.shutdown()
    """
)


def local_ray_env() -> dict[str, str]:
    """This environment without RAY_* settings: a new local Ray with Ray's own defaults (token
    auth on, and Ray's notice saying so)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}


def _run(tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    return subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run"), mode],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env=local_ray_env(),
    )


@pytest.mark.slow
def test_quiet_console_shows_worker_lines_and_links_the_logs(tmp_path: Path) -> None:
    out = _run(tmp_path, "quiet")
    console = out.stdout + out.stderr
    assert "LINE-FROM-A-TASK" in out.stdout
    assert "NOISE-FROM-A-TASK" not in console, "a task's print reached the console"
    assert "Started a local Ray instance" not in console  # ray.init's INFO lines
    link = tmp_path / "run" / "logs"
    assert link.is_symlink() and link.is_dir()
    # Ray's notice that token auth is on: in Ray's log directory, not on the console
    assert AUTH_ON_NOTICE not in console
    assert AUTH_ON_NOTICE in (link / DRIVER_LOG).read_text()
    assert str(link.resolve()) in out.stdout, "the command did not say where the logs are"
    logged = [p for p in link.glob("worker-*.out") if "NOISE-FROM-A-TASK" in p.read_text()]
    assert logged, "the task's output is not in Ray's log files"


@pytest.mark.slow
def test_verbose_forwards_the_cluster_output(tmp_path: Path) -> None:
    out = _run(tmp_path, "verbose")
    assert "NOISE-FROM-A-TASK" in out.stdout + out.stderr
    assert "LINE-FROM-A-TASK" in out.stdout
    assert AUTH_ON_NOTICE in out.stderr  # as Ray prints it


@pytest.mark.slow
def test_the_serve_command_starts_and_stops_without_rays_notices(tmp_path: Path) -> None:
    """`imagen-ray serve` until Ctrl-C on a local Ray: neither Ray's notice that token auth
    is on nor the raylet's line as Serve stops ("Task ServeController.graceful_shutdown
    failed") reaches the console."""
    from imagen_ray.cli import main
    from imagen_ray.serve.app import free_port

    cascade = tmp_path / "cascade"
    assert main(["init", "-c", str(ROOT / "configs/tiny/cascade.yaml"), "--out", str(cascade)]) == 0
    console = tmp_path / "console.txt"
    with console.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "imagen_ray", "serve", "--cascade", str(cascade),
             "-c", str(ROOT / "configs/tiny/serve.yaml"), "--set", f"serve.port={free_port()}"],
            stdout=out, stderr=subprocess.STDOUT, env=local_ray_env(), cwd=ROOT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while "Ctrl-C stops" not in console.read_text():
                assert proc.poll() is None, console.read_text()
                assert time.monotonic() < deadline, console.read_text()
                time.sleep(1)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=120) == 0, console.read_text()
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)
    text = console.read_text()
    assert "shutting down" in text
    assert "graceful_shutdown" not in text
    assert AUTH_ON_NOTICE not in text
    logs = re.search(r"logs: (\S+) \(--verbose", text)
    assert logs, text
    assert AUTH_ON_NOTICE in (Path(logs.group(1)) / DRIVER_LOG).read_text()
