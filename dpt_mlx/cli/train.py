"""Fine-tune a DPT / Depth Anything checkpoint on a folder of images with depth maps or class masks.

    python -m dpt_mlx.train --model Intel/dpt-hybrid-midas --data mydata --output runs/midas-ft
    python -m dpt_mlx.train --model Intel/dpt-large-ade --data myseg --output runs/ade-ft --epochs 20
    python -m dpt_mlx.train --resume runs/midas-ft --epochs 30          # continue (same or more epochs)

Data layout (``--data DIR``)::

    DIR/images/<name>.jpg|.png|...     the photos
    DIR/depth/<name>.png|.npy|.tif     depth models: a 16-bit (or 8-bit / 32-bit) single-channel PNG,
                                       a float TIFF, or a 2-D .npy; 0, NaN and inf mark invalid pixels
    DIR/masks/<name>.png|.npy          segmentation models: class ids (an "L", "P" or 16-bit PNG, or
                                       an integer .npy); 255 (the ignore index) marks unlabelled pixels

Each target has the same stem and the same size as its image. The task follows from the model.
Depth files hold depth (larger = farther) unless ``--target disparity``; ``--depth-scale`` converts
their values to metres (e.g. 0.001 for millimetre PNGs; needed for metric models only).

Exit status: 0 done; 2 nothing was trained (a usage error, bad data or an unusable model, with a
one-line message); 130 interrupted by Ctrl-C, 143 by SIGTERM (the last complete checkpoint is kept;
--resume continues from it).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import fields
from pathlib import Path

from ..errors import UsageError
from ..models.losses import SILOG, SSI
from ..training.checkpoints import find_checkpoint, holds_run, read_state, run_dir_of
from ..training.loop import Resume, RunResult, RunSpec, TrainingOptions, run
from .console import (
    EXIT_ERROR,
    EXIT_OK,
    ArgumentParser,
    ProgressBar,
    command,
    interrupt_note,
    positive_int,
    print_error,
    program,
)


def _number(kind, low=None, high=None, low_open=False, what=""):
    """argparse type: a finite ``kind`` in [low, high] (``low`` excluded with ``low_open``)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        too_low = low is not None and (value < low or (low_open and value == low))
        if too_low or (high is not None and value > high) or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


POSITIVE = _number(float, 0, low_open=True, what="a positive number")
NON_NEGATIVE = _number(float, 0, what="a non-negative number")


def _model_and_data(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model", "-m", help="Hugging Face Hub repo id or local checkpoint directory to start from")
    g.add_argument("--data", metavar="DIR", help="data directory: DIR/images + DIR/depth or DIR/masks")
    g.add_argument(
        "--output",
        "-o",
        metavar="DIR",
        help="run directory: checkpoints go to DIR/checkpoint-<step>, the final model to DIR "
        "(default with --resume: the resumed run's directory)",
    )
    g.add_argument(
        "--resume",
        metavar="DIR",
        help="continue a run: a checkpoint-<step> directory, or a run directory (its latest checkpoint)",
    )
    g.add_argument("--overwrite", action="store_true", help="allow an --output that already holds a run")
    g.add_argument(
        "--target",
        choices=("depth", "disparity"),
        default=None,
        help="what depth files hold (default depth; relative models train on disparity = 1 / depth)",
    )
    g.add_argument(
        "--depth-scale",
        type=POSITIVE,
        default=None,
        metavar="S",
        help="multiply depth file values by S to get metres (default 1; 0.001 for mm)",
    )
    g.add_argument(
        "--val-split",
        type=_number(float, 0, 0.9, what="a fraction in [0, 0.9]"),
        default=None,
        metavar="F",
        help="fraction of the images held out for validation (default 0.1)",
    )


def _training(p: argparse.ArgumentParser) -> None:
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=positive_int, default=None, help="default 10")
    t.add_argument(
        "--batch-size",
        "-b",
        type=positive_int,
        default=None,
        help="default 4 (a batch holds images of one preprocessed size)",
    )
    t.add_argument("--lr", type=POSITIVE, default=None, help="peak learning rate of AdamW (default 5e-5)")
    t.add_argument(
        "--weight-decay", type=NON_NEGATIVE, default=None, help="AdamW decoupled weight decay (default 0.01)"
    )
    t.add_argument(
        "--warmup",
        type=_number(float, 0, 1, what="a fraction in [0, 1]"),
        default=None,
        help="fraction of the steps with a linear warm-up from 0 (default 0.05); cosine decay to 0 after",
    )
    t.add_argument(
        "--max-grad-norm",
        type=NON_NEGATIVE,
        default=None,
        help="clip the global gradient norm (default 1; 0 turns clipping off)",
    )
    t.add_argument(
        "--loss",
        choices=(SSI, SILOG),
        default=None,
        help="depth loss (default: silog for metric checkpoints, ssi otherwise)",
    )
    t.add_argument(
        "--freeze-backbone",
        action="store_true",
        default=None,
        help="train the neck and head only (the backbone gets no gradients and runs in eval mode)",
    )
    t.add_argument(
        "--freeze-batch-norm",
        action="store_true",
        default=None,
        help="keep BatchNorm layers on their running statistics",
    )
    t.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        default=None,
        help="recompute each transformer layer in the backward pass: less memory (-20 to -50%% peak "
        "measured), one more forward pass of the encoder per step",
    )
    t.add_argument(
        "--seed",
        type=_number(int, 0, what="a non-negative integer"),
        default=None,
        help="seed of the split, the data order and dropout (default 0)",
    )
    t.add_argument(
        "--keep-checkpoints",
        type=positive_int,
        default=None,
        metavar="N",
        help="keep the N latest checkpoints (default 1)",
    )
    t.add_argument("--quiet", "-q", action="store_true", help="print errors and the final line only")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=program("python -m dpt_mlx.train", "dpt-mlx-train"),
        description="Fine-tune a DPT or Depth Anything checkpoint with MLX on images with depth maps\n"
        "(scale-and-shift-invariant loss for relative depth, scale-invariant log loss for\n"
        "metric depth) or segmentation masks (cross-entropy, as transformers). Formulas:\n"
        "dpt_mlx/models/losses.py.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _model_and_data(p)
    _training(p)
    return p


