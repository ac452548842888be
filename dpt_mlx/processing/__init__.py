"""Image processing: the DPT image processor, post-processing, colour maps and overlays."""
