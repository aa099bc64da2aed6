"""Elastic resume: continue a checkpoint on another number of workers and/or ZeRO stage.

A checkpoint holds DeepSpeed's files in the layout of the run that wrote them (ZeRO 1/2:
each rank's slice of flat fp32 groups; ZeRO 3: each rank's padded partition of every
parameter; ZeRO 0: one replicated model + optimizer). When the resuming run has another
world size or ZeRO stage, every new rank *consolidates at load time* -- it reads the old
ranks' files offline into full, per-parameter fp32 tensors (:func:`read_full_state`) --
and *re-shards* them into its own engine (:func:`load_full_state`): master weights,
optimizer moments, the optimizer's step, the LR scheduler and DeepSpeed's counters.

Why not DeepSpeed's universal checkpoint (``ds_to_universal`` + ``load_universal``): in
DeepSpeed 0.19 it converts only Adam's ``exp_avg``/``exp_avg_sq`` (the paper's base stage
trains with Adafactor, whose flat ``variance`` would be dropped) and needs ZeRO >= 1 files
(a ZeRO 0 checkpoint has no ``*_optim_states.pt`` to convert). Reading the files ourselves
covers ZeRO 0-3 and any per-element optimizer state, keeps the same-topology resume on
DeepSpeed's own fast path, and costs nothing at save time. The price: during a resume on
a new topology every rank holds the full fp32 weights and optimizer state in host memory
once (about 12 bytes per parameter for AdamW).

What cannot be converted is refused with the reason: Adafactor's factored row/column
statistics (ZeRO 0 on >= 2-D weights) have no per-element form under ZeRO 1-3, and the
ZeRO 0 engine of a bf16/fp16 run keeps its fp32 master copy in a wrapper this module does
not read.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


class ReshardError(RuntimeError):
    """A checkpoint cannot be loaded into this run's topology; the message says why."""


@dataclass
class FullState:
    """A training state independent of the topology that wrote it.

    Attributes:
        params: full fp32 master weights by parameter name (``module.named_parameters``).
        optim: per parameter, the optimizer state tensors with the parameter's shape
            (AdamW: ``exp_avg``, ``exp_avg_sq``; Adafactor under ZeRO 1-3: ``variance``),
            or, from a ZeRO 0 checkpoint, whatever the torch optimizer kept for it.
        step: the optimizer's own step entry (a scalar tensor or number), or None.
        lr: the learning rate the optimizer held (the LR scheduler sets it at each step;
            the first step after the resume runs with it). One param group: this
            project's runs hand DeepSpeed a single list of parameters.
        engine: DeepSpeed's engine state: ``lr_scheduler``, ``global_steps``,
            ``global_samples``, ``skipped_steps``.
    """

    params: dict[str, Tensor] = field(default_factory=dict)
    optim: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    step: Any = None
    lr: float | None = None
    engine: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------- partitions


def zero3_partition(full: Tensor, world: int, rank: int) -> Tensor:
    """Rank ``rank``'s ZeRO-3 slice of a parameter: the flat tensor padded with zeros to
    ``world * ceil(numel / world)`` elements, cut into ``world`` equal parts."""
    part = math.ceil(full.numel() / world)
    flat = full.reshape(-1)
    out = flat.new_zeros(part)
    start = min(rank * part, flat.numel())
    piece = flat[start : min(start + part, flat.numel())]
    out[: piece.numel()] = piece
    return out


def zero3_unpartition(parts: list[Tensor], shape: torch.Size | list[int]) -> Tensor:
    """Inverse of :func:`zero3_partition`: the ranks' slices in rank order, padding dropped."""
    numel = math.prod(shape)
    flat = torch.cat([p.reshape(-1) for p in parts])
    if flat.numel() < numel:
        raise ReshardError(f"ZeRO-3 partitions hold {flat.numel()} elements, need {numel}")
    return flat[:numel].reshape(tuple(shape)).clone()


