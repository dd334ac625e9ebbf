"""Assertions shared by the CLI tests (imported as `helpers`: pytest puts tests/ on sys.path)."""


def one_error_line(result, *needles: str) -> str:
    """A user error: exit status 2, no traceback, one 'error:' line holding every needle."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if "error:" in line]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], result.output
    return lines[0]
