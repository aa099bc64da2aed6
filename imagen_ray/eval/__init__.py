"""Evaluation: the synthetic-set alignment probe, SR fidelity, prompt suites, FID/CLIP.

* :mod:`~imagen_ray.eval.probe` reads colour, shape, position and count from an image;
* :mod:`~imagen_ray.eval.alignment` generates held-out/seen prompts and writes the report
  (``evaluate_probe`` also scores images that came from elsewhere, e.g. the HTTP API);
* :mod:`~imagen_ray.eval.sr_fidelity` checks that SR stages follow their low-res input;
* :mod:`~imagen_ray.eval.suite` renders DrawBench-style CSV suites into an HTML gallery;
* :mod:`~imagen_ray.eval.fid` and :mod:`~imagen_ray.eval.clip` score image folders with
  local weights; :mod:`~imagen_ray.eval.tiny` builds stand-ins for tests;
* ``imagen-ray eval`` is :mod:`imagen_ray.cli.eval` (probe and compositional in
  :mod:`imagen_ray.cli.eval_alignment`).
"""
