"""Depth from one photograph: a float map at the photo's size and an 8-bit picture of it.

    python examples/depth.py examples/images/coffee.jpg
    python examples/depth.py photo.jpg --model Intel/dpt-hybrid-midas --output depth.png

DPT predicts relative inverse depth: larger values are closer, and there are no units.
"""

import argparse

import numpy as np

from dpt_mlx import pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", help="path of a photograph")
    parser.add_argument("--model", default="Intel/dpt-large", help="Hub repo id or local checkpoint directory")
    parser.add_argument("--output", default="depth.png", help="where to save the 8-bit depth picture")
    args = parser.parse_args()

    estimator = pipeline("depth-estimation", model=args.model)
    result = estimator(args.image)

    depth = result["predicted_depth"]  # float32 NumPy array, (height, width) of the photo
    print(f"depth map {depth.shape}, from {depth.min():.4g} (farthest) to {depth.max():.4g} (closest)")
    result["depth"].save(args.output)  # min-max normalised to 0..255, as transformers' pipeline does
    np.save(args.output.rsplit(".", 1)[0] + ".npy", depth)
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