def resolve_options(args: argparse.Namespace, saved: dict | None) -> TrainingOptions:
    """Command line, else the resumed run's value, else the default."""
    saved = saved or {}
    values = {}
    for f in fields(TrainingOptions):
        given = getattr(args, f.name)
        values[f.name] = given if given is not None else saved.get(f.name, f.default)
    return TrainingOptions(**values)


def _run_dir(args: argparse.Namespace, resume: Resume | None) -> Path:
    if args.output:
        run_dir = Path(args.output)
    elif resume is not None:
        run_dir = run_dir_of(resume.checkpoint)
    else:
        raise UsageError("give --output DIR for the checkpoints and the trained model")
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--output {run_dir} is a file")
    if resume is None and not args.overwrite and holds_run(run_dir):
        raise UsageError(
            f"{run_dir} already holds a training run; use --resume {run_dir}, another --output, or --overwrite"
        )
    return run_dir


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    """The run the command line asks for (with --overwrite, the old checkpoints are removed once the run
    has loaded its model and data and holds its directory's lock: training/loop.py).

    A bad combination of options is a UsageError.
    """
    resume = None
    if args.resume:
        checkpoint = find_checkpoint(Path(args.resume))
        resume = Resume(checkpoint, read_state(checkpoint))
        if args.model:
            raise UsageError("--resume continues from the checkpoint's weights; drop --model")
    elif not args.model:
        raise UsageError("give --model (a checkpoint to fine-tune) or --resume (a run to continue)")
    options = resolve_options(args, resume and resume.state.get("options"))
    if not options.data:
        raise UsageError("give --data DIR (DIR/images with DIR/depth or DIR/masks)")
    run_dir = _run_dir(args, resume)
    options.data = os.path.abspath(options.data)
    return RunSpec(options, run_dir, model=args.model, resume=resume, quiet=args.quiet, overwrite=args.overwrite)


def train(args: argparse.Namespace) -> RunResult:
    """Train as the parsed command line (``build_parser().parse_args``) says."""

    def progress(total: int, label: str) -> ProgressBar:
        return ProgressBar(total, label, enabled=not args.quiet, unit="step")

    return run(spec_from_args(args), progress)


@command  # exit statuses, SIGTERM / SIGHUP as Ctrl-C, a closed stdout: cli/console.py
def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # usage errors (one line, status 2), --help (0): returned, not raised
        return int(e.code or 0)
    try:
        with interrupt_note(lambda: "(the last complete checkpoint is kept)"):
            train(args)
    except BrokenPipeError:
        raise  # stdout closed: command() ends quietly
    except OSError as e:  # disk full, permissions: the user's to fix
        print_error(e)
        return EXIT_ERROR
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