def _split_flat(flat: Tensor, shapes: dict[str, Any], world: int) -> list[tuple[str, Tensor]]:
    """One rank's concatenated ZeRO-3 partitions (params in ``shapes`` order) split by
    parameter (the walk of DeepSpeed's ``zero_to_fp32``)."""
    out, offset = [], 0
    for name, shape in shapes.items():
        part = math.ceil(math.prod(shape) / world)
        out.append((name, flat[offset : offset + part]))
        offset += part
    return out


# ------------------------------------------------------------------------- reading


def _load(path: Path) -> Any:
    # DeepSpeed's own files: torch pickles this project wrote (see checkpoint.py)
    return torch.load(path, map_location="cpu", weights_only=False)


def _rank_of(path: Path) -> int:
    m = re.search(r"zero_pp_rank_(\d+)_", path.name)
    assert m, path
    return int(m.group(1))


def _engine_state(model_states: dict[str, Any]) -> dict[str, Any]:
    keys = ("lr_scheduler", "global_steps", "global_samples", "skipped_steps")
    return {k: model_states.get(k) for k in keys}


def read_full_state(ds_dir: str | Path, names: list[str]) -> FullState:
    """Consolidate a DeepSpeed checkpoint directory of any world size and ZeRO stage.

    Args:
        ds_dir: the directory ``engine.save_checkpoint(dir, tag)`` wrote (``dir/tag``).
        names: the trainable parameters' names in ``module.named_parameters()`` order (the
            order the optimizer received them).

    Returns:
        The full state (CPU, fp32).
    """
    d = Path(ds_dir)
    optim_files = sorted(d.glob("zero_pp_rank_*_mp_rank_00_optim_states.pt"), key=_rank_of)
    if not optim_files:
        return _read_zero0(d, names)
    first = _load(optim_files[0])["optimizer_state_dict"]
    if "fp32_flat_groups" in first:
        return _read_zero3(d, optim_files, first)
    return _read_zero12(d, optim_files, first, names)


def _read_zero0(d: Path, names: list[str]) -> FullState:
    path = d / "mp_rank_00_model_states.pt"
    if not path.is_file():
        raise ReshardError(f"{d} holds no DeepSpeed checkpoint ({path.name} missing)")
    ms = _load(path)
    osd = ms.get("optimizer")
    if not isinstance(osd, dict) or "state" not in osd or "param_groups" not in osd:
        raise ReshardError(
            f"{d}: the ZeRO 0 checkpoint's optimizer is not a plain torch optimizer (a bf16/"
            "fp16 run keeps its fp32 master weights in DeepSpeed's wrapper); resume it with "
            "its own world size and ZeRO stage, or with train.precision=fp32 runs only"
        )
    index = [i for g in osd["param_groups"] for i in g["params"]]
    if len(index) != len(names):
        raise ReshardError(
            f"{d}: the optimizer has {len(index)} parameters, the model {len(names)}"
        )
    full = FullState(engine=_engine_state(ms), lr=_lr(osd))
    module = ms["module"]
    for name, i in zip(names, index, strict=True):
        full.params[name] = module[name].float().clone()
        st = osd["state"].get(i, {})
        full.optim[name] = {k: v.float().clone() for k, v in st.items() if k != "step"}
        if "step" in st and full.step is None:
            full.step = copy.deepcopy(st["step"])
    return full


def _lr(torch_sd: Any) -> float | None:
    """The learning rate of a torch optimizer state_dict's first param group."""
    if isinstance(torch_sd, dict) and torch_sd.get("param_groups"):
        return float(torch_sd["param_groups"][0]["lr"])
    return None


def _base_state(osd: dict[str, Any], key: str, group: int) -> dict[str, Any]:
    base = osd[key]
    if isinstance(base, dict):  # a torch optimizer state_dict: {"state": {group: {...}}}
        return dict(base["state"].get(group, {}))
    return dict(base[group])  # DeepSpeed's elastic_checkpoint form: one dict per group


