"""``python -m dpt_mlx.batch``: depth or segmentation maps for a whole dataset on Ray (dpt_mlx.cli.batch)."""

import sys

from .cli.batch import main

if __name__ == "__main__":
    sys.exit(main())
