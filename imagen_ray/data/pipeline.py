"""The streaming training-data pipeline, as a Ray Data chain of small functions.

::

    read_epoch_shards                 raw bytes per entry; broken tars -> error rows;
                                      shards in a new order each epoch, rows tagged with it
      -> decode_filter_resize         map_batches tasks: decode, filter, resize, crop (uint8)
      -> TextEncoderActor             map_batches actor pool: captions -> emb fp16, mask
      => rows: image (S, S, 3) uint8, [lowres (s, s, 3) uint8], emb (L, D) fp16, mask (L,)
      -> iter_training_batches        per train worker: shuffle buffer seeded per epoch,
                                      collate to float tensors in [-1, 1]

Images stay uint8 until ``collate`` (4x smaller in the object store than float32) and the
embeddings travel as float16 (half of float32). Nothing on this path materialises the
dataset: it streams, so memory stays flat however many shards there are.

Skipped samples are counted by reason in a :class:`PipelineStats` actor (``decode_error``,
``no_image``, ``no_caption``, ``caption_length``, ``too_small``, ``bad_aspect``,
``no_embedding``, ``bad_embedding``, the image-hygiene refusals ``wrong_format``,
``too_many_pixels``, ``member_too_large``, the metadata ones ``no_json``, ``bad_json`` and
``filter:FIELD<OP>VALUE``, the reader's ``truncated_tar``/``bad_tar`` and ``skipped_shards``
(a remote shard that could not be read after retries, one per shard)) beside ``ok``, and
``resume_skipped``: samples a resumed epoch passed over without reading them. Read
them with ``ray.get(stats.get.remote())``; the map tasks send counts fire-and-forget, so a
read right after the last batch may lag by a few milliseconds (:func:`read_stats` waits for
a minimum).

Text embeddings are either computed on the fly by the encoder actor pool, or precomputed
once with :func:`imagen_ray.data.precompute.encode_shards` (``imagen-ray data encode``) and
read back from a ``text.npz`` entry per sample (``encoding.json`` next to the shards records
the text-encoder config, which must equal the run's; see :mod:`imagen_ray.data.encoding`).

Shuffling (all of it from ``data.seed`` and the epoch, see :mod:`imagen_ray.data.epochs`):
the shard order is reshuffled every epoch, a sample's random crop is drawn from
``(seed, epoch, key)``, and each worker's ``data.shuffle_buffer`` (on by default) is seeded
with ``(seed, epoch, rank)``. Which block reaches a worker first also depends on which
parallel task finishes first, unless ``data.preserve_order``.

Here: the stats actor, the text-encoder actor, the chain itself (:func:`build_dataset`) and
the training side (:func:`collate`, :func:`iter_training_batches`); the per-sample decode,
filter, resize and crop step is :mod:`imagen_ray.data.decode`.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import ray

from imagen_ray.config import DataConfig, RunConfig, StageConfig, TextEncoderConfig
from imagen_ray.data.decode import OK, batch_or_empty_block, decode_filter_resize
from imagen_ray.data.encoding import CAPTION_ENTRY, resolve_encoding
from imagen_ray.data.epochs import RESUME_SKIPPED, epoch_seed, read_epoch_shards
from imagen_ray.data.reader import KEY_COLUMN, expand_shards

if TYPE_CHECKING:  # torch is imported where it is used: decode workers never need it
    import torch

__all__ = [
    "PipelineStats",
    "TextEncoderActor",
    "build_dataset",
    "collate",
    "create_stats",
    "iter_training_batches",
    "model_columns",
    "read_stats",
]


# --------------------------------------------------------------------------- counting


class PipelineStats:
    """Counts of kept (``ok``) and skipped samples by reason; run it as a Ray actor.

    It also carries the epoch the training side is about to read, with the samples of it
    already taken (a resumed run), from the train workers to the read planning
    (:class:`~imagen_ray.data.epochs.EpochShardsDatasource`): the one actor both sides
    already hold.
    """

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._epoch_start: tuple[int, int] | None = None
        self._passed_over: dict[int, int] = {}  # epoch -> samples a resume passed over

    def add(self, counts: dict[str, int]) -> None:
        """Add per-reason counts (from one batch)."""
        self._counts.update(counts)

    def get(self) -> dict[str, int]:
        """All counts so far, e.g. ``{"ok": 118, "decode_error": 1, "truncated_tar": 1}``;
        ``resume_skipped``: samples resumed epochs passed over unread."""
        counts = Counter(self._counts)
        if self._passed_over:
            counts[RESUME_SKIPPED] += sum(self._passed_over.values())
        return dict(sorted(counts.items()))

    def start_epoch(self, epoch: int, samples: int) -> None:
        """The next execution reads epoch ``epoch``, of which the run (all workers) has
        taken ``samples`` already (0 unless resuming)."""
        self._epoch_start = (int(epoch), int(samples))

    def epoch_start(self) -> tuple[int, int] | None:
        """``(epoch, samples taken)`` last announced, or None."""
        return self._epoch_start

    def passed_over(self, epoch: int, samples: int) -> None:
        """A resumed ``epoch`` starts ``samples`` in (idempotent: Ray plans the reads of one
        execution more than once)."""
        self._passed_over[int(epoch)] = int(samples)


def create_stats() -> Any:
    """Start a :class:`PipelineStats` actor (0 CPUs); return its handle once it is running.

    Waiting for it matters: calls sent while the actor is still starting sit in the
    caller's queue, and when Ray Data cancels a map task (the consumer stopped early) it
    cancels those queued calls with it.
    """
    handle: Any = ray.remote(num_cpus=0)(PipelineStats).remote()
    ray.get(handle.get.remote())
    return handle


def read_stats(stats: Any, *, min_ok: int = 0, timeout_s: float = 5.0) -> dict[str, int]:
    """The counts of a :class:`PipelineStats` actor, waiting until ``ok >= min_ok``.

    Map tasks send counts fire-and-forget, so counts for the rows just consumed can
    arrive a moment after the rows; pass the number of rows seen to wait for them.

    Args:
        stats: the actor handle from :func:`build_dataset`.
        min_ok: wait (up to ``timeout_s``) until at least this many samples are counted ok.
        timeout_s: give up waiting and return what is there.

    Returns:
        ``{reason: count}`` including ``ok``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        counts: dict[str, int] = ray.get(stats.get.remote())
        if counts.get(OK, 0) >= min_ok or time.monotonic() >= deadline:
            return counts
        time.sleep(0.05)


