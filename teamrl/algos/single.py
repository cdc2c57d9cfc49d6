"""One-agent methods: PPO (Schulman et al. 2017), TRPO (Schulman et al. 2015) and TNPG
(Duan et al. 2016, truncated natural policy gradient). They are the n = 1 cases of HAPPO and
HATRPO (TNPG: the natural-gradient step of KL size δ, always taken, no line search), and refuse
teams so a typo does not silently train a shared-critic multi-agent method."""

from __future__ import annotations

from teamrl.algos.happo import HAPPO
from teamrl.algos.hatrpo import HATRPO
from teamrl.config import ConfigError


class _OneAgent:
    team_alternative = ""

    @classmethod
    def check(cls, spec, cfg, run):
        if spec.n_agents != 1:
            raise ConfigError(f"algorithm {run.algo!r} is for one-agent environments but "
                              f"{spec.env_id!r} has {spec.n_agents} agents; use "
                              f"{cls.team_alternative} for teams")
        super().check(spec, cfg, run)


class PPO(_OneAgent, HAPPO):
    team_alternative = "happo, mappo or ippo"


class TRPO(_OneAgent, HATRPO):
    team_alternative = "hatrpo"


class TNPG(_OneAgent, HATRPO):
    team_alternative = "hatrpo"
    line_search = False