def _read_zero12(
    d: Path, optim_files: list[Path], first: dict[str, Any], names: list[str]
) -> FullState:
    """ZeRO 1/2: each rank's slice of every flat group, located per parameter by the
    ``param_slice_mappings`` DeepSpeed saves (the name -> (start, numel) of its fragment)."""
    ms = _load(d / "mp_rank_00_model_states.pt")
    shapes = {n: s for g in ms["param_shapes"] for n, s in g.items()}
    pieces: dict[str, dict[str, list[Tensor]]] = {n: {} for n in shapes}
    step = None
    for path in optim_files:
        osd = first if path == optim_files[0] else _load(path)["optimizer_state_dict"]
        if "optimizer_state_dict" in osd:  # a ZeRO-3 file among ZeRO 1/2 ones
            raise ReshardError(f"{d}: mixed ZeRO stages in one checkpoint ({path.name})")
        for g, mapping in enumerate(osd["param_slice_mappings"]):
            flat = osd["single_partition_of_fp32_groups"][g]
            st = _base_state(osd, "base_optimizer_state", g)
            if step is None and "step" in st:
                step = copy.deepcopy(st["step"])
            # per-element state: the tensors laid out like the flat partition (possibly
            # with its alignment padding at the end)
            flats = {"fp32": flat} | {
                k: v for k, v in st.items() if torch.is_tensor(v) and v.dim() == 1 and k != "step"
            }
            for name, frag in mapping.items():
                for key, t in flats.items():
                    pieces[name].setdefault(key, []).append(t.narrow(0, frag.start, frag.numel))
    full = FullState(step=step, engine=_engine_state(ms), lr=_lr(first["base_optimizer_state"]))
    missing = [n for n in names if n not in pieces or "fp32" not in pieces[n]]
    if missing:
        raise ReshardError(f"{d}: no ZeRO shard holds {missing[:3]} ({len(missing)} in all)")
    for name in names:
        shape = tuple(shapes[name])
        for key, parts in pieces[name].items():
            t = torch.cat(parts).float().reshape(shape).clone()
            if key == "fp32":
                full.params[name] = t
            else:
                full.optim.setdefault(name, {})[key] = t
    return full


def _read_zero3(d: Path, optim_files: list[Path], first: dict[str, Any]) -> FullState:
    """ZeRO 3: every rank holds a ``ceil(numel / world)`` partition of each parameter, its
    sub-groups' flat tensors concatenated in ``param_shapes`` order."""
    world = int(first["partition_count"])
    if len(optim_files) != world:
        raise ReshardError(f"{d}: {len(optim_files)} ZeRO-3 shard files for {world} ranks")
    ms = _load(d / "zero_pp_rank_0_mp_rank_00_model_states.pt")
    shapes = {n: s for g in ms["param_shapes"] for n, s in g.items()}
    parts: dict[str, dict[str, list[Tensor]]] = {n: {} for n in shapes}
    step = None
    for path in optim_files:
        osd = first if path == optim_files[0] else _load(path)["optimizer_state_dict"]
        groups = osd["fp32_flat_groups"]
        states = [_base_state(osd, "optimizer_state_dict", g) for g in range(len(groups))]
        if step is None and "step" in states[0]:
            step = copy.deepcopy(states[0]["step"])
        keys = [
            k
            for k, v in states[0].items()
            if k != "step" and torch.is_tensor(v) and v.shape == groups[0].shape
        ]
        flats = {"fp32": torch.cat([g.reshape(-1) for g in groups])}
        flats |= {k: torch.cat([s[k].reshape(-1) for s in states]) for k in keys}
        for key, flat in flats.items():
            for name, piece in _split_flat(flat, shapes, world):
                parts[name].setdefault(key, []).append(piece)
    full = FullState(step=step, engine=_engine_state(ms), lr=_lr(first["optimizer_state_dict"]))
    for name, by_key in parts.items():
        for key, ps in by_key.items():
            t = zero3_unpartition(ps, shapes[name]).float()
            if key == "fp32":
                full.params[name] = t
            else:
                full.optim.setdefault(name, {})[key] = t
    return full


