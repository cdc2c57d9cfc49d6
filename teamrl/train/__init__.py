"""Training: from a config to a run folder.

``build`` checks a config and builds the (team env, algorithm) pair; a :class:`Trainer`
(``CompiledTrainer`` for compiled envs, ``HostTrainer`` for host envs) runs chunks of
updates; ``loop`` is the one loop that logs, evaluates and checkpoints around them;
``evaluate`` evaluates or renders a saved run; ``presets`` turns an (algorithm, env) pair, a
YAML file or a run folder into a config.
"""

from teamrl.train.build import (build, check_recurrent, resolve_agent_id, steps_per_update,
                                total_updates)
from teamrl.train.compiled import CompiledTrainer
from teamrl.train.host import HostTrainer
from teamrl.train.loop import (TrainingDiverged, TrainingStopped, check_checkpoint, chunk_rows,
                               default_log_every, make_trainer, train, with_schedule_horizon)
from teamrl.train.presets import base_config, config_from_file, config_from_run_dir
from teamrl.train.trainer import Runner, Trainer, all_finite

__all__ = ["CompiledTrainer", "HostTrainer", "Runner", "Trainer", "TrainingDiverged",
           "TrainingStopped", "all_finite", "base_config", "build", "check_checkpoint",
           "check_recurrent", "chunk_rows", "config_from_file", "config_from_run_dir",
           "default_log_every", "make_trainer", "resolve_agent_id", "steps_per_update",
           "total_updates", "train", "with_schedule_horizon"]
