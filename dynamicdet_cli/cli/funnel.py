"""The CLI's error funnel: every user error becomes one `error: ...` line and a non-zero exit.

Two places feed it. `OneLineErrors`, the typer group every command runs under, turns click's
usage errors (unknown option, value out of range, missing argument) into one line with exit
status 2. `OneLineCommands.command` registers a command so that a `DynamicDetError` or a
file-system error (OSError) it raises, or an allocation that failed, prints one line and exits
with status 2, and Ctrl-C one line and 130. Programmer errors keep their traceback. Text from
the user (paths, names) is never read as rich markup.

typer has raised click's exceptions from two places: the `click` package up to typer 0.25, a
copy of click inside typer (a private module) from 0.26. The one public name that reaches them
in every version is `typer.BadParameter`, which is click's own class; its module holds the
other exception classes, so they are taken from there and never imported by a private path.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from importlib import import_module

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from dynamicdet_cli.core.cpus import is_rank_zero
from dynamicdet_cli.core.errors import USER_ERRORS, memory_message, set_warning_sink, user_message

_click_errors = import_module(typer.BadParameter.__module__)  # click.exceptions, or typer's copy of it
ClickException = _click_errors.ClickException
# click 8.2 raises it for a group called without arguments (it prints the help, status 2);
# click 8.0 and 8.1 print the help and exit 0, and have no such class: catch nothing then.
NoArgsIsHelpError = getattr(_click_errors, "NoArgsIsHelpError", ())
assert issubclass(typer.BadParameter, ClickException)

# Under torchrun only rank 0 talks; errors are still shown by whichever process hits them.
QUIET = not is_rank_zero()
err_console = Console(stderr=True)


def warn(message: str) -> None:
    """Print one `warning:` line on stderr (rank 0 only)."""
    if not QUIET:
        err_console.print(Text.assemble(("warning:", "yellow"), " ", message), soft_wrap=True, highlight=False)


def fail(message: str, status: int = 2):
    """Print one `error:` line on stderr and exit with `status`."""
    if not (QUIET and status == 130):  # Ctrl-C reaches every rank; rank 0 says it once
        err_console.print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True, highlight=False)
    raise SystemExit(status)


_said: set[str] = set()


def _library_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning from torch or another library: one `warning:` line, once per text (the
    library's own form spans two lines, with its source line, and repeats)."""
    text = " ".join(str(message).split())
    if text and text not in _said:
        _said.add(text)
        warn(text)


class OneLineErrors(TyperGroup):
    """typer's group, with usage errors (bad option values, ranges, unknown options) printed
    as one `error:` line instead of a usage box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        set_warning_sink(warn)
        _said.clear()
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _library_warning
                status = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as err:
            err.show()
            sys.exit(err.exit_code)
        except ClickException as err:
            hint = f" (see {err.ctx.command_path} --help)" if getattr(err, "ctx", None) else ""
            fail(" ".join(err.format_message().split()) + hint, err.exit_code)
        except typer.Abort:
            fail("aborted", 1)
        except BrokenPipeError:
            sys.stderr = open(os.devnull, "w")  # the reader went away (| head): nothing to say
            sys.exit(1)
        finally:
            set_warning_sink(None)
        sys.exit(status if isinstance(status, int) else 0)


class OneLineCommands:
    """Registers commands on a typer app so that a user error (DynamicDetError, or an OSError
    from the file system) in any of them prints one line and exits with status 2 instead of
    showing a traceback; Ctrl-C prints one line and exits with 130."""

    def __init__(self, typer_app: typer.Typer):
        self.typer_app = typer_app

    def command(self, name: str | None = None):
        def register(fn):
            @functools.wraps(fn)
            def friendly(*args, **kwargs):
                try:
                    return fn(*args, **kwargs)
                except USER_ERRORS as err:
                    fail(user_message(err))
                except (MemoryError, RuntimeError) as err:
                    message = memory_message(err)
                    if message is None:
                        raise  # a programmer error: its traceback is wanted
                    fail(message)
                except KeyboardInterrupt:
                    fail("interrupted; every file is written whole or not at all, so none was left half-written", 130)
            return self.typer_app.command(name)(friendly)
        return register
