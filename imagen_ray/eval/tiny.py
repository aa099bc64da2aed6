"""Small stand-in weights for FID and CLIP score: a tiny random CLIP and a tiny feature net.

They go through exactly the loading code of the real weights (``CLIPModel.from_pretrained``
on a directory; ``torch.jit.load`` of a TorchScript file), so tests and offline smoke runs
exercise the real paths without any download. Their numbers mean nothing about image quality.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-level BPE alphabet: every byte mapped to a printable character."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def build_tiny_clip(out_dir: str | Path, *, image_size: int = 32, seed: int = 0) -> Path:
    """Save a random ``CLIPModel`` with a character-level CLIP tokenizer and image processor.

    Args:
        out_dir: directory to write (created).
        image_size: the vision tower's input side.
        seed: weight initialisation seed.

    Returns:
        The directory, loadable by ``imagen-ray eval clip --clip DIR``.
    """
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    bos, eos = len(vocab), len(vocab) + 1
    vocab |= {"<|startoftext|>": bos, "<|endoftext|>": eos}
    tmp = out / "_bpe"
    tmp.mkdir(exist_ok=True)
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    (tmp / "merges.txt").write_text("#version: 0.2\n")  # no merges: one token per character
    tokenizer = CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"))
    size = {"shortest_edge": image_size}
    crop = {"height": image_size, "width": image_size}
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil(size=size, crop_size=crop), tokenizer=tokenizer
    )
    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
    cfg = CLIPConfig(
        text_config={
            **tiny,
            "num_attention_heads": 2,
            "vocab_size": len(vocab),
            "max_position_embeddings": 77,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": eos,
        },
        vision_config={**tiny, "num_attention_heads": 2, "image_size": image_size, "patch_size": 8},
        projection_dim=16,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(cfg).eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    return out


class TinyFeatureNet(nn.Module):
    """Two strided convolutions and a global average: ``forward(img, return_features)``
    with the calling convention of the TorchScript Inception (images in [0, 255])."""

    def __init__(self, features: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, kernel_size=7, stride=4)
        self.conv2 = nn.Conv2d(8, features, kernel_size=5, stride=4)

    def forward(self, img: Tensor, return_features: bool = False) -> Tensor:
        x = torch.relu(self.conv1(img / 127.5 - 1))
        x = torch.tanh(self.conv2(x))
        return x.mean(dim=(2, 3))  # (B, features)


def build_standin_inception(path: str | Path, *, features: int = 16, seed: int = 0) -> Path:
    """Save a random :class:`TinyFeatureNet` as TorchScript, loadable by ``--inception PATH``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = TinyFeatureNet(features).eval()
    with warnings.catch_warnings():  # the format of the real file: see eval/fid.py
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(net), str(p))
    return p
