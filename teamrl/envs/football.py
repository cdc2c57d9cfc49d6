"""Google Research Football (gfootball 2.10.2) as a PettingZoo-style ParallelEnv of the
controlled left-team players (``football/<scenario>``).

Imported by worker processes: gfootball, gym 0.25 and NumPy only, no JAX. gfootball is built
by ``teamrl install football`` (see ``teamrl/cli/install.py``); this module's scenario table does
not need it, so env ids are listed without it.

- Observations: gfootball's ``simple115v2`` (default) or ``simple115`` vector per controlled
  player; they differ only in the active-player one-hot.
- Global state (critic): the shared 115 features of the first player's vector with its
  active-player one-hot replaced by the multi-hot of every controlled player's position.
- Actions: gfootball's default action set, 19 discrete actions per player, all available.
- Rewards: ``scoring`` (+1 / -1 per goal) or ``scoring,checkpoints`` (plus 0.1 per distance
  checkpoint towards the goal, per player); the team reward is the mean over players.
- Episodes end as the scenario defines (a goal, the ball out of play or lost, for the
  academy; the match clock for 5_vs_5). Running out of the scenario's ``game_duration`` is a
  truncation (bootstrapped): the clock is not part of the observation.
- Episode metrics (:meth:`FootballTeam.episode_metrics`, read at each episode's end; see
  ``EPISODE_METRICS``): the outcome, goals, passes and assists, tracked from the raw
  observations' ball ownership. A pass *attempt* is a long, high or short pass action by the
  controlled player who owns the ball (counted once per possession); it *succeeds* when the
  next player to own the ball is a teammate. An *assist* is a successful pass whose receiver
  scores before the opponents touch the ball. Passes of built-in-AI teammates are not
  counted. Possessions lost count changes of ownership from our team to theirs.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np

# scenario -> (default controlled players, most controllable players, description); every
# scenario lasts 400 steps (game_duration) but those in LONG_SCENARIOS (3000).
# Defaults: HARL's GRF settings (harl/envs/football/football_env.py: 3 players in 3-vs-1, 2
# in the pass-and-shoot tasks, 4 in the counterattacks and 5-vs-5, whose keeper stays with the
# built-in AI, 11 in the corner and versus-lazy tasks); 10 outfield players in the matches.
SCENARIOS = {
    "academy_3_vs_1_with_keeper": (3, 4, "3 attackers vs a defender and a keeper"),
    "academy_pass_and_shoot_with_keeper": (2, 3, "pass and shoot past a defender and keeper"),
    "academy_run_pass_and_shoot_with_keeper": (2, 3, "run, pass and shoot vs defender+keeper"),
    "academy_counterattack_easy": (4, 11, "4 attackers counter vs 1 defender (11 a side)"),
    "academy_counterattack_hard": (4, 11, "4 attackers counter vs 2 defenders (11 a side)"),
    "academy_corner": (11, 11, "score from a corner kick (11 a side)"),
    "academy_empty_goal": (1, 2, "score into an empty goal from midfield"),
    "academy_empty_goal_close": (1, 2, "score into an empty goal from the box"),
    "academy_run_to_score": (1, 2, "outrun 5 chasers to an empty goal"),
    "academy_run_to_score_with_keeper": (1, 2, "outrun 5 chasers, beat the keeper"),
    "academy_single_goal_versus_lazy": (11, 11, "11 a side vs a team that does not move"),
    "5_vs_5": (4, 4, "5-a-side match, 3000 steps, keepers with the built-in AI"),
    "11_vs_11_easy_stochastic": (10, 11, "full match vs the easy built-in AI"),
    "11_vs_11_stochastic": (10, 11, "full match vs the medium built-in AI"),
    "11_vs_11_hard_stochastic": (10, 11, "full match vs the hard built-in AI"),
}
LONG_SCENARIOS = ("academy_single_goal_versus_lazy", "5_vs_5", "11_vs_11_easy_stochastic",
                  "11_vs_11_stochastic", "11_vs_11_hard_stochastic")


def game_duration(scenario: str) -> int:
    return 3000 if scenario in LONG_SCENARIOS else 400


REPRESENTATIONS = ("simple115v2", "simple115")
REWARDS = ("scoring", "scoring,checkpoints")
# Per-episode metrics, in this order; pass_rate is NaN in episodes without a pass attempt.
EPISODE_METRICS = ("won", "score_rate", "goals_for", "goals_against", "passes",
                   "pass_attempts", "pass_rate", "assists", "possession_lost")
_ACTIVE = slice(97, 108)  # the active-player one-hot inside a simple115 vector

INSTALL_HINT = ("Google Research Football is not installed in this Python environment; run "
                "`teamrl install football` (it builds gfootball 2.10.2, about 3 minutes)")


@contextlib.contextmanager
def _quiet_gym():
    """gym 0.25 prints an "unmaintained" notice on import and warns about its old step API
    for every wrapper; both are about gfootball's choice of gym, not the user's code."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def import_gfootball():
    try:
        with _quiet_gym():
            import gfootball.env as football_env
    except ImportError as err:
        raise RuntimeError(f"{INSTALL_HINT} ({type(err).__name__}: {err})") from None
    return football_env