# ------------------------------------------------------------------------- loading


def trainable_names(module: nn.Module) -> list[str]:
    """The names of the parameters the optimizer trains, in its order."""
    return [n for n, p in module.named_parameters() if p.requires_grad]


def load_full_state(engine: Any, full: FullState, *, rank: int, world: int) -> None:
    """Re-shard a :class:`FullState` into a freshly built engine of any ZeRO stage.

    Sets the master weights, the module's (low-precision) weights, the optimizer's
    per-element state and step, the LR scheduler and DeepSpeed's step/sample counters.
    Needs no collective call: every rank cuts its own part from the full tensors.
    """
    stage = int(engine.zero_optimization_stage())
    if stage == 0:
        _load_zero0(engine, full)
    elif stage in (1, 2):
        _load_zero12(engine, full)
    else:
        _load_zero3(engine, full, rank=rank, world=world)
    if full.lr is not None:
        for group in engine.optimizer.param_groups:
            group["lr"] = full.lr
    es = full.engine
    if engine.lr_scheduler is not None and es.get("lr_scheduler") is not None:
        engine.lr_scheduler.load_state_dict(es["lr_scheduler"])
    for k in ("global_steps", "global_samples", "skipped_steps"):
        if es.get(k) is not None:
            setattr(engine, k, es[k])


def _step(full: FullState) -> Any:
    return copy.deepcopy(full.step) if full.step is not None else None


def _per_element(full: FullState, name: str, numel: int) -> dict[str, Tensor]:
    """The parameter's optimizer state as tensors of its size, or a clear refusal."""
    st = full.optim.get(name, {})
    bad = [k for k, v in st.items() if v.numel() != numel]
    if bad:
        raise ReshardError(
            f"the checkpoint's optimizer state {bad} of {name} is not per-element (Adafactor's "
            "factored statistics of ZeRO 0) and cannot be re-sharded for ZeRO 1-3; resume with "
            "train.zero_stage=0"
        )
    return st


@torch.no_grad()
def _load_zero0(engine: Any, full: FullState) -> None:
    opt = engine.optimizer
    if not isinstance(opt, torch.optim.Optimizer) or hasattr(opt, "bit16_groups"):
        raise ReshardError(
            "this run's ZeRO 0 engine wraps its optimizer (bf16/fp16 precision); an elastic "
            "resume into ZeRO 0 needs train.precision=fp32, or use ZeRO 1-3"
        )
    params = dict(engine.module.named_parameters())
    for name in trainable_names(engine.module):
        p = params[name]
        p.data.copy_(full.params[name].reshape(p.shape))
        # per-element state takes the parameter's shape; Adafactor's factored row/column
        # statistics (from a ZeRO 0 checkpoint) keep theirs
        st = {
            k: v.reshape(p.shape).clone() if v.numel() == p.numel() else v.clone()
            for k, v in full.optim.get(name, {}).items()
        }
        if st or full.step is not None:
            opt.state[p] = {**({"step": _step(full)} if full.step is not None else {}), **st}


@torch.no_grad()
def _load_zero12(engine: Any, full: FullState) -> None:
    """Each lp parameter's ``_hp_mapping`` names the fragment of it that this rank's flat
    fp32 partition holds (``lp_fragment_address``) and where (``hp_fragment_address``)."""
    opt = engine.optimizer
    names = {p: n for n, p in engine.module.named_parameters()}
    for i, flat in enumerate(opt.single_partition_of_fp32_groups):
        buffers: dict[str, Tensor] = {}
        for lp in opt.bit16_groups[i]:
            name = names[lp]
            lp.data.copy_(full.params[name].reshape(lp.shape).to(lp.dtype))
            m = lp._hp_mapping
            if m is None:
                continue
            src = m.lp_fragment_address
            dst = m.hp_fragment_address
            flat.narrow(0, dst.start, dst.numel).copy_(
                full.params[name].reshape(-1).narrow(0, src.start, src.numel)
            )
            for key, v in _per_element(full, name, lp.numel()).items():
                buf = buffers.setdefault(key, torch.zeros_like(flat))
                buf.narrow(0, dst.start, dst.numel).copy_(
                    v.reshape(-1).narrow(0, src.start, src.numel)
                )
        state = {"step": _step(full)} if full.step is not None else {}
        if buffers or state:
            opt.optimizer.state[flat] = {**state, **buffers}


