"""Exact (tabular, known-model) analysis tools for small cooperative Markov games.

Not a training algorithm: nothing here is registered in ``teamrl.algos.ALGORITHMS``. The
functions compute value functions, multi-agent advantages and exact HATRPO iterations in
float64 numpy, to check the theory behind the compiled algorithms (see ``exact``).
"""

from teamrl.algos.tabular.exact import (
    Evaluation,
    IterationInfo,
    MarkovGame,
    evaluate,
    hatrpo_iteration,
    joint_policy,
    kl_constrained_argmax,
    kl_divergence,
    kl_penalised_argmax,
    marginal_q,
    matrix_game,
    multi_agent_advantage,
    optimal_values,
    penalty_coefficient,
    random_game,
    random_policies,
    select_axes,
    sequential_advantage,
    simultaneous_iteration,
    state_visitation,
    trajectory,
)

__all__ = [
    "Evaluation",
    "IterationInfo",
    "MarkovGame",
    "evaluate",
    "hatrpo_iteration",
    "joint_policy",
    "kl_constrained_argmax",
    "kl_divergence",
    "kl_penalised_argmax",
    "marginal_q",
    "matrix_game",
    "multi_agent_advantage",
    "optimal_values",
    "penalty_coefficient",
    "random_game",
    "random_policies",
    "select_axes",
    "sequential_advantage",
    "simultaneous_iteration",
    "state_visitation",
    "trajectory",
]
