"""``python -m imagen_ray.train --config ...``: what ``ray job submit`` runs."""

import sys

from imagen_ray.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
