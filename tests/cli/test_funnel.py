"""The error funnel (dynamicdet_cli/cli/funnel.py) on a small app of its own: click's usage
errors and a command's user errors each come out as one `error:` line with exit status 2,
under every typer that pyproject allows (make test-floors runs this under the lowest)."""

from __future__ import annotations

import ast
import errno
from pathlib import Path
from typing import Annotated

import pytest
import typer
from helpers import one_error_line
from typer.testing import CliRunner

from dynamicdet_cli.cli import funnel
from dynamicdet_cli.cli.funnel import OneLineCommands, OneLineErrors
from dynamicdet_cli.core.errors import DynamicDetError

toy = typer.Typer(cls=OneLineErrors, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
commands = OneLineCommands(toy)


@commands.command()
def count(n: Annotated[int, typer.Option(min=1, max=3, help="how many")] = 1):
    """Print n."""
    print(n)


@commands.command()
def fail(kind: str):
    """Raise the error named `kind`."""
    if kind == "user":
        raise DynamicDetError("recipe.yaml: no such recipe; give a file that exists")
    if kind == "os":
        raise OSError(errno.ENOSPC, "No space left on device", "out/m.pt")
    if kind == "usage":
        raise typer.BadParameter("must be one of a, b")
    raise ValueError("a programmer error")


def run(*args: str):
    return CliRunner().invoke(toy, list(args))


def test_a_command_that_works_is_left_alone():
    result = run("count", "--n", "2")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "2"


# click's wording differs between versions (and typer's copy of it): the needles are the parts
# every version says, compared without case.
@pytest.mark.parametrize("args, needles", [
    (["count", "--n", "7"], ["--n", "(see", "count --help)"]),        # out of range
    (["count", "--n", "two"], ["--n", "count --help"]),               # not an integer
    (["count", "--bogus"], ["--bogus"]),                              # unknown option
    (["fail"], ["missing argument", "kind"]),                         # missing argument
    (["nosuch"], ["nosuch"]),                                         # unknown command
    (["fail", "usage"], ["must be one of a, b"]),                     # raised by the command
])
def test_a_usage_error_is_one_line_with_status_2(args, needles):
    result = run(*args)
    line = one_error_line(result)
    assert line.startswith("error:"), result.output
    for needle in needles:
        assert needle.lower() in line.lower(), result.output
    assert "Usage:" not in result.output and "╭" not in result.output  # no usage box


def test_a_user_error_is_one_line_with_status_2():
    line = one_error_line(run("fail", "user"), "recipe.yaml: no such recipe")
    assert line == "error: recipe.yaml: no such recipe; give a file that exists"


def test_a_file_system_error_is_one_line_with_status_2():
    one_error_line(run("fail", "os"), "out/m.pt", "no space left")


def test_a_programmer_error_keeps_its_traceback():
    result = run("fail", "bug")
    assert isinstance(result.exception, ValueError)
    assert "error:" not in result.output


def test_the_funnel_imports_nothing_private_from_typer():
    """typer's private modules come and go between releases (typer._click exists from 0.26
    only): an import of one breaks every command under the typers that lack it."""
    tree = ast.parse(Path(funnel.__file__).read_text())
    names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    names += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
    private = [n for n in names if n.split(".")[0] in ("typer", "click") and any(p.startswith("_") for p in n.split("."))]
    assert not private, private
