"""Semantic segmentation of one photograph (ADE20K classes with Intel/dpt-large-ade).

    python examples/segmentation.py examples/images/coffee.jpg
    python examples/segmentation.py room.jpg --output-dir masks/

Prints each class found and its share of the image, and saves one mask per class.
"""

import argparse
from pathlib import Path

import numpy as np

from dpt_mlx import pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", help="path of a photograph")
    parser.add_argument("--model", default="Intel/dpt-large-ade", help="Hub repo id or local checkpoint directory")
    parser.add_argument("--output-dir", default=None, help="save each class mask here as <label>.png")
    args = parser.parse_args()

    segmenter = pipeline("image-segmentation", model=args.model)
    segments = segmenter(args.image)  # one {"score": None, "label": str, "mask": PIL "L" image} per class

    for segment in sorted(segments, key=lambda s: -np.count_nonzero(np.asarray(s["mask"]))):
        mask = np.asarray(segment["mask"]) > 0  # 255 where the class is
        print(f"{mask.mean():6.1%}  {segment['label']}")
        if args.output_dir:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            segment["mask"].save(Path(args.output_dir) / f"{segment['label'].replace('/', '_')}.png")


if __name__ == "__main__":
    main()
