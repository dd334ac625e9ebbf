"""allocator.py: loading a model (the CLI, dynamicdet_cli.load) keeps freed memory on glibc,
unless asked not to; importing the package changes nothing process-wide.

Each case runs in a fresh interpreter, since the setting is per process and this one has
already imported the package. Whether a block of 16 MiB is served by mmap is read from
mallinfo2's count of mmapped blocks: glibc's default mmaps blocks over 128 KiB, a threshold
it raises after freeing an mmapped block (up to 32 MiB), so the block is large enough to stay
over it whatever the interpreter freed at start-up, and under the setting's 32 MiB."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dynamicdet_cli.core import allocator
def _glibc_with_mallinfo2() -> bool:
    if not allocator._is_glibc():
        return False
    major, minor = os.confstr("CS_GNU_LIBC_VERSION").split()[1].split(".")[:2]
    return (int(major), int(minor)) >= (2, 33)


on_glibc = pytest.mark.skipif(not _glibc_with_mallinfo2(),
                              reason="the setting applies to glibc only; the probe needs mallinfo2 (2.33)")

PROBE = """
import ctypes
import sys
import dynamicdet_cli
import dynamicdet_cli.core.allocator as allocator
if sys.argv[1:] == ["apply"]:
    allocator.keep_freed_memory()  # what the CLI's main and dynamicdet_cli.load do

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
before = libc.mallinfo2().hblks
block = libc.malloc(16 << 20)
print(allocator.setting(), libc.mallinfo2().hblks - before)
libc.free(ctypes.c_void_p(block))
"""


def probe(value: str | None, apply: bool = True) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DYNAMICDET_MALLOC"}
    if value is not None:
        env["DYNAMICDET_MALLOC"] = value
    args = [sys.executable, "-c", PROBE, *(["apply"] if apply else [])]
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip(), out.stderr.strip()


@on_glibc
def test_loading_a_model_keeps_large_blocks_off_mmap():
    assert probe(None) == ("keep-freed 0", "")
    assert probe("keep-freed") == ("keep-freed 0", "")


@on_glibc
def test_importing_the_package_changes_nothing_process_wide():
    assert probe(None, apply=False) == ("default 1", "")


def test_the_cli_and_the_api_apply_the_setting_where_a_model_is_loaded(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or allocator.setting())
    import dynamicdet_cli
    from dynamicdet_cli.cli import app

    with pytest.raises(Exception):
        dynamicdet_cli.load(tmp_path / "missing.pt")
    assert calls == [1]
    with pytest.raises(SystemExit):
        app.main_with_args(["--version"])
    assert calls == [1, 1]


@on_glibc
def test_default_leaves_glibc_as_it_is():
    assert probe("default") == ("default 1", "")


@on_glibc
def test_an_unknown_value_is_named_in_one_line_and_the_setting_still_applies():
    out, err = probe("defualt")
    assert out == "keep-freed 0"
    assert err == "warning: DYNAMICDET_MALLOC='defualt' is neither keep-freed nor default; using keep-freed"


def test_without_glibc_malloc_is_left_alone(monkeypatch):
    monkeypatch.setattr(allocator, "_state", allocator.DEFAULT)
    monkeypatch.setattr(allocator, "_is_glibc", lambda: False)
    monkeypatch.delenv("DYNAMICDET_MALLOC", raising=False)
    assert allocator.keep_freed_memory() == "default" and allocator.setting() == "default"
    assert not allocator.opted_out()