@torch.no_grad()
def _load_zero3(engine: Any, full: FullState, *, rank: int, world: int) -> None:
    """DeepSpeed's ``grad_position`` locates each parameter's partition in this rank's
    fp32 sub-group; the lp partition is ``param.ds_tensor``."""
    opt = engine.optimizer
    buffers: dict[int, dict[str, Tensor]] = {}
    for name, p in engine.module.named_parameters():
        if not p.requires_grad:
            continue
        part = zero3_partition(full.params[name], world, rank)
        p.ds_tensor.data.copy_(part[: p.ds_tensor.numel()].to(p.ds_tensor.dtype))
        g, offset, numel = opt.grad_position[opt.get_param_id(p)]
        flat = opt.fp32_partitioned_groups_flat[g]
        flat.narrow(0, offset, numel).copy_(part[:numel])
        for key, v in _per_element(full, name, p.ds_numel).items():
            buf = buffers.setdefault(g, {}).setdefault(key, torch.zeros_like(flat))
            buf.narrow(0, offset, numel).copy_(zero3_partition(v, world, rank)[:numel])
    for g, flat in enumerate(opt.fp32_partitioned_groups_flat):
        state = {"step": _step(full)} if full.step is not None else {}
        if buffers.get(g) or state:
            opt.optimizer.state[flat] = {**state, **buffers.get(g, {})}


# ------------------------------------------------------------------------- the whole resume


def same_topology(meta: dict[str, Any], world: int, zero_stage: int) -> bool:
    """Whether a checkpoint (its ``config.json``) loads with DeepSpeed's own loader."""
    return int(meta["world_size"]) == world and int(meta["zero_stage"]) == zero_stage


def new_rank_seed(seed: int, step: int, rank: int) -> int:
    """The RNG seed of a rank the checkpoint's run did not have (``rank >= old world``):
    a function of ``train.seed``, the resumed step and the rank, so a resume is repeatable
    and no two ranks share a stream."""
    return ((seed * 1_000_003 + rank) * 1_000_033 + step) % 2**63


def restore_resharded(
    d: Path, meta: dict[str, Any], engine: Any, ema: Any, *, rank: int, world: int
) -> tuple[dict[str, Any], dict[str, Tensor] | None]:
    """Resume a checkpoint written with another world size or ZeRO stage.

    Loads model, optimizer, LR schedule and DeepSpeed's counters (re-sharded), the EMA
    (consolidated from the old ranks' partitions, then cut for this rank), and returns
    the run counters (rank 0's: they are global) and this rank's RNG states -- the old
    rank of the same number's, or None for a rank the old run did not have (the caller
    seeds it with :func:`new_rank_seed`).
    """
    from imagen_ray.train import checkpoint as ckpt_io
    from imagen_ray.train.ema import consolidate_partitions

    full = read_full_state(d / ckpt_io.DS_TAG, trainable_names(engine.module))
    load_full_state(engine, full, rank=rank, world=world)
    old_world = int(meta["world_size"])
    first = ckpt_io.load_ema_state(d, 0)
    ema_states = [first]
    if first["meta"]["partitioned"]:
        ema_states += [ckpt_io.load_ema_state(d, r) for r in range(1, old_world)]
    ema.load_full(
        consolidate_partitions(ema_states), int(first["meta"]["num_updates"]), rank, world
    )
    state, _ = ckpt_io.load_rank_state(d, 0)
    rng = ckpt_io.load_rank_state(d, rank)[1] if rank < old_world else None
    return state, rng
