"""A short soak (bench/serve.py --soak): valid requests mixed with every kind of invalid
one from concurrent clients; no valid request gets a 5xx, every invalid one its 4xx."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_short_soak_counts(tmp_path: Path) -> None:
    from bench import serve as bench_serve

    args = bench_serve.parse_args(
        ["--soak", "--soak-requests", "60", "--soak-clients", "8", "--num-cpus", "2"]
    )
    out = bench_serve.soak(args)
    assert out["requests"] == 60
    kinds = out["expected"]
    assert {"malformed_json", "nan", "surrogate", "oversized_body", "wrong_token"} <= set(kinds)
    assert out["valid_5xx"] == 0 and out["valid_not_2xx"] == 0, out["statuses"]
    assert out["invalid_not_their_4xx"] == {}, out["statuses"]
    for kind, expected in kinds.items():  # every kind was sent, and answered as expected
        got = out["statuses"][kind]
        assert got, kind
        if expected != "ok":
            assert set(got) == {str(expected)}, (kind, got)
    assert out["latency_valid_p50_s"] <= out["latency_valid_p99_s"]
    assert out["rss_mb_total_start"] > 0 and "ProxyActor" in " ".join(out["rss_mb_end"])


def test_timed_soak_samples_memory_and_latency_over_time() -> None:
    """The short form of `bench/serve.py --soak --minutes 10`: one minute, 8 clients, the
    Serve processes' RSS every 10 s; memory after the warm-up (the first 30 %) grows by
    less than 5 % and no valid request fails."""
    from bench import serve as bench_serve

    flags = ["--soak", "--minutes", "1", "--sample-every", "10", "--soak-clients", "8"]
    args = bench_serve.parse_args([*flags, "--num-cpus", "2"])
    out = bench_serve.soak(args)
    assert out["valid_5xx"] == 0 and out["valid_not_2xx"] == 0, out["statuses"]
    assert out["requests"] > 30 and 55 <= out["wall_s"] <= 120
    over = out["over_time"]
    assert len(over["samples"]) >= 6
    assert over["rss_steady_growth_pct"] < 5.0, over["samples"]
    assert over["p99_third_window_s"] and over["p99_last_window_s"]
