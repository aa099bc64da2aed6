"""`python -m imagen_ray` is the `imagen-ray` command."""

import sys

from imagen_ray.cli import main

sys.exit(main())
