"""Convert a transformers DPT checkpoint to dpt_mlx: python convert.py --hf-path ID_OR_DIR --mlx-path DIR"""

import sys

from dpt_mlx.convert import main

if __name__ == "__main__":
    sys.exit(main())
