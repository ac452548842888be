"""dpt_mlx against transformers and PyTorch: scripts with printed figures, not tests, run from the
source tree with the test extras installed (torch, transformers).

    python -m benchmarks.compare     # whole models: speed, memory, precision, profile, folder runs
    python benchmarks/kernels.py     # each CPU kernel against PyTorch's op
"""
