"""The command lines: predict (``python -m dpt_mlx.generate``), train, convert and batch (Ray)."""
