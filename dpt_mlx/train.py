"""``python -m dpt_mlx.train``: fine-tune a checkpoint (dpt_mlx.training)."""

import sys

from .training.loop import main

if __name__ == "__main__":
    sys.exit(main())
