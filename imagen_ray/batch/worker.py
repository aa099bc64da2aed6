"""The actor of the batch pool: holds a cascade, turns planned records into images on disk."""

from __future__ import annotations

import json
import time
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from imagen_ray.batch.config import GenerateConfig
from imagen_ray.batch.resume import sidecar
from imagen_ray.cluster import Capacity, Demand, check_demands
from imagen_ray.fs import NoSpaceError

# How long a replica retries writing an image or its record to remote storage (an outage,
# throttling) before it gives the batch up; the same command then makes what is missing.
WRITE_RETRY_S = 300.0


class CascadeWorker:
    """One replica of the actor pool: loads the cascade once, then turns batches of
    planned records into images and records on disk."""

    def __init__(
        self, cascade: list[str], out: str, until: str | None, use_gpu: bool, dtype: str = "auto"
    ) -> None:
        import torch

        from imagen_ray.cascade import Cascade

        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.cascade = Cascade.load(cascade, device=device, dtype=dtype)
        _ = self.cascade.encoder  # load the text encoder before the first batch
        self.out = out  # a local directory or a URI
        self.until = until
        self.unavailable = False  # a write failed through every retry (storage outage)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from imagen_ray import storage
        from imagen_ray.images import encode_image, image_format

        records: list[dict[str, Any]] = [json.loads(r) for r in batch["record"]]
        first = records[0]
        t0 = time.perf_counter()
        out = self.cascade.generate(
            [r["prompt"] for r in records],
            negative_prompt=first["negative_prompt"],
            seed=[r["seed"] for r in records],
            sampling=first["sampling"],
            until=self.until,
            **edit_arguments(records),
        )
        seconds = (time.perf_counter() - t0) / len(records)
        images = out.uint8()  # (B, H, W, 3) uint8
        full = [""] * len(records)  # per record: why it is not written (JSON), or ""
        for i, (r, img, trunc) in enumerate(zip(records, images, out.truncated, strict=True)):
            fmt = image_format(PurePosixPath(r["file"]).suffix)  # the plan's suffix
            height, width = img.shape[:2]
            r.update(width=width, height=height, truncated=trunc, seconds=seconds)
            image = storage.join(self.out, r["file"])
            # once the store has failed a write through every retry, this replica's later
            # batches try once each: the run ends soon after, not a retry window per batch
            retry_s = 0.0 if self.unavailable else WRITE_RETRY_S
            try:
                storage.write_bytes_retrying(image, encode_image(img, fmt), retry_s=retry_s)
                # after the image: done
                storage.write_bytes_retrying(
                    sidecar(self.out, r),
                    (json.dumps(r, ensure_ascii=False) + "\n").encode(),
                    retry_s=retry_s,
                )
            # returned, not raised: Ray Data would lose the exception's fields
            except NoSpaceError as e:
                full[i:] = [json.dumps(["no_space", e.path, e.needed, e.free])] * (len(records) - i)
                break
            except storage.StorageUnavailable as e:
                self.unavailable = True
                full[i:] = [json.dumps(["unavailable", e.path, e.error])] * (len(records) - i)
                break
        return {
            "file": np.array([r["file"] for r in records], dtype=object),
            "not_written": np.array(full, dtype=object),
        }


def _read_image(path: str) -> Any:
    """An edit's image or mask (local or a URI), decoded."""
    import io

    from PIL import Image

    from imagen_ray import storage

    with Image.open(io.BytesIO(storage.read_bytes(path))) as img:
        img.load()
        return img.copy()


def edit_arguments(records: list[dict[str, Any]]) -> dict[str, Any]:
    """:meth:`Cascade.generate`'s edit arguments for a batch of records (none when no record
    edits: the batch is plain text-to-image)."""
    edits = [r.get("edit") for r in records]
    if not any(edits):
        return {}
    # a prompt's images share its picture: read each file once per batch
    paths = {p for e in edits if e is not None for p in (e["image"], e.get("mask")) if p}
    read = {p: _read_image(p) for p in paths}
    return {
        "image": [None if e is None else read[e["image"]] for e in edits],
        "mask": [None if e is None or not e.get("mask") else read[e["mask"]] for e in edits],
        "strength": [1.0 if e is None else float(e["strength"]) for e in edits],
    }


def check_cluster(cfg: GenerateConfig, capacity: Capacity) -> str | None:
    """Fail before any actor starts when the cluster can never host the pool.

    Returns:
        None, or a line saying the pool starts and waits for the autoscaler.

    Raises:
        ClusterTooSmall: a replica no node can hold, or more replicas than the cluster can
            ever run at once.
    """
    replica: dict[str, float] = {"CPU": cfg.num_cpus, "GPU": cfg.num_gpus}
    fix = (
        "set --num-gpus 0 or add a node type with GPUs"
        if cfg.num_gpus > 0
        else "lower --replicas or --num-cpus (or give a local cluster more: --ray-num-cpus N)"
    )
    demand = Demand(
        f"--replicas {cfg.replicas} x (--num-cpus {cfg.num_cpus:g}, --num-gpus {cfg.num_gpus:g})",
        replica,
        cfg.replicas,
        fix=fix,
    )
    return check_demands(capacity, [demand])
