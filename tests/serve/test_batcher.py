"""FreeBatcher: batches form when the model is free (no Ray needed)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from imagen_ray.serve.deployments import BatchStats, FreeBatcher


def _batcher(max_batch_size: int = 8, wait_s: float = 0.0):
    calls: list[list[int]] = []
    release = threading.Event()

    def fn(xs: list[int], tags: list[str]) -> list[str]:
        calls.append(list(xs))
        if len(calls) == 1:
            release.wait(5)  # the first batch keeps the model busy until released
        if any(x < 0 for x in xs):
            raise ValueError(f"negative input in {xs}")
        return [f"{t}{x * 10}" for x, t in zip(xs, tags, strict=True)]

    stats = BatchStats()
    pool = ThreadPoolExecutor(max_workers=1)
    return FreeBatcher(fn, pool, max_batch_size, wait_s, stats), calls, release, stats


def test_calls_that_arrive_while_the_model_is_busy_form_the_next_batch() -> None:
    async def main() -> list[str]:
        b, calls, release, stats = _batcher(max_batch_size=4)
        first = asyncio.ensure_future(b(1, "a"))
        await asyncio.sleep(0.05)  # the first call is running alone
        rest = [asyncio.ensure_future(b(x, "b")) for x in range(2, 8)]  # 6 arrive meanwhile
        await asyncio.sleep(0.05)
        release.set()
        out = await asyncio.gather(first, *rest)
        assert calls == [[1], [2, 3, 4, 5], [6, 7]]  # max_batch_size 4, then the remainder
        assert stats.as_dict()["batches"] == {"1": 1, "2": 1, "4": 1}
        return out

    assert asyncio.run(main()) == ["a10", "b20", "b30", "b40", "b50", "b60", "b70"]


def test_a_lone_call_waits_for_company_only_while_idle() -> None:
    async def main() -> None:
        b, calls, release, _ = _batcher(wait_s=0.3)
        release.set()
        t0 = time.monotonic()
        first = asyncio.ensure_future(b(1, "x"))
        await asyncio.sleep(0.1)
        second = asyncio.ensure_future(b(2, "y"))  # inside the first call's wait window
        assert await asyncio.gather(first, second) == ["x10", "y20"]
        assert calls == [[1, 2]] and time.monotonic() - t0 >= 0.3

    asyncio.run(main())


def test_a_failed_batch_is_retried_call_by_call_so_only_the_bad_call_fails() -> None:
    async def main() -> None:
        b, calls, release, _ = _batcher()
        release.set()
        await b(0, "warm")  # first batch (the one that would block) is done
        got = await asyncio.gather(b(5, "p"), b(-1, "q"), b(3, "r"), return_exceptions=True)
        assert got[0] == "p50" and got[2] == "r30"
        assert isinstance(got[1], ValueError) and "[-1]" in str(got[1])
        assert await b(4, "s") == "s40"  # the loop lives on
        assert calls == [[0], [5, -1, 3], [5], [-1], [3], [4]]

    asyncio.run(main())


def test_a_cancelled_caller_is_left_out_of_the_batch() -> None:
    async def main() -> None:
        b, calls, release, _ = _batcher()
        first = asyncio.ensure_future(b(1, "a"))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(b(2, "b"))
        kept = asyncio.ensure_future(b(3, "c"))
        await asyncio.sleep(0.01)
        gone.cancel()
        release.set()
        assert await asyncio.gather(first, kept) == ["a10", "c30"]
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert calls == [[1], [3]]

    asyncio.run(main())


def test_a_prompt_the_tokenizer_rejects_fails_its_own_call_with_a_422() -> None:
    """The encoder deployment's batch function with a fake encoder: the batch fails, the
    batcher retries call by call, and the rejected prompt's error is a RequestProblem."""
    import torch

    from imagen_ray.serve.deployments import TextEncoderDeployment
    from imagen_ray.serve.problems import RequestProblem

    class Encoding:
        def __init__(self, n: int) -> None:
            self.emb, self.mask = torch.zeros(n, 2, 4), torch.ones(n, 2)
            self.truncated = [False] * n

    class FakeEncoder:
        def tokenizer(self, texts: list[str]) -> None:
            if any("BAD" in t for t in texts):
                raise TypeError("TextEncodeInput must be Union[TextInputSequence, ...]")

        def encode(self, texts: list[str]) -> Encoding:
            self.tokenizer(texts)
            return Encoding(len(texts))

    cls = TextEncoderDeployment.func_or_class
    dep = cls.__new__(cls)
    dep.encoder, dep.stats = FakeEncoder(), BatchStats()
    dep.batcher = FreeBatcher(dep._encode, ThreadPoolExecutor(max_workers=1), 8, 0.05, dep.stats)

    async def main() -> list[object]:
        calls = [dep.encode(p, None) for p in ("a red circle", "BAD", "a blue square")]
        return await asyncio.gather(*calls, return_exceptions=True)

    good, bad, other = asyncio.run(main())
    assert isinstance(good, dict) and isinstance(other, dict) and good["emb"].shape == (2, 4)
    assert isinstance(bad, RequestProblem) and bad.status == 422
    assert "prompts: the text encoder's tokenizer rejected the text" in str(bad)
    assert dep.stats.as_dict()["batches"] == {"3": 1}  # one batch, then retried alone