class EpisodeTracker:
    """Goals, passes, assists and lost possessions of the left team over one episode, from
    the raw observation after every step (see the module doc for the definitions)."""

    def __init__(self, pass_action_ids):
        self.pass_actions = frozenset(pass_action_ids)
        self.reset(None)

    def reset(self, raw) -> None:
        self.passes = self.attempts = self.assists = self.lost = 0
        self.score = list(raw["score"]) if raw is not None else [0, 0]
        self.start_score = list(self.score)
        self.owner_team = raw["ball_owned_team"] if raw is not None else -1
        self.owner = raw["ball_owned_player"] if raw is not None else -1
        self.pending = None      # left player whose pass attempt awaits its outcome
        self.received = None     # (receiver) of the last successful pass, until it is lost

    def before_step(self, raw_before, actions) -> None:
        """Record a pass attempt by the controlled ball owner (``raw_before``: per-player raw
        observations the actions were chosen on; ``actions``: their action ids)."""
        for raw, action in zip(raw_before, actions):
            if (raw["ball_owned_team"] == 0 and raw["active"] == raw["ball_owned_player"]
                    and int(action) in self.pass_actions and self.pending is None):
                self.pending = raw["active"]
                self.attempts += 1

    def after_step(self, raw) -> None:
        """Update the counts with the raw observation reached by a step."""
        team, player = raw["ball_owned_team"], raw["ball_owned_player"]
        if team == 0:
            if self.pending is not None and player != self.pending:
                self.passes += 1            # a teammate of the passer has the ball
                self.received, self.pending = player, None
            elif self.owner_team == 0 and player != self.owner:
                self.received = None        # moved between teammates without a counted pass
        elif team == 1:
            self.lost += int(self.owner_team == 0)
            self.pending = self.received = None
        goals_for = raw["score"][0] - self.score[0]
        if goals_for > 0:
            scorer = player if team == 0 else self.owner
            if self.received is not None and self.received == scorer:
                self.assists += goals_for
            self.received = None
        self.score = list(raw["score"])
        if team != -1:
            self.owner_team, self.owner = team, player

    def metrics(self) -> dict:
        goals_for = self.score[0] - self.start_score[0]
        goals_against = self.score[1] - self.start_score[1]
        return {"won": float(goals_for > goals_against), "score_rate": float(goals_for > 0),
                "goals_for": float(goals_for), "goals_against": float(goals_against),
                "passes": float(self.passes), "pass_attempts": float(self.attempts),
                "pass_rate": self.passes / self.attempts if self.attempts else float("nan"),
                "assists": float(self.assists), "possession_lost": float(self.lost)}


