"""``imagen-ray demo`` (``make demo``): the whole product on one machine, on embedded defaults.

Synthetic shards -> precomputed MiniLM embeddings -> the base and SR stages trained at the
same time through Ray Data -> Ray Train + DeepSpeed ZeRO-2 (two workers each) -> exported
EMA weights -> Ray Serve -> images for held-out (colour, shape) prompts over HTTP -> the
alignment probe -> ``report.html`` + ``metrics.json`` + ``grid.png``.

* :mod:`~imagen_ray.demo.run`: the steps (``run_demo``) and the synthetic set they train on;
* :mod:`~imagen_ray.demo.report`: targets, scoring, grid.png and report.html (rendered from
  the ``report.html`` template shipped beside it);
* :mod:`~imagen_ray.demo.configs`: where the demo's configs are, through importlib.resources
  (``imagen_ray.configs``, the repository's ``configs/`` shipped as package data), so that
  a plain ``pip install .`` runs the demo; importable without torch;
* :mod:`~imagen_ray.demo.timer`: step banners and durations.

This package's ``__init__`` imports nothing, so that finding the configs stays light.
"""
