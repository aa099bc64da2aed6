"""Offline batch generation: a saved cascade on a Ray Data actor pool over a prompt file.

``imagen-ray generate --cascade DIR --prompts prompts.txt --out out/`` expands every prompt
into ``images_per_prompt`` images, each with a seed derived from (base seed, prompt index,
image index), and sends the work through ``map_batches`` to a pool of actors that each hold
the cascade. Layout of an output directory::

    out/
      images/000003-001.png    prompt 3, image 1 (written to a temp file, then renamed)
      images/000003-001.json   its record, written after the image: the unit of "done"
      manifest.jsonl           every record in prompt/image order, rebuilt at the end

A crash loses only the batches in flight: every finished image has its record beside it.
Running the same command again skips the images whose record and file exist and finishes
the rest; the manifest is then rebuilt from the records. A record made with other settings
(prompt, seed, sampling, stages, negative prompt) is an error, not a silent mix.

* :mod:`~imagen_ray.batch.config`: ``GenerateConfig`` and its loading (YAML < flags < --set);
* :mod:`~imagen_ray.batch.plan`: image seeds, resolved sampling, one record per image;
* :mod:`~imagen_ray.batch.resume`: which records are done, the manifest;
* :mod:`~imagen_ray.batch.worker`: the actor that holds the cascade, the cluster check;
* :mod:`~imagen_ray.batch.run`: ``generate``, the whole run.
"""
