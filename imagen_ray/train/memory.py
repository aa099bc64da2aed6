"""Per-rank memory of the model state (parameters, gradients, optimizer states) under ZeRO.

Measured from the tensors the DeepSpeed engine and its (ZeRO) optimizer actually hold, not
from a formula: every tensor is counted once by its storage, so views into DeepSpeed's flat
buffers (ZeRO 1/2 parameter groups, ZeRO-3 gradient partitions) are not counted twice.
``torch.cuda.memory_allocated`` would give one total on GPU only and cannot split it into
these parts, and DeepSpeed's ``see_memory_usage`` reports the same device totals.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from imagen_ray.train.hooks import StepContext, StepHook

# Attributes of DeepSpeed's ZeRO optimizers (0.19) that hold this rank's gradient partition.
GRAD_ATTRS = (
    "averaged_gradients",  # ZeRO 1/2 (dict of lists) and ZeRO-3 (dict of lists)
    "grads_in_partition",  # ZeRO 1/2 with contiguous gradients
    "grad_partitions_flat_buffer",  # ZeRO-3
)


class _Counter:
    """Sums storage bytes, each storage once."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def add(self, t: Any) -> int:
        if not isinstance(t, Tensor) or t.device.type == "meta":
            return 0
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr == 0 or ptr in self.seen:
            return 0
        self.seen.add(ptr)
        return int(storage.nbytes())

    def add_all(self, obj: Any, depth: int = 3) -> int:
        """Tensors inside nested lists/tuples/dicts (to ``depth`` levels)."""
        if isinstance(obj, Tensor):
            return self.add(obj)
        if depth == 0:
            return 0
        items: Iterable[Any] = ()
        if isinstance(obj, dict):
            items = obj.values()
        elif isinstance(obj, (list, tuple)):
            items = obj
        return sum(self.add_all(x, depth - 1) for x in items)


def _local(p: Tensor) -> Tensor:
    """What this rank holds of a parameter: its ZeRO-3 partition, else the whole tensor."""
    ds_tensor = getattr(p, "ds_tensor", None)
    return ds_tensor if ds_tensor is not None else p.data


def model_state_bytes(engine: Any) -> dict[str, int]:
    """Bytes of this rank's parameters, gradients and optimizer states.

    Call it between ``engine.backward`` and ``engine.step`` (gradients exist only then)
    after at least one step (optimizers create their states lazily).

    Args:
        engine: a ``deepspeed.DeepSpeedEngine``.

    Returns:
        ``params``: the module's parameters as this rank holds them (ZeRO-3: its partition
        ``ds_tensor``); ``grads``: gradients (ZeRO 0: ``param.grad``; ZeRO 1-3: the
        optimizer's gradient partitions, plus any ``param.grad`` still held);
        ``optimizer``: the inner optimizer's states (Adam's moments); ``master_weights``:
        the tensors the inner optimizer steps when they are not the parameters themselves
        (ZeRO 1/2 keep an fp32 copy of the rank's partition even in fp32 training; ZeRO-3
        in fp32 and ZeRO 0 step the parameters: 0); ``buffers``: other tensors of the ZeRO
        optimizer (communication buckets and the like), kept apart.
    """
    count = _Counter()
    module = engine.module
    params = sum(count.add(_local(p)) for p in module.parameters())
    opt = engine.optimizer
    inner = getattr(opt, "optimizer", None) or opt  # ZeRO wraps the torch optimizer
    grads = sum(count.add(p.grad) for p in module.parameters())
    for name in GRAD_ATTRS:
        grads += count.add_all(getattr(opt, name, None))
    for attr, value in vars(opt).items():  # name-mangled ZeRO-3 map of grad partitions
        if attr.endswith("__param_id_to_grad_partition"):
            grads += count.add_all(value)
    master_grads = 0
    master = 0
    optimizer = 0
    if inner is not None:
        for group in inner.param_groups:
            for p in group["params"]:
                master_grads += count.add(p.grad)
                master += count.add(p)  # a separate fp32 master copy (the params at ZeRO 0)
        for st in inner.state.values():
            optimizer += count.add_all(st)
    buffers = 0
    if opt is not inner:
        buffers = sum(count.add_all(v) for v in vars(opt).values())
    return {
        "params": params,
        "grads": grads + master_grads,
        "optimizer": optimizer,
        "master_weights": master,
        "buffers": buffers,
    }


def gather_model_state_bytes(engine: Any) -> list[dict[str, int]]:
    """:func:`model_state_bytes` of every rank, in rank order (a collective call)."""
    import torch.distributed as dist

    mine = model_state_bytes(engine)
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out


class ModelStateMemory(StepHook):
    """Measures :func:`gather_model_state_bytes` once, in optimizer step 2, and adds it to
    every later report as ``memory/model_state_bytes`` (one dict per rank, rank order).

    Step 2 because optimizers create their states lazily in step 1; measured between
    ``backward`` and ``step``, where gradients exist. For benchmarks: pass it in
    ``build_trainer(..., hooks=[ModelStateMemory()])``.
    """

    def __init__(self) -> None:
        self.measured: list[dict[str, int]] | None = None

    def before_step(self, ctx: StepContext) -> None:
        if ctx.step >= 1 and self.measured is None:  # a collective: every rank calls it
            self.measured = gather_model_state_bytes(ctx.engine)

    def metrics(self, ctx: StepContext) -> dict[str, Any]:
        # a per-rank list: for the run's result, not a W&B chart
        return {} if self.measured is None else {"memory/model_state_bytes": self.measured}


def peak_memory_bytes(device_type: str) -> int:
    """This process's peak memory: on CUDA the allocator's peak
    (``torch.cuda.max_memory_allocated``: parameters, states and activations) since the
    training loop's report window began (``TrainPerf.start_window`` resets it), elsewhere the
    peak resident set size (``getrusage``'s ``ru_maxrss``: everything the worker holds, the
    Python and torch runtime included)."""
    if device_type == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


class PeakMemory(StepHook):
    """Adds every rank's :func:`peak_memory_bytes` to each report as ``memory/peak_bytes``
    (one int per rank, rank order; a collective). For benchmarks:
    ``build_trainer(..., hooks=[PeakMemory()])``."""

    def metrics(self, ctx: StepContext) -> dict[str, Any]:
        import torch.distributed as dist

        dev = getattr(ctx.engine, "device", "cpu")
        mine = peak_memory_bytes(getattr(dev, "type", str(dev)))
        if not (dist.is_available() and dist.is_initialized()):
            return {"memory/peak_bytes": [mine]}
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, mine)
        return {"memory/peak_bytes": out}
