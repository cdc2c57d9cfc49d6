"""Kept for the import path the 0.1 docs showed: the config builders now live in
:mod:`teamrl.train.presets` (``from teamrl.train import base_config``)."""

from teamrl.train.presets import base_config, config_from_file, config_from_run_dir  # noqa: F401
