"""Ray Serve: a FastAPI ingress, a text-encoder deployment and one deployment per stage.

``ingress -> TextEncoderDeployment -> StageDeployment(base) -> StageDeployment(sr) ...``, each
with dynamic batching (``deployments.FreeBatcher``) and its own replicas and resources
(``serve:`` config section). Build the application with
:func:`imagen_ray.serve.app.build_app` (the import path used by ``serve run`` /
``serve deploy`` configs) or run ``imagen-ray serve``.

Nothing heavy is imported here: torch, transformers and Ray load inside the modules that
need them.
"""
