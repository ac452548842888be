"""Depth estimation step by step: image processor, model, post-processing, like the transformers docs.

    python examples/step_by_step.py examples/images/coffee.jpg
    python examples/step_by_step.py photo.jpg --model Intel/dpt-large --dtype float16

The same three steps work for segmentation checkpoints: the model returns ``logits`` and
``post_process_semantic_segmentation`` turns them into a class map (shown at the end).
"""

import argparse

import numpy as np
from PIL import Image

from dpt_mlx import DPTImageProcessor, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", help="path of a photograph")
    parser.add_argument("--model", default="Intel/dpt-large", help="Hub repo id or local checkpoint directory")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--output", default="depth.png")
    args = parser.parse_args()

    image = Image.open(args.image).convert("RGB")

    # 1. Preprocess: resize, rescale to [0, 1], normalise; (1, 3, H, W) channels first, like transformers.
    processor = DPTImageProcessor.from_pretrained(args.model)
    inputs = processor(images=image, return_tensors="mlx")
    print("pixel_values", inputs["pixel_values"].shape)

    # 2. Run the model (the task class comes from the checkpoint's config.json).
    model = load_model(args.model, dtype=args.dtype)
    outputs = model(inputs["pixel_values"])

    if hasattr(outputs, "predicted_depth"):
        print("predicted_depth", outputs.predicted_depth.shape)  # (1, H, W) at the model's resolution
        # 3. Post-process: interpolate to the original size (height, width).
        post = processor.post_process_depth_estimation(outputs, target_sizes=[(image.height, image.width)])
        depth = post[0]["predicted_depth"]  # NumPy (height, width); relative inverse depth, larger = closer
        picture = (depth - depth.min()) / (depth.max() - depth.min()) * 255.0
        Image.fromarray(picture.astype("uint8")).save(args.output)
        print(f"depth {depth.shape} saved as {args.output}")
    else:
        print("logits", outputs.logits.shape)  # (1, num_labels, h, w)
        classes = processor.post_process_semantic_segmentation(outputs, target_sizes=[(image.height, image.width)])[0]
        ids, counts = np.unique(classes, return_counts=True)
        for i, n in sorted(zip(ids, counts), key=lambda t: -t[1]):
            print(f"{n / classes.size:6.1%}  {model.config.id2label[int(i)]}")


if __name__ == "__main__":
    main()
