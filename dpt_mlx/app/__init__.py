"""The local web app (``dpt-mlx app``, ``python -m dpt_mlx.app``): ui.py is the Gradio page, session.py
what it does (checkpoints, runs through the command line's runner and writers, measurements).
Importing this package imports neither Gradio nor a model."""
