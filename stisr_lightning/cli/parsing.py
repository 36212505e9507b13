"""Command-line errors as one line that names what is wrong: the usage block only on request (`--help`), a traceback
only on request (STISR_TRACEBACK=1)."""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from typing import Callable, NoReturn, TypeVar

from jsonargparse import ArgumentParser as JsonArgumentParser
from lightning.pytorch.cli import LightningArgumentParser

T = TypeVar("T")


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors (and its subcommands' errors) are `prog: error: message`, without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help for usage)\n")


def summarize_jsonargparse_error(message: str) -> str:
    """The one line of a jsonargparse message that says what is wrong, after the key it concerns.

    jsonargparse nests the cause under 'Parser key "model":' and a list of every type it tried; the cause is the
    line naming an option that is not accepted, a missing file or an expected type."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return message
    head = lines[0]
    lines = [line for line in lines if "Expected a <class 'NoneType'>" not in line]  # Optional's other branch
    for pattern in (r"Option '.*' is not accepted", r"does not exist", r"No module named", r"cannot import name",
                    r"Expected a", r"[Nn]ot a valid", r"[Ii]nvalid"):
        cause = next((line for line in lines if re.search(pattern, line)), None)
        if cause is not None:
            return head if cause == head else f"{head} {cause}"
    return " ".join(lines[:2])


class OneLineLightningParser(LightningArgumentParser):
    """stisr-train's parser: jsonargparse's error (usage block, then a nested message) as one line; STISR_TRACEBACK=1
    writes the whole nested message first."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            JsonArgumentParser.error(self, message, ex)
        prog = self.prog.replace(" [options]", "")
        if os.environ.get("STISR_TRACEBACK"):
            sys.stderr.write(f"{message}\n")
        sys.stderr.write(f"{prog}: error: {summarize_jsonargparse_error(message)} ({prog} --help for usage)\n")
        sys.exit(2)


def one_line_errors(prog: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """A command's `main` that reports a bad input file (missing, unreadable, corrupt, already there: `OSError`) as
    `prog: error: message` with exit code 2 instead of a traceback; STISR_TRACEBACK=1 shows the traceback."""

    def wrap(main: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(main)
        def wrapped(*args, **kwargs) -> T:
            try:
                return main(*args, **kwargs)
            except OSError as error:
                if os.environ.get("STISR_TRACEBACK"):
                    raise
                sys.stderr.write(f"{prog}: error: {' '.join(str(error).split())}\n")
                sys.exit(2)

        return wrapped

    return wrap


def image_size(text: str) -> tuple[int, int]:
    """An `HxW` command-line size (e.g. 32x128) as (height, width)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 32x128, got {text!r}") from None
    return height, width
