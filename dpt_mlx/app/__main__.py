"""``python -m dpt_mlx.app``: the local web app (dpt_mlx.cli.app)."""

import sys

from ..cli.app import main

if __name__ == "__main__":
    sys.exit(main())
