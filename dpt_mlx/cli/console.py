"""What every dpt_mlx command shares: exit codes, one-line errors, the argument parser, a progress bar,
and one signal policy.

Results go to stdout, errors and the progress bar to stderr. An error is one line (``error: ...``);
``--verbose`` adds the traceback of the exception being handled.

Exit statuses and interrupts are decided here, in :func:`command`, for every command: a
:class:`~dpt_mlx.errors.DPTError` that reaches it is one ``error:`` line and status 2 (nothing done);
SIGTERM (kill, systemd, job schedulers) and SIGHUP take the path of Ctrl-C: they raise
:class:`Interrupted`, a KeyboardInterrupt, so the code that was running cleans up on its way out
(temporary files removed), :func:`interrupt_note` adds what the run had done by then, and the command
ends with one line and the shell's status for the signal: 130 for SIGINT, 143 for SIGTERM, 129 for
SIGHUP. A closed stdout (``| head``) ends the command quietly with status 141, as a command killed by
SIGPIPE.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import threading
import traceback
import weakref
from collections.abc import Callable
from contextlib import contextmanager

from tqdm import tqdm

from ..errors import DPTError

EXIT_OK = 0  # everything done
EXIT_SOME_FAILED = 1  # some items failed, the others were done
EXIT_ERROR = 2  # nothing done: a usage error, a bad input or checkpoint
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM)
EXIT_BROKEN_PIPE = 141  # stdout closed by its reader (128 + SIGPIPE)
TERMINATING_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


def one_line(message) -> str:
    """``message`` on one line (newlines and runs of spaces become single spaces)."""
    return " ".join(str(message).split())


def print_error(message, verbose: bool = False) -> None:
    """``error: <message>`` on stderr; with ``verbose``, the traceback being handled first."""
    if verbose and sys.exc_info()[0] is not None:
        traceback.print_exc()
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, like Ctrl-C's KeyboardInterrupt."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def interrupt_status(exc: BaseException) -> int:
    """The exit status for an interruption: 128 + the signal's number (130 for Ctrl-C)."""
    return 128 + exc.signum if isinstance(exc, Interrupted) else EXIT_INTERRUPTED


def interrupt_name(exc: BaseException) -> str:
    """What stopped the run, for its last message: "interrupted" (Ctrl-C) or "terminated by SIGTERM"."""
    return f"terminated by {signal.Signals(exc.signum).name}" if isinstance(exc, Interrupted) else "interrupted"


@contextmanager
def signals_interrupt():
    """While inside, SIGTERM and SIGHUP raise :class:`Interrupted` (once; repeats are ignored while the
    program unwinds). Outside the main thread (where Python cannot set handlers) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = []

    def handler(signum, frame):
        if not raised:
            raised.append(signum)
            raise Interrupted(signum)

    previous = {}
    try:
        for signum in TERMINATING_SIGNALS:
            previous[signum] = signal.signal(signum, handler)
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, signal.SIG_DFL if old is None else old)  # None: a handler set outside Python


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass  # not a real file (a test's capture): nothing will flush it at exit


@contextmanager
def interrupt_note(describe: Callable[[], str]):
    """While inside, an interruption's last line gets ``describe()`` after "interrupted" (what the
    run had done, what it kept)."""
    try:
        yield
    except KeyboardInterrupt as e:
        e.add_note(describe())
        raise


def command(main):
    """Decorate a command's ``main(argv) -> int`` with the exit policy above: a DPTError is one line and
    status 2, an interruption one line (with its :func:`interrupt_note`) and 128 + the signal, a closed
    stdout a quiet 141."""

    @functools.wraps(main)
    def run(*args, **kwargs) -> int:
        try:
            with signals_interrupt():
                return main(*args, **kwargs)
        except DPTError as e:  # UsageError included
            ProgressBar.close_all()
            print_error(e, Console.verbose_errors)
            return EXIT_ERROR
        except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM, SIGHUP
            ProgressBar.close_all()
            print_error(" ".join([interrupt_name(e), *getattr(e, "__notes__", ())]))
            return interrupt_status(e)
        except BrokenPipeError:
            _quiet_stdout()
            return EXIT_BROKEN_PIPE

    return run


def program(module_form: str, script: str) -> str:
    """The command's name for its messages: ``script`` when run as that console script (see
    pyproject.toml), else how it is run from Python (``python -m ...``)."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return script if name == script else module_form


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit 2 (argparse prints the whole usage first)."""

    def error(self, message: str):
        self.exit(EXIT_ERROR, f"{self.prog}: error: {one_line(message)} (see --help)\n")


def format_list(choices: tuple[str, ...], shown: tuple[str, ...] | None = None, note: str = "", what: str = "format"):
    """argparse type: a comma-separated list of output formats (or other ``what``) from ``choices``; an
    error names ``shown`` (default: all of them) and ``note`` before "comma-separated"."""

    def parse(text: str) -> list[str]:
        names = [t.strip().lower() for t in text.split(",") if t.strip()]
        if not names or any(n not in choices for n in names):
            listed = ", ".join(shown or choices)
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}; choose from {listed} ({note}comma-separated)")
        return names

    return parse


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


class ProgressBar:
    """tqdm's bar on stderr, drawn only when stderr is a terminal and there is more than one item.

    ``update(done, note)`` advances it (to ``done``, or by one) with ``note`` after the count;
    ``clear()`` erases it before a line is printed and ``draw()`` puts it back; the finished bar
    stays on its line, so that what is printed next (a summary) comes after it; ``close()`` erases
    an unfinished one (an interrupted run).
    """

    _open: weakref.WeakSet = weakref.WeakSet()  # unfinished bars, erased before a command's last line

    def __init__(self, total: int, label: str = "", enabled: bool = True, unit: str = "item"):
        enabled = enabled and total > 1 and sys.stderr.isatty()
        if enabled:
            ProgressBar._open.add(self)
        try:  # a terminal that reports no size (some ptys) gets 80x24: tqdm would draw nothing there
            size = {"dynamic_ncols": True} if os.get_terminal_size(sys.stderr.fileno()).lines else {}
        except (AttributeError, OSError, ValueError):
            size = {}
        size = size or {"ncols": 80, "nrows": 24}
        self._bar = tqdm(total=total, desc=label or None, unit=unit, file=sys.stderr, **size) if enabled else None

    @property
    def enabled(self) -> bool:
        return self._bar is not None

    def clear(self) -> None:
        if self._bar is not None:
            self._bar.clear()

    def draw(self) -> None:
        if self._bar is not None:
            self._bar.refresh()

    def update(self, done: int | None = None, note: str = "") -> None:
        bar = self._bar
        if bar is None:
            return
        if note:
            bar.set_postfix_str(note, refresh=False)
        bar.update(1 if done is None else done - bar.n)
        if bar.n >= bar.total:  # finished: kept on its line
            bar.close()
            self._bar = None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.leave = False
            self._bar.close()
            self._bar = None

    @classmethod
    def close_all(cls) -> None:
        """Erase every unfinished bar (the run ends early)."""
        for bar in list(cls._open):
            bar.close()


class Console:
    """stdout for results, stderr for errors; a progress bar over ``total`` items, redrawn around every line."""

    verbose_errors = False  # the last console's --verbose: tracebacks with the command's last error too

    def __init__(self, quiet: bool, verbose: bool, total: int = 0, unit: str = "img"):
        self.quiet, self.verbose = quiet, verbose
        Console.verbose_errors = verbose
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
