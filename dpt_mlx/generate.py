"""``python -m dpt_mlx.generate``: depth or segmentation maps for images (dpt_mlx.cli.predict)."""

import sys

from .cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
