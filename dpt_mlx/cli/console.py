"""What every dpt_mlx command shares: exit codes, one-line errors, the argument parser, a progress bar.

Results go to stdout, errors and the progress bar to stderr. An error is one line (``error: ...``);
``--verbose`` adds the traceback of the exception being handled.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import traceback

EXIT_OK = 0  # everything done
EXIT_SOME_FAILED = 1  # some items failed, the others were done
EXIT_ERROR = 2  # nothing done: a usage error, a bad input or checkpoint
EXIT_INTERRUPTED = 130  # Ctrl-C


def one_line(message) -> str:
    """``message`` on one line (newlines and runs of spaces become single spaces)."""
    return " ".join(str(message).split())


def print_error(message, verbose: bool = False) -> None:
    """``error: <message>`` on stderr; with ``verbose``, the traceback being handled first."""
    if verbose and sys.exc_info()[0] is not None:
        traceback.print_exc()
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit 2 (argparse prints the whole usage first)."""

    def error(self, message: str):
        self.exit(EXIT_ERROR, f"{self.prog}: error: {one_line(message)} (see --help)\n")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


class ProgressBar:
    """A one-line bar on stderr, drawn only when stderr is a terminal and there is more than one item.

    ``update(done, note)`` redraws it; ``clear()`` erases it (before printing a line); the bar
    ends with a newline once ``done`` reaches ``total``.
    """

    def __init__(self, total: int, label: str = "", enabled: bool = True, unit: str = "item"):
        self.total, self.label, self.unit = total, label, unit
        self.enabled = enabled and total > 1 and sys.stderr.isatty()
        self.done, self.note = 0, ""
        self.start = time.perf_counter()

    def clear(self) -> None:
        if self.enabled and self.done < self.total:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def draw(self) -> None:
        if not self.enabled:
            return
        width = max(10, min(40, shutil.get_terminal_size((80, 20)).columns - 50))
        filled = int(width * self.done / self.total)
        elapsed = time.perf_counter() - self.start
        rate = f"{elapsed / self.done:.2f} s/{self.unit}" if self.done else ""
        eta = f"ETA {elapsed / self.done * (self.total - self.done):.0f}s" if self.done else ""
        label = f"{self.label} " if self.label else ""
        line = f"{label}[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {self.note} {rate} {eta}"
        sys.stderr.write("\r\033[K" + " ".join(line.split()))
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def update(self, done: int | None = None, note: str = "") -> None:
        self.done = self.done + 1 if done is None else done
        self.note = note
        self.draw()

    def close(self) -> None:
        """Erase an unfinished bar (an interrupted run)."""
        self.clear()
        self.enabled = False


class Console:
    """stdout for results, stderr for errors; a progress bar over ``total`` items, redrawn around every line."""

    def __init__(self, quiet: bool, verbose: bool, total: int = 0, unit: str = "img"):
        self.quiet, self.verbose = quiet, verbose
        self.bar = ProgressBar(total, enabled=not quiet, unit=unit)

    def info(self, message: str) -> None:
        if not self.quiet:
            self.bar.clear()
            print(message, flush=True)
            self.bar.draw()

    def detail(self, message: str) -> None:
        if self.verbose:
            self.info(message)

    def error(self, message: str) -> None:
        self.bar.clear()
        print_error(message, self.verbose)
        self.bar.draw()

    def advance(self) -> None:
        self.bar.update()
