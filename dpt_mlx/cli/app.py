"""The app command: a local web page (Gradio) for depth and segmentation of photos.

    dpt-mlx app                                  # http://127.0.0.1:7860, Intel/dpt-large filled in
    python -m dpt_mlx.app --model depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf --port 8000

It serves on 127.0.0.1 (this computer only) until Ctrl-C. ``--host 0.0.0.0`` serves it to the local
network, ``--share`` through a public gradio.live link (that needs the internet, and anyone with
the link can use the app). Files are written into ``--output-dir``, or into a temporary folder
removed when the app stops.

Exit status: 2 nothing served (a usage error, gradio not installed, the port taken); 130 / 143
stopped by Ctrl-C / SIGTERM, the normal way to end it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ..errors import UsageError
from ..io.checkpoint import DTYPES
from ..processing.visualize import COLORMAPS
from .console import ArgumentParser, command, interrupt_note, program
from .predict import DEFAULT_MODEL

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {text!r}")
    return value


def _prog() -> str:
    """``dpt-mlx app`` when run through the dpt-mlx script, else ``python -m dpt_mlx.app``."""
    return "dpt-mlx app" if program("", "dpt-mlx") == "dpt-mlx" else "python -m dpt_mlx.app"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=_prog(),
        description="A local web app: pick a checkpoint, drop photos, get depth (photo and depth side by side, "
        "a 3D mesh, measurements for metric models) or segmentation, and download what dpt-mlx writes.",
        epilog='Needs pip install "dpt_mlx[app]". Runs on this computer with no internet; --share is the exception.',
    )
    p.add_argument("--model", "-m", default=DEFAULT_MODEL, help=f"the checkpoint filled in (default {DEFAULT_MODEL})")
    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to serve on (default {DEFAULT_HOST}: this computer only; 0.0.0.0: the local network)",
    )
    p.add_argument("--port", "-p", type=_port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument(
        "--share",
        action="store_true",
        help="also serve through a public gradio.live link (needs the internet; anyone with the link can use it)",
    )
    p.add_argument(
        "--output-dir",
        "-d",
        metavar="DIR",
        help="keep the files written in DIR (default: a temporary folder removed when the app stops)",
    )
    p.add_argument("--colormap", "-c", choices=COLORMAPS, default="inferno", metavar="NAME", help="colour map")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="compute dtype (default: the checkpoint's)")
    return p


def _root(output_dir: str | None) -> tuple[Path, bool]:
    """The folder the app writes into, and whether it is a temporary one (removed at the end)."""
    if output_dir is None:
        return Path(tempfile.mkdtemp(prefix="dpt-mlx-app-")), True
    root = Path(output_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise UsageError(f"--output-dir {output_dir} exists and is not a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --output-dir {output_dir}: {e.strerror or e}") from None
    return root, False


@command  # exit statuses, SIGTERM / SIGHUP as Ctrl-C: cli/console.py
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..app.session import Session
    from ..app.ui import import_gradio

    root, temporary = _root(args.output_dir)
    try:
        os.environ.setdefault("GRADIO_TEMP_DIR", str(root / ".uploads"))  # Gradio's copies of uploads, with ours
        try:
            import_gradio()
        except ImportError as e:
            raise UsageError(str(e)) from None
        session = Session(root, dtype=args.dtype)
        try:
            _serve(session, args, root)
        finally:
            session.close()  # after the photo in progress; MLX released before the process ends
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)


def _serve(session, args: argparse.Namespace, root: Path) -> None:
    """Serve the page until Ctrl-C or SIGTERM."""
    from ..app.ui import build_app, serve_paths

    app = build_app(session, args.model, colormap=args.colormap)
    try:
        app.launch(
            server_name=args.host,
            server_port=args.port,
            share=args.share,
            prevent_thread_lock=True,
            quiet=True,
            footer_links=[],
            allowed_paths=serve_paths(session),
        )
    except OSError as e:
        raise UsageError(f"cannot serve on {args.host}:{args.port}: {e}; pick another --port") from None
    try:
        where = app.share_url or app.local_url
        print(f"dpt_mlx app on {where} (files in {root}); Ctrl-C stops it", flush=True)
        with interrupt_note(lambda: "(the app stopped)"):
            while True:
                time.sleep(0.5)
    finally:
        app.close(verbose=False)


if __name__ == "__main__":
    sys.exit(main())
