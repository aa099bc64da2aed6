"""randn with one generator per example."""

import pytest
import torch

from imagen_ray.diffusion import randn


def test_per_example_generators_make_rows_batch_independent() -> None:
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    batch = randn((3, 2, 4), gens, "cpu")
    alone = randn((1, 2, 4), [torch.Generator().manual_seed(2)], "cpu")
    assert torch.equal(batch[1], alone[0])
    assert not torch.equal(batch[0], batch[1])


def test_single_generator_and_count_mismatch() -> None:
    a = randn((2, 3), torch.Generator().manual_seed(0), "cpu", torch.float64)
    b = randn((2, 3), torch.Generator().manual_seed(0), "cpu", torch.float64)
    assert a.dtype == torch.float64 and torch.equal(a, b)
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        randn((3, 1), [torch.Generator(), torch.Generator()], "cpu")
