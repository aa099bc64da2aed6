"""bench/editing.py: its pictures read back as drawn, its masks cover the object, its cases
are held-out prompts with sources that differ from them as each task needs."""

from __future__ import annotations

from bench import editing
from imagen_ray.data.synthetic import heldout_prompts
from imagen_ray.demo.run import demo_spec
from imagen_ray.eval.probe import read_image


def test_pictures_read_back_and_masks_cover_the_object() -> None:
    for colour, shape, position in (("red", "circle", "left"), ("blue", "cross", "bottom")):
        pic = editing.picture(colour, shape, position)
        r = read_image(pic)
        assert (r.colour, r.shape, r.position, r.count) == (colour, shape, position, 1)
        mask = editing.object_mask(position)
        drawn = pic.max(-1) > 0
        assert drawn.any() and (mask[drawn] == 255).all()  # every object pixel repainted
        assert 0.1 < (mask == 255).mean() < 0.3  # and not much more
    assert editing.picture("red", "circle", "left", 32).shape == (32, 32, 3)


def test_cases_are_heldout_targets_with_differing_sources() -> None:
    held = {p["prompt"] for p in heldout_prompts(demo_spec())}
    cases = editing.cases(10)
    assert len(cases) == 10 and len({c["prompt"] for c in cases}) == 10
    for c in cases:
        assert c["prompt"] in held
        colour, shape = c["inpaint_from"]
        assert colour != c["colour"] and shape != c["shape"]
        assert c["recolour_from"] != c["colour"]
    assert editing.cases(10) == cases  # seeded
