"""Scenes of the synthetic set: held-out choices stay out, captions name both objects in both
orders, the spec refuses bad settings, and sets without scenes are as before."""

from __future__ import annotations

import argparse
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from imagen_ray.cli.data import add_data_commands as register
from imagen_ray.data.scene_spec import (
    DEFAULT_HELDOUT_TEMPLATE,
    SceneSpec,
    object_phrase,
    parse_object_pair,
    scene_caption,
    swapped,
)
from imagen_ray.data.scenes import (
    heldout_scene_prompts,
    sample_scene,
    scene_kind,
    seen_scene_prompts,
)
from imagen_ray.data.synthetic import heldout_json, render_sample, write_synthetic
from imagen_ray.data.synthetic_spec import SyntheticSpec
from imagen_ray.data.synthetic_vocab import RELATIONS
from imagen_ray.data.writer import read_summary
from imagen_ray.eval.alignment import load_spec

SCENES = SceneSpec(probs=(0.2, 0.6, 0.2))


def pair_of(objects: list[dict]) -> frozenset:
    return frozenset((o["colour"], o["shape"]) for o in objects)


def shard_samples(out: Path) -> list[tuple[str, dict]]:
    """(caption, attributes) of every sample in the shards of ``out``."""
    samples = []
    for tar_path in sorted(out.glob("shard-*.tar")):
        with tarfile.open(tar_path) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
        for name, content in files.items():
            if name.endswith(".json"):
                key = name[: -len(".json")]
                samples.append((files[f"{key}.txt"].decode(), json.loads(content)))
    return samples


def test_scene_samples_are_deterministic_and_leave_single_objects_as_they_were() -> None:
    spec = SyntheticSpec(size=32, seed=4, scenes=SCENES)
    for i in range(12):
        a, b = render_sample(spec, i), render_sample(spec.model_copy(update={"num_samples": 7}), i)
        assert np.array_equal(np.asarray(a[0]), np.asarray(b[0])) and a[1:] == b[1:]
    kinds = [scene_kind(spec, i) for i in range(200)]
    assert {1, 2, 3} <= set(kinds) and 0.45 < kinds.count(2) / 200 < 0.75
    plain = SyntheticSpec(size=32, seed=4)
    singles = [i for i, k in enumerate(kinds[:40]) if k == 1]
    assert singles
    for i in singles:  # a single-object sample is the one a set without scenes has
        mixed, alone = render_sample(spec, i), render_sample(plain, i)
        assert np.array_equal(np.asarray(mixed[0]), np.asarray(alone[0]))
        assert mixed[1:] == alone[1:]
    # scene settings that draw no scene change nothing
    other = SyntheticSpec(size=32, seed=4, scenes=SceneSpec(relations=("above",)))
    assert [render_sample(other, i)[1] for i in range(20)] == [
        render_sample(plain, i)[1] for i in range(20)
    ]


def test_heldout_choices_never_written_and_counterparts_drawn(tmp_path: Path) -> None:
    spec = SyntheticSpec(num_samples=300, size=16, seed=2, scenes=SCENES, samples_per_shard=150)
    write_synthetic(spec, tmp_path, progress=False)
    samples = shard_samples(tmp_path)
    assert len(samples) == 300
    scenes = [(cap, meta) for cap, meta in samples if "objects" in meta]
    assert len(scenes) > 200
    held = {frozenset(p) for p in (*SCENES.heldout_bindings, *SCENES.heldout_object_pairs)}
    heldout_phrasings = {it["prompt"] for it in heldout_scene_prompts(spec)}
    for caption, meta in scenes:
        objects = meta["objects"]
        assert len({o["colour"] for o in objects}) == len(objects)  # distinct colours
        for a in objects:
            for b in objects:
                assert frozenset([(a["colour"], a["shape"]), (b["colour"], b["shape"])]) not in held
        assert caption not in heldout_phrasings
        if len(objects) == 2:
            template = SCENES.relation_templates[meta["template"]]
            assert template != DEFAULT_HELDOUT_TEMPLATE
    # no caption is the held-out phrasing of its scene, read in either order
    for caption, meta in scenes:
        if len(meta["objects"]) == 2:
            a, b = ((o["colour"], o["shape"]) for o in meta["objects"])
            inverse = RELATIONS[meta["relation"]].inverse
            assert caption != scene_caption((a, b), meta["relation"], DEFAULT_HELDOUT_TEMPLATE)
            assert caption != scene_caption((b, a), inverse, DEFAULT_HELDOUT_TEMPLATE)
    # over more draws (attributes only) the counterparts occur, the bindings never
    drawn = {pair_of(sample_scene(spec, i, 2)["objects"]) for i in range(4000)}
    for binding in SCENES.heldout_bindings:
        assert frozenset(binding) not in drawn and frozenset(swapped(binding)) in drawn


def test_captions_name_both_objects_in_both_orders() -> None:
    spec = SyntheticSpec(size=32, seed=1, scenes=SceneSpec(probs=(0.0, 1.0, 0.0)))
    left_first = right_first = 0
    for i in range(150):
        _, caption, meta = render_sample(spec, i)
        a, b = ((o["colour"], o["shape"]) for o in meta["objects"])
        pa, pb = object_phrase(a), object_phrase(b)
        assert pa in caption and pb in caption, caption
        (ax, ay), (bx, by) = meta["objects"][0]["center"], meta["objects"][1]["center"]
        rel = RELATIONS[meta["relation"]]
        assert (ax < bx if rel.axis == 0 else ay < by) == rel.first_lower, (caption, meta)
        if rel.axis == 0:
            first_is_left = (caption.index(pa) < caption.index(pb)) == (ax < bx)
            left_first += first_is_left
            right_first += not first_is_left
    assert left_first > 10 and right_first > 10
    assert scene_caption((("red", "circle"), ("blue", "square")), "left of", "{b} {inv} {a}") == (
        "a blue square to the right of a red circle"
    )
    three = scene_caption(
        (("orange", "cross"), ("white", "cross"), ("red", "circle")),
        "above",
        SCENES.row_templates[1],
    )
    assert three == "an orange cross above a white cross, the white cross above a red circle"


