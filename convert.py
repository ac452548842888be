"""Convert a transformers DPT / Depth Anything checkpoint into a dpt_mlx checkpoint (see --help)."""

import sys

from dpt_mlx.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
