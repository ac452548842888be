"""``python -m dpt_mlx``: the same command line as ``python -m dpt_mlx.generate``."""

import sys

from .generate import main

if __name__ == "__main__":
    sys.exit(main())