# --------------------------------------------------------------------------- text encoder


class TextEncoderActor:
    """Callable class for ``map_batches``: captions -> token embeddings, on an actor pool.

    The frozen encoder loads once per actor. Output ``emb`` is float16 (B, L, D), zero on
    padding, and ``mask`` bool (B, L); the ``caption`` column is dropped (strings cannot
    become tensors) unless ``keep_caption``.

    Captions repeat (templated synthetic captions; alt-text such as "image" or a product
    name in web data), so each actor keeps the embeddings of recently seen distinct
    captions, least recently used evicted first, up to ``cache_bytes`` (bytes, not entries:
    a T5-XXL row at 128 tokens is 1 MiB, so 4096 entries would be 4 GiB), and encodes only
    the ones it has not seen; a batch's duplicates are encoded once. Every caption is padded
    to ``max_length`` on its own, so a cached row is the row a fresh encode would give.
    (``functools.lru_cache`` caches one call's arguments; this needs per-item hits inside a
    batched call, hence the small OrderedDict.)

    Args:
        text_cfg: ``TextEncoderConfig.model_dump()``.
        device: ``auto`` (CUDA when the actor has a GPU, else CPU), ``cpu`` or ``cuda``.
        keep_caption: keep the caption column (previews, ``encode_shards``).
        cache_bytes: most bytes of cached embeddings per actor (``data.caption_cache_mb``;
            0 turns the cache off); a row costs ``max_length * (dim * 2 + 1)`` bytes (emb
            fp16 + mask), 48 KiB for MiniLM at 64 tokens.
    """

    def __init__(
        self,
        text_cfg: dict[str, Any],
        device: str = "auto",
        keep_caption: bool = False,
        cache_bytes: int = 256 * 2**20,
    ) -> None:
        import torch

        from imagen_ray.text.encoder import FrozenTextEncoder

        cfg = TextEncoderConfig.model_validate(text_cfg)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.encoder = FrozenTextEncoder(cfg, device=device)
        self.length = cfg.max_length
        self.keep_caption = keep_caption
        self.cache_bytes = cache_bytes
        self.cache: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.cached_bytes = 0  # emb + mask bytes held in `cache`
        self.encoded = 0  # captions actually run through the encoder (hits are not)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray] | pa.Table:
        captions = [str(c) for c in batch["caption"]]
        out = {k: v for k, v in batch.items() if k != "caption" or self.keep_caption}
        if not captions:
            out["emb"] = np.zeros((0, self.length, self.encoder.dim), np.float16)
            out["mask"] = np.zeros((0, self.length), np.bool_)
            return batch_or_empty_block(out)
        rows = self._lookup(captions)
        out["emb"] = np.stack([r[0] for r in rows])  # (B, L, D)
        out["mask"] = np.stack([r[1] for r in rows])  # (B, L)
        return out

    def encode_captions(self, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Captions -> emb (B, L, D) float16, mask (B, L) bool, through the cache (called
        as an actor method by ``imagen-ray data encode``'s shard tasks)."""
        if not captions:
            return np.zeros((0, self.length, self.encoder.dim), np.float16), np.zeros(
                (0, self.length), np.bool_
            )
        rows = self._lookup(list(captions))
        return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])

    def _lookup(self, captions: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(emb, mask) per caption: cached ones reused, the distinct rest encoded at once."""
        unique = list(dict.fromkeys(captions))  # first-seen order
        found = {c: self.cache[c] for c in unique if c in self.cache}
        missing = [c for c in unique if c not in found]
        if missing:
            enc = self.encoder.encode(missing)
            emb, mask = enc.emb.half().cpu().numpy(), enc.mask.cpu().numpy()
            self.encoded += len(missing)
            for i, c in enumerate(missing):
                found[c] = (emb[i].copy(), mask[i].copy())  # not views of the batch
        if self.cache_bytes > 0:
            for c in unique:
                if c not in self.cache:
                    self.cached_bytes += _row_bytes(found[c])
                self.cache[c] = found[c]
                self.cache.move_to_end(c)
            while self.cached_bytes > self.cache_bytes:
                _, evicted = self.cache.popitem(last=False)
                self.cached_bytes -= _row_bytes(evicted)
        return [found[c] for c in captions]


def _row_bytes(row: tuple[np.ndarray, np.ndarray]) -> int:
    """Bytes of one cached (emb, mask) pair."""
    return int(row[0].nbytes + row[1].nbytes)


# --------------------------------------------------------------------------- the chain


def model_columns(stage: StageConfig) -> list[str]:
    """Columns the training loop receives: image, lowres (SR stages), emb, mask."""
    return ["image", *(["lowres"] if stage.is_sr else []), "emb", "mask"]


def build_dataset(
    run_cfg: RunConfig, *, stats: Any = None, keep: Sequence[str] = (), text: bool = True
) -> tuple[ray.data.Dataset, Any]:
    """The lazy, streaming training dataset of one cascade stage.

    read -> decode/filter/resize (tasks, ``data.map_num_cpus``) -> text encoder actor pool
    (skipped when embeddings are precomputed) -> model columns. Reads, maps and the encoder
    take fractional CPUs so they schedule beside train workers on small machines.

    Args:
        run_cfg: the run config (``data``, ``stage``, ``text`` are used).
        stats: a :class:`PipelineStats` handle to count into (default: a new one).
        keep: extra columns to keep (``__key__``, ``caption``) for previews and tests;
            strings cannot go through ``iter_torch_batches``, so leave empty for training.
        text: False leaves out text embeddings entirely (no encoder, no ``text.npz``):
            rows carry ``caption`` instead of ``emb``/``mask`` (benchmarks, inspection).

    Returns:
        (dataset, stats handle). Dataset columns: ``image`` (S, S, 3) uint8, ``lowres``
        (s, s, 3) uint8 for SR stages, ``emb`` (L, D) float16, ``mask`` (L,) bool, plus
        ``keep``. Nothing is executed until the dataset is iterated.
    """
    data, stage = run_cfg.data, run_cfg.stage
    unknown = set(keep) - {KEY_COLUMN, "caption"}
    if unknown:
        raise ValueError(f"keep={sorted(unknown)}: only '__key__' and 'caption' can be kept")
    paths = expand_shards(data.shards)
    encoding = resolve_encoding(run_cfg, paths) if text else None
    _check_caption_key(data, encoding)
    if stats is None:
        stats = create_stats()
    emb_shape = (run_cfg.text.max_length, int(encoding["dim"])) if encoding else None
    # Each step emits only what the next needs: no separate select_columns step (which
    # would be one more task per block, asking for a whole CPU by default).
    wanted = [*model_columns(stage), *keep] if text else [*model_columns(stage)[:-2], *keep]
    # Each concurrent task is a worker process (importing this module alone takes ~2 s of
    # CPU): with 0.25 CPU per task and nothing else capping them, a 2-core machine ran 4x
    # the CPUs' worth of processes and spent most of an epoch starting them
    # (`bench/data.py --num-cpus 8` on 2 cores: 2 tasks per step read 3.8x the samples/s).
    ds = read_epoch_shards(
        paths,
        seed=data.seed,
        shuffle_files=data.shuffle_shards,
        num_cpus=data.read_num_cpus,
        max_tasks=data.read_tasks,
        max_member_bytes=data.max_member_bytes,
        position=stats,
    )
    ds = ds.map_batches(
        decode_filter_resize,  # type: ignore[arg-type]  # takes pyarrow batches only
        batch_format="pyarrow",
        batch_size=None,
        num_cpus=data.map_num_cpus,
        compute=ray.data.TaskPoolStrategy(size=data.map_tasks),
        fn_kwargs={
            "data_cfg": data.model_dump(),
            "stage_cfg": stage.model_dump(),
            "precomputed": encoding is not None,
            "emb_shape": emb_shape,
            "stats": stats,
            "columns": wanted if encoding is not None else [*wanted, "caption"],
        },
    )
    if text and encoding is None:
        ds = _encode_text(ds, run_cfg, keep_caption="caption" in keep)
    if data.preserve_order:  # the launcher passes it on to Ray Train's split as well
        ds.context.execution_options.preserve_order = True
    return ds, stats


def _check_caption_key(data: DataConfig, encoding: dict[str, Any] | None) -> None:
    """Precomputed embeddings are of one caption key (``encoding.json``): refuse another."""
    encoded_key = encoding.get("caption_key", CAPTION_ENTRY) if encoding else None
    if encoded_key is not None and data.caption_key != encoded_key:
        raise ValueError(
            f"data.caption_key={data.caption_key!r} but the shards hold embeddings of their "
            f"{encoded_key!r} captions (imagen-ray data encode); encode them again with this "
            f"caption_key, set data.precomputed=false to encode on the fly, or use "
            f"caption_key {encoded_key}"
        )


def _encode_text(
    ds: ray.data.Dataset, run_cfg: RunConfig, *, keep_caption: bool
) -> ray.data.Dataset:
    """The text-encoder actor pool step: ``caption`` -> ``emb``, ``mask``."""
    data = run_cfg.data
    return ds.map_batches(
        TextEncoderActor,
        fn_constructor_kwargs={
            "text_cfg": run_cfg.text.model_dump(),
            "keep_caption": keep_caption,
            "cache_bytes": int(data.caption_cache_mb * 2**20),
        },
        batch_format="numpy",
        batch_size=data.encoder_batch_size,
        compute=ray.data.ActorPoolStrategy(size=data.encoder_concurrency),
        num_cpus=data.encoder_num_cpus,
        num_gpus=data.encoder_num_gpus,
    )


# --------------------------------------------------------------------------- training side


def collate(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """``iter_torch_batches`` collate: uint8 images -> float in [-1, 1], channels first.

    Embeddings are cast to float32 here (the object store carries float16); a bf16 trainer
    casts again. Other columns (``__key__``, ``caption``) are left out.

    Args:
        batch: ``image`` (B, H, W, 3) uint8, optional ``lowres`` (B, h, w, 3) uint8,
            ``emb`` (B, L, D) float16, ``mask`` (B, L) bool.

    Returns:
        ``image`` (B, 3, H, W) float32, ``lowres`` (B, 3, h, w) float32, ``emb``
        (B, L, D) float32, ``mask`` (B, L) bool.
    """
    import torch

    out: dict[str, torch.Tensor] = {}
    for name in ("image", "lowres"):
        if name in batch:
            # astype copies into a writable float array (Ray's batches are read-only views).
            x = torch.from_numpy(np.asarray(batch[name]).astype(np.float32))  # (B, H, W, 3)
            out[name] = x.permute(0, 3, 1, 2).div_(127.5).sub_(1.0).contiguous()
    if "emb" in batch:
        out["emb"] = torch.from_numpy(np.asarray(batch["emb"]).astype(np.float32))  # (B, L, D)
    if "mask" in batch:
        out["mask"] = torch.from_numpy(np.asarray(batch["mask"]).astype(np.bool_))  # (B, L)
    return out


def iter_training_batches(
    shard_or_dataset: Any, data_cfg: DataConfig, *, epoch: int = 0, rank: int = 0
) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch of batches for a training loop from a Ray Train dataset shard (or a Dataset).

    Call it once per epoch with the epoch number: one pass over a shard executes the
    dataset once, and Ray numbers those executions as this loop numbers epochs (the
    shard order and the crops of epoch ``e`` are seeded with it, see
    :mod:`imagen_ray.data.epochs`).

    Args:
        shard_or_dataset: ``ray.train.get_dataset_shard("train")`` (a DataIterator) or a
            ``ray.data.Dataset``.
        data_cfg: batch size, prefetch, local shuffle buffer (0 = off) and seed.
        epoch: the pass over the data, from 0; with ``rank`` it seeds the shuffle buffer
            (``epoch_seed(data.seed, epoch, rank)``).
        rank: the train worker's rank (workers shuffle their shards differently).

    Returns:
        An iterator of :func:`collate` batches of exactly ``batch_size`` rows (the last
        short batch is dropped), on the worker's device under Ray Train.
    """
    shuffle = data_cfg.shuffle_buffer or None  # >= batch_size: checked by DataConfig
    batches: Iterator[dict[str, torch.Tensor]] = iter(
        shard_or_dataset.iter_torch_batches(
            batch_size=data_cfg.batch_size,
            collate_fn=collate,
            prefetch_batches=data_cfg.prefetch_batches,
            local_shuffle_buffer_size=shuffle,
            local_shuffle_seed=epoch_seed(data_cfg.seed, epoch, rank) if shuffle else None,
            drop_last=True,
        )
    )
    return batches