class FootballTeam:
    """The controlled players of one gfootball scenario as a ParallelEnv.

    Args:
        scenario: a key of ``SCENARIOS``.
        players: controlled left-team players (gfootball picks which ones dynamically when
            fewer than the team's controllable players).
        representation, rewards: see the module doc.
        render: keep gfootball's renderer on (``render()`` returns RGB frames).
    """

    metadata = {"name": "football", "render_modes": ["rgb_array"]}
    episode_metric_names = EPISODE_METRICS

    def __init__(self, scenario: str, players: int, representation: str = "simple115v2",
                 rewards: str = "scoring", render_mode: str | None = None):
        football_env = import_gfootball()
        from gfootball.env import football_action_set

        self.scenario, self.n = scenario, players
        self._rng = np.random.default_rng()
        with _quiet_gym():
            self.env = football_env.create_environment(
                env_name=scenario, representation=representation, rewards=rewards,
                number_of_left_players_agent_controls=players,
                render=render_mode == "rgb_array",
                other_config_options={"game_engine_random_seed": self._engine_seed()})
        self.possible_agents = [f"player_{i}" for i in range(players)]
        self.agents: list[str] = []
        actions = football_action_set.get_action_set(self.env.unwrapped._config)
        self.num_actions = len(actions)
        self.tracker = EpisodeTracker(
            [i for i, a in enumerate(actions) if str(a) in ("long_pass", "high_pass",
                                                           "short_pass")])
        self._obs = np.zeros((players, 115), np.float32)

    def _engine_seed(self) -> int:
        return int(self._rng.integers(0, 2_000_000_000))

    # PettingZoo API, with gymnasium spaces like every other host env.
    @property
    def unwrapped(self):
        return self.env.unwrapped

    def observation_space(self, agent):
        import gymnasium

        return gymnasium.spaces.Box(-np.inf, np.inf, (115,), np.float32)

    def action_space(self, agent):
        import gymnasium

        return gymnasium.spaces.Discrete(self.num_actions)

    def _raw(self) -> list:
        return self.env.unwrapped.observation()

    def _split(self, obs) -> dict:
        self._obs = np.asarray(obs, np.float32).reshape(self.n, 115)
        return {a: self._obs[i] for i, a in enumerate(self.possible_agents)}

    def reset(self, seed=None, options=None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        # gfootball draws each episode's engine seed from Python's global `random` (and the
        # order in which the engine processes the teams from the first seed's parity); we set
        # both from our own stream so that a seeded env replays the same episodes.
        seed = self._engine_seed()
        self.env.unwrapped._config._values.update(game_engine_random_seed=seed,
                                                  reverse_team_processing=bool(seed % 2))
        obs = self.env.reset()
        self.agents = list(self.possible_agents)
        self.tracker.reset(self._raw()[0])
        return self._split(obs), {a: {} for a in self.agents}

    def step(self, actions):
        ids = [int(actions[a]) for a in self.possible_agents]
        self.tracker.before_step(self._raw(), ids)
        obs, reward, done, info = self.env.step(ids)
        raw = self._raw()[0]
        self.tracker.after_step(raw)
        reward = np.asarray(reward, np.float32).reshape(self.n)
        scored = info.get("score_reward", 0) != 0
        truncated = bool(done and raw["steps_left"] <= 0 and not scored)
        terminated = bool(done and not truncated)
        if done:
            self.agents = []
        agents = self.possible_agents
        return (self._split(obs), {a: float(reward[i]) for i, a in enumerate(agents)},
                {a: terminated for a in agents}, {a: truncated for a in agents},
                {a: {} for a in agents})

    def episode_metrics(self) -> dict:
        """The metrics of the episode so far (``EPISODE_METRICS``); the host adapter reads
        them when the episode ends, before the next reset."""
        return self.tracker.metrics()

    def state(self):
        state = self._obs[0].copy()
        state[_ACTIVE] = np.clip(self._obs[:, _ACTIVE].sum(axis=0), 0.0, 1.0)
        return state

    def render(self):
        return self.env.render(mode="rgb_array")

    def close(self):
        self.env.close()


def make_parallel_env(scenario: str, players: int, representation: str = "simple115v2",
                      rewards: str = "scoring", render_mode: str | None = None):
    return FootballTeam(scenario, players, representation, rewards, render_mode)
