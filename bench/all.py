"""Run every benchmark in bench/ and write their results into one JSON file (``make bench``).

Each script runs in its own process, one after another (never side by side: they would
measure each other), and its stdout is kept: every JSON line it printed plus the last one,
its summary. The file also records the machine, the commit and the load average before and
after each script, because these machines are shared and the figures are only comparable
as ratios taken in one script's run.

    python bench/all.py                       # everything, writes bench/results.json
    python bench/all.py --quick               # smoke run of every script (numbers meaningless)
    python bench/all.py --only unet train     # a subset
    python bench/all.py --out /tmp/b.json -- --rounds 1   # extra args for every script

A script that fails is recorded with its exit status (its stderr went to the terminal), and
the others still run; the exit status is 1 when any failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

try:  # `python bench/all.py` puts bench/ on the path; tests import it as bench.all
    from bench._common import loadavg, log, machine_info
except ImportError:
    from _common import loadavg, log, machine_info

HERE = Path(__file__).resolve().parent
ORDER = ("unet", "data", "train", "serve")  # cheapest first


def scripts(bench_dir: Path = HERE) -> list[str]:
    """Benchmark names: every ``*.py`` in bench/ except helpers (``_*``) and this file."""
    found = {p.stem for p in bench_dir.glob("*.py") if not p.name.startswith("_")}
    found.discard(Path(__file__).stem)
    return [n for n in ORDER if n in found] + sorted(found - set(ORDER))


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=HERE, capture_output=True, text=True
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _gpu() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def run_one(name: str, args: list[str], bench_dir: Path = HERE) -> dict[str, Any]:
    """Run ``bench_dir/name.py args``; its JSON lines, summary, time and exit status."""
    cmd = [sys.executable, str(bench_dir / f"{name}.py"), *args]
    log(f"{name}: {' '.join(cmd[1:])}")
    before, t0 = loadavg(), time.perf_counter()
    # stderr (progress bars, logs) goes straight to the terminal while it runs
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    out = proc.stdout
    lines = []
    for line in out.splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a stray print: not a result
    result: dict[str, Any] = {
        "command": " ".join(["python", f"bench/{name}.py", *args]),
        "returncode": proc.returncode,
        "seconds": round(time.perf_counter() - t0, 1),
        "loadavg_before": before,
        "loadavg_after": loadavg(),
        "summary": lines[-1] if lines else None,
        "lines": lines,
    }
    log(f"{name}: exit {proc.returncode} after {result['seconds']} s")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out", default=str(HERE / "results.json"), help="output file (bench/results.json)"
    )
    p.add_argument("--only", nargs="+", metavar="NAME", help=f"a subset of {', '.join(scripts())}")
    p.add_argument("--quick", action="store_true", help="pass --quick to every script")
    p.add_argument("extra", nargs="*", help="after --: arguments for every script")
    a = p.parse_args(argv)
    names = scripts()
    unknown = sorted(set(a.only or []) - set(names))
    if unknown:
        p.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(names)}")
    chosen = [n for n in names if not a.only or n in a.only]
    args = (["--quick"] if a.quick else []) + list(a.extra)
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(),
        "quick": a.quick,
        "machine": machine_info(),
        "gpu": _gpu(),
        "benchmarks": {},
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in chosen:
        report["benchmarks"][name] = run_one(name, args)
        # rewritten after every script (temp file + rename): an interrupted run keeps the rest
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(out)
    failed = [n for n, r in report["benchmarks"].items() if r["returncode"] != 0]
    log(f"wrote {out}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
