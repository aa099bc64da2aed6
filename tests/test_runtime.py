"""A command's console: cluster output stays in Ray's log files, worker lines sent through a
Console reach the driver, and the run directory links the logs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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


def _run(tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    return subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run"), mode],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )


@pytest.mark.slow
def test_quiet_console_shows_worker_lines_and_links_the_logs(tmp_path: Path) -> None:
    out = _run(tmp_path, "quiet")
    console = out.stdout + out.stderr
    assert "LINE-FROM-A-TASK" in out.stdout
    assert "NOISE-FROM-A-TASK" not in console, "a task's print reached the console"
    assert "Started a local Ray instance" not in console  # ray.init's INFO lines
    assert "Token authentication is enabled" not in console  # Ray's notice on every start
    link = tmp_path / "run" / "logs"
    assert link.is_symlink() and link.is_dir()
    assert str(link.resolve()) in out.stdout, "the command did not say where the logs are"
    logged = [p for p in link.glob("worker-*.out") if "NOISE-FROM-A-TASK" in p.read_text()]
    assert logged, "the task's output is not in Ray's log files"


@pytest.mark.slow
def test_verbose_forwards_the_cluster_output(tmp_path: Path) -> None:
    out = _run(tmp_path, "verbose")
    assert "NOISE-FROM-A-TASK" in out.stdout + out.stderr
    assert "LINE-FROM-A-TASK" in out.stdout


def test_the_raylet_startup_concurrency_warning_is_kept_off_the_console(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ray._private import worker as ray_worker

    from imagen_ray.runtime import drop_startup_concurrency_warning

    printed: list[dict[str, object]] = []
    monkeypatch.setattr(
        ray_worker, "print_to_stdstream", lambda data, ignore_prefix: printed.append(data)
    )
    drop_startup_concurrency_warning()
    drop_startup_concurrency_warning()  # wrapping twice would not add a second filter
    noisy = (
        "WARNING: 8 PYTHON worker processes have been started on node: abc with address: "
        "127.0.0.1, which is 4x the maximum expected startup concurrency (2)."
    )
    oom = "A worker died or was killed while executing a task (out of memory)."
    ray_worker.print_to_stdstream({"lines": [noisy], "pid": "raylet"}, ignore_prefix=False)
    ray_worker.print_to_stdstream({"lines": [noisy, oom], "pid": "raylet"}, ignore_prefix=False)
    ray_worker.print_to_stdstream({"lines": [noisy], "pid": 123}, ignore_prefix=False)
    assert [d["lines"] for d in printed] == [[oom], [noisy]]
