"""`make bench`'s runner (bench/all.py): every script's JSON lines into one file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import all as bench_all

ROOT = Path(__file__).resolve().parents[1]


def test_every_benchmark_script_is_found_cheapest_first() -> None:
    names = bench_all.scripts()
    assert names[:4] == ["unet", "data", "train", "serve"]
    assert "all" not in names and not any(n.startswith("_") for n in names)
    assert set(names) == {p.stem for p in (ROOT / "bench").glob("[!_]*.py")} - {"all"}


def test_run_one_keeps_json_lines_summary_and_failures(tmp_path: Path) -> None:
    (tmp_path / "ok.py").write_text(
        "import json, sys\n"
        "print(json.dumps({'round': 1}))\n"
        "print('not json')\n"
        "print(json.dumps({'summary': sys.argv[1:]}))\n"
    )
    (tmp_path / "bad.py").write_text("raise SystemExit(3)\n")
    ok = bench_all.run_one("ok", ["--quick"], bench_dir=tmp_path)
    assert ok["returncode"] == 0
    assert ok["lines"] == [{"round": 1}, {"summary": ["--quick"]}]
    assert ok["summary"] == {"summary": ["--quick"]}
    assert ok["command"] == "python bench/ok.py --quick" and ok["seconds"] >= 0
    bad = bench_all.run_one("bad", [], bench_dir=tmp_path)
    assert bad["returncode"] == 3 and bad["summary"] is None


def test_main_writes_one_file_and_names_unknown_benchmarks(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        bench_all.main(["--only", "nope"])
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    calls = []

    def fake(name: str, args: list[str], bench_dir: Path = tmp_path) -> dict:
        calls.append((name, args))
        return {"returncode": 0 if name == "unet" else 1, "summary": {"x": 1}}

    monkeypatch.setattr(bench_all, "run_one", fake)
    out = tmp_path / "r" / "results.json"
    rc = bench_all.main(["--only", "unet", "data", "--quick", "--out", str(out)])
    assert rc == 1  # data "failed"
    assert calls == [("unet", ["--quick"]), ("data", ["--quick"])]
    report = json.loads(out.read_text())
    assert list(report["benchmarks"]) == ["unet", "data"] and report["quick"] is True
    assert report["machine"]["cpu_count"] >= 1 and "commit" in report
