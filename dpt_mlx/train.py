"""``python -m dpt_mlx.train``: fine-tune a checkpoint (dpt_mlx.cli.train)."""

import sys

from .cli.train import main

if __name__ == "__main__":
    sys.exit(main())
