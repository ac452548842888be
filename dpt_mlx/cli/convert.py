"""``python convert.py``: a transformers checkpoint -> a verified dpt_mlx checkpoint (dpt_mlx.io.convert)."""

from __future__ import annotations

import time

from ..io.checkpoint import DTYPES
from ..io.convert import convert
from .console import (
    EXIT_ERROR,
    EXIT_OK,
    ArgumentParser,
    Console,
    command,
    interrupt_note,
    print_error,
    program,
)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog=program("convert.py", "dpt-mlx-convert"),
        description="Convert a transformers DPT / Depth Anything checkpoint into a dpt_mlx checkpoint.",
    )
    p.add_argument(
        "--hf-path", required=True, help="Hugging Face Hub repo id or local transformers checkpoint directory"
    )
    p.add_argument("--mlx-path", required=True, help="output directory (must not exist unless --overwrite)")
    p.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default=None,
        help="store the weights in this dtype (default: as in the source)",
    )
    p.add_argument(
        "--quantize",
        action="store_true",
        help="store the transformer's linear layers with --q-bits-bit weights (dpt_mlx.io.quantize)",
    )
    p.add_argument(
        "--q-bits",
        type=int,
        choices=[4, 8],
        default=8,
        help="bits per weight with --quantize (default 8; 4-bit is smaller but lossy: see README)",
    )
    p.add_argument(
        "--q-group-size",
        type=int,
        choices=[32, 64, 128],
        default=64,
        help="weights sharing one scale and offset with --quantize (default 64)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--verbose", action="store_true", help="show tracebacks on errors")
    return p


@command  # exit statuses, SIGTERM / SIGHUP as Ctrl-C (cli/console.py): the work directory is removed,
def main(argv=None) -> int:  # the target left as it was (io/convert.py)
    args = build_parser().parse_args(argv)
    Console(quiet=False, verbose=args.verbose)
    start = time.perf_counter()
    report = {}

    def interrupted() -> str:
        if report.get("published"):  # it came as the converted model was being put in place
            return f"after {args.mlx_path} was written (the conversion is complete)"
        return f"(nothing was written to {args.mlx_path})"

    try:
        with interrupt_note(interrupted):
            out = convert(
                args.hf_path,
                args.mlx_path,
                dtype=args.dtype,
                overwrite=args.overwrite,
                quantize=args.quantize,
                q_bits=args.q_bits,
                q_group_size=args.q_group_size,
                report=report,
            )
    except (ValueError, OSError) as e:
        print_error(e, args.verbose)
        return EXIT_ERROR
    note = ""
    if args.quantize:
        note = f", {args.q_bits}-bit: {report['quantization_error']:.2g} relative error vs unquantized"
    print(f"converted {args.hf_path} -> {out} (verified{note}, {time.perf_counter() - start:.1f}s)")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
