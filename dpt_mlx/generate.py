"""``python -m dpt_mlx.generate``: depth or segmentation maps for images (dpt_mlx.cli.predict);
``python -m dpt_mlx.generate app ...`` (``dpt-mlx app``): the local web app (dpt_mlx.cli.app)."""

import sys

from .cli.predict import main as predict_main


def main(argv: list[str] | None = None) -> int:
    """The predict command, or the app command when the first argument is ``app``."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["app"]:
        from .cli.app import main as app_main

        return app_main(args[1:])
    return predict_main(argv)


if __name__ == "__main__":
    sys.exit(main())
