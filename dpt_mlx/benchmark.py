"""``python -m dpt_mlx.benchmark``: dpt_mlx against transformers, side by side (dpt_mlx.cli.benchmark)."""

import sys

from .cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
