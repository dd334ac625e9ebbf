__version__ = "0.1.0"

# Every way into the package (the CLI, its torchrun ranks, the benches, a library user) runs
# with the same malloc setting, since CPU latencies are measured and promised under it.
from dynamicdet_cli.core import allocator as _allocator  # noqa: E402

_allocator.keep_freed_memory()
