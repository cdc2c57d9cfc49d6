import os

# Tests run on the CPU, deterministically, without grabbing every core for XLA's thread pool.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
