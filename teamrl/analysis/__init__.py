"""Analysis of run folders: ``plots`` (learning curves), ``stats`` (aggregates over seeds,
bootstrap intervals, tests), ``report`` (tables and figures across runs). Reads run folders
through :mod:`teamrl.runs` only; knows nothing of training."""
