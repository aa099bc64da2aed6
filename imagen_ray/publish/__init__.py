"""The edge where a cascade meets the outside: loading one from object storage
(``s3://``, ``gs://``) or the Hugging Face Hub, sharing one on the Hub, assembling exported
stage directories into a cascade directory, and its generated model card.

:mod:`imagen_ray.cascade` saves and loads local directories only; remote URIs and repo ids
are resolved here, to local directories, and loaded with :meth:`Cascade.load`.

Modules: ``remote`` (:func:`load_cascade`: local directories or URIs), ``hub``
(:func:`from_pretrained`, :func:`push_to_hub`), ``assemble`` (``imagen-ray cascade
assemble``) and ``card`` (the model card ``README.md``).
"""

from imagen_ray.publish.hub import from_pretrained, push_to_hub
from imagen_ray.publish.remote import load_cascade

__all__ = ["from_pretrained", "load_cascade", "push_to_hub"]