def test_heldout_json_summary_and_load_spec_carry_the_scene_choices(tmp_path: Path) -> None:
    scenes = SceneSpec(
        probs=(0.5, 0.5, 0.0),
        relations=("left of", "above"),
        heldout_bindings=((("green", "square"), ("white", "triangle")),),
        heldout_object_pairs=(),
    )
    spec = SyntheticSpec(num_samples=20, size=16, scenes=scenes)
    write_synthetic(spec, tmp_path, progress=False)
    held = json.loads((tmp_path / "heldout.json").read_text())
    assert held["scenes"]["heldout_bindings"] == [[["green", "square"], ["white", "triangle"]]]
    assert held["scenes"]["heldout_relation_template"] == DEFAULT_HELDOUT_TEMPLATE
    prompts = held["scenes"]["prompts"]
    assert "a green square to the left of a white triangle" in prompts
    assert "a white triangle above a green square" in prompts  # both orders
    assert "a white square and a green triangle, the triangle at the bottom" in prompts
    assert len(prompts) == 2 * 2 + 2  # one binding x 2 orders x 2 relations + phrasing x 2
    assert SyntheticSpec.from_dict(read_summary(tmp_path)["synthetic"]) == spec
    assert load_spec(tmp_path).scenes == scenes
    # a set without scenes writes heldout.json as before (no scenes key)
    assert "scenes" not in heldout_json(SyntheticSpec())
    seen = seen_scene_prompts(spec, 10, seed=3)
    assert len(seen) == 10 and seen == seen_scene_prompts(spec, 10, seed=3)
    assert all(
        frozenset((o["colour"], o["shape"]) for o in it["objects"])
        != frozenset(scenes.heldout_bindings[0])
        for it in seen
    )


def test_scene_spec_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="unknown relation 'beside'; choose one of left of"):
        SceneSpec(relations=("beside",))
    with pytest.raises(ValueError, match="unknown colour 'pink'"):
        SceneSpec(heldout_bindings=((("pink", "circle"), ("red", "square")),))
    with pytest.raises(ValueError, match="one shape twice"):
        SceneSpec(heldout_bindings=((("blue", "circle"), ("red", "circle")),))
    with pytest.raises(ValueError, match="one colour twice"):
        SceneSpec(heldout_object_pairs=((("red", "circle"), ("red", "square")),))
    with pytest.raises(ValueError, match="summing to 1"):
        SceneSpec(probs=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match=r"unknown placeholder \{where\}"):
        SceneSpec(relation_templates=("{a} {where} {b}",), heldout_relation_template=None)
    with pytest.raises(ValueError, match=r"must name \{a\}, \{b\}, \{c\}"):
        SceneSpec(row_templates=("{a} and {b}",))
    with pytest.raises(ValueError, match="is not one of relation_templates"):
        SceneSpec(heldout_relation_template="{a} next to {b}")
    # "{a} {rel} {b}" says what "{b} {inv} {a}" says about the mirrored scene
    with pytest.raises(ValueError, match="which another template also says"):
        SceneSpec(heldout_relation_template="{b} {inv} {a}")
    with pytest.raises(ValueError, match=r"scenes\.prob"):
        SyntheticSpec.from_dict({"scenes": {"probs": [1, 0, 0], "prob": 1}})
    with pytest.raises(ValueError, match=r"counterpart .* must be seen in training"):
        SyntheticSpec(heldout=(("red", "circle"),), scenes=SceneSpec(probs=(0.5, 0.5, 0.0)))
    # the same held-out pairs are fine while the set draws no scenes
    assert SyntheticSpec(heldout=(("red", "circle"),)).scenes.enabled is False
    assert parse_object_pair("red:circle+blue:square") == (("red", "circle"), ("blue", "square"))
    with pytest.raises(ValueError, match=r"COLOUR:SHAPE\+COLOUR:SHAPE"):
        parse_object_pair("red:circle")


def test_cli_synthetic_scene_flags_and_file(tmp_path: Path) -> None:
    p = argparse.ArgumentParser()
    register(p.add_subparsers())
    (tmp_path / "scenes.yaml").write_text(
        "probs: [0.1, 0.9, 0.0]\nrelations: [above, below]\nheldout_relation_template: null\n"
    )
    out = tmp_path / "syn"
    argv = ["synthetic", "--out", str(out), "--num-samples", "40", "--size", "16", "--no-progress"]
    argv += ["--scenes", str(tmp_path / "scenes.yaml"), "--scene-probs", "0.2", "0.8", "0"]
    args = p.parse_args([*argv, "--heldout-binding", "white:cross+green:circle"])
    assert args.func(args) == 0
    scenes = read_summary(out)["synthetic"]["scenes"]
    assert scenes["probs"] == [0.2, 0.8, 0.0]  # the flag wins over the file
    assert scenes["relations"] == ["above", "below"] and scenes["heldout_relation_template"] is None
    assert scenes["heldout_bindings"] == [[["white", "cross"], ["green", "circle"]]]
    relations = {meta["relation"] for _, meta in shard_samples(out) if "objects" in meta}
    assert relations == {"above", "below"}
    bad = p.parse_args([*argv, "--heldout-object-pair", "red:circle+red:square"])
    with pytest.raises(ValueError, match="one colour twice"):
        bad.func(bad)
