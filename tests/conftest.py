import os
import tempfile

# Tests run on the CPU, deterministically, without grabbing every core for XLA's thread pool.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent XLA compilation cache for the whole session, shared by the xdist workers and
# the subprocesses tests start: many tests compile the same programs (a run and its resume,
# the same small config in several tests), and on 2 cores compiling is much of the suite's
# time. Cached executables are the programs XLA would compile again, so results are the same
# bit for bit; the key covers the program, the flags and the jax version. (A new name: the
# old directory could hold an entry half-written by a killed session, which crashed jaxlib's
# cache read; delete the directory if a test worker segfaults in compilation_cache.py.)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "teamrl-test-xla-cache-2"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# jaxlib 0.7-0.9 log an XLA warning and two errors on stderr each time they load a cached
# executable ("Target machine feature +prefer-no-gather is not supported on the host"): a
# feature-detection quirk, not a fault, but it breaks the tests that hold commands to one line
# of stderr. Level 3 keeps XLA's C++ logging to fatal messages (docs/installation.md).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def pytest_collection_modifyitems(config, items):
    """Collect the tests marked ``long`` first. pytest-xdist's worksteal scheduler hands each
    worker a contiguous block of the collection, so a test of several minutes that happens to
    sit late in its block would start last and keep the suite running alone; first in the
    collection, it starts at once while the other worker takes the rest."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)  # stable sort
