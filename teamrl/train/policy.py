"""A trained policy from a run folder: acting in JAX or NumPy, and exporting it.

:func:`load_policy` reads one seed of a run's checkpoint and returns a :class:`Policy` whose
``act`` is the trainer's own acting function (``algo.policy_action``, or
``recurrent_policy_action`` with an explicit state), on the parameters acting needs only (no
critic, optimiser state or replay buffer). With ``backend="numpy"`` it acts through the host
runner's NumPy forward pass (:mod:`teamrl.train.host_policy`) instead, without JAX work per
call, for the networks that pass covers. :func:`export_policy` (``teamrl export``) writes a
self-contained artefact that :func:`teamrl.exported.load_exported` reads.

Shapes (N agents, D observation width, A actions, B envs; see :mod:`teamrl.exported`):
``obs [..., N, D]`` (or a ``TeamObs``), ``avail [..., N, A]`` bool -> actions ``[..., N]``
int32 or ``[..., N, A]`` float32; recurrent policies take ``[N, D]`` or ``[B, N, D]`` and a
:class:`~teamrl.exported.PolicyState` of hidden states ``[B, N, H]``.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from teamrl.config import ConfigError
from teamrl.exported import (EXTENSIONS, FORMAT, VERSION, PolicyInputError, PolicyState,
                             _check_state, team_inputs)

CHECKPOINTS = ("best", "latest")
BACKENDS = ("jax", "numpy")


class PolicyError(ConfigError):
    """A run folder, checkpoint, seed, backend or output that cannot give a policy (one
    line naming the bad value and the valid choices)."""


def load_policy(run_dir, checkpoint: str = "best", seed: int | None = None,
                backend: str = "jax") -> "Policy":
    """The policy of seed ``seed`` (a seed number of the run; default its first) in checkpoint
    ``checkpoint`` (``best`` falls back to ``latest`` with a note on stderr, as ``teamrl
    eval``). ``backend``: ``jax`` (jittable) or ``numpy`` (no JAX per call; feed-forward
    actor-critic actors only). Raises PolicyError / CheckpointError (one line)."""
    from teamrl import runs
    from teamrl.scale.distributed import ONE_DEVICE
    from teamrl.train.evaluate import load_for_eval
    from teamrl.train.loop import make_trainer
    from teamrl.train.presets import config_from_run_dir

    if backend not in BACKENDS:
        raise PolicyError(f"backend={backend!r} is not valid; valid: {', '.join(BACKENDS)}")
    if checkpoint not in CHECKPOINTS:
        raise PolicyError(f"checkpoint={checkpoint!r} is not valid; valid: "
                          f"{', '.join(CHECKPOINTS)}")
    path = pathlib.Path(run_dir)
    if not path.is_dir():
        raise PolicyError(f"run folder {str(run_dir)!r} does not exist")
    if not (path / runs.CONFIG_FILE).is_file():
        raise PolicyError(f"{str(run_dir)!r} is not a run folder (no {runs.CONFIG_FILE})")
    config = config_from_run_dir(path, dict(ONE_DEVICE))
    seeds = [config.run.seed + s for s in range(config.run.seeds)]
    seed = seeds[0] if seed is None else seed
    if seed not in seeds:
        raise PolicyError(f"seed={seed!r} is not a seed of {str(run_dir)!r}; valid: "
                          f"{', '.join(map(str, seeds))}")
    trainer = make_trainer(config)  # host envs start no workers for this
    try:
        # The checkpoint's structure from shapes alone: nothing is allocated or compiled.
        name, runner, meta = load_for_eval(path, checkpoint, _ShapeTemplate(trainer))
    finally:
        trainer.close()
    train_state = jax.tree.map(lambda x: np.asarray(x)[seeds.index(seed)], runner.train_state)
    info = policy_meta(config, trainer.spec, trainer.algo, name, meta.get("env_steps"), seed)
    return Policy(trainer.algo, trainer.spec, train_state, info, backend)


def policy_meta(config, spec, algo, checkpoint: str, env_steps, seed: int) -> dict:
    """What a policy (and its export) records of its run: the team layout it acts on."""
    return {"format": FORMAT, "version": VERSION, "algo": config.run.algo,
            "env_id": config.run.env_id, "checkpoint": checkpoint, "env_steps": env_steps,
            "seed": seed, "n_agents": spec.n_agents, "agent_names": list(spec.agent_names),
            "obs_dim": spec.obs_dim, "state_dim": spec.state_dim,
            "action_dim": spec.action_dim, "action_kind": spec.action_kind,
            "discrete": spec.discrete, "action_mask": spec.action_mask.tolist(),
            "agent_id": spec.agent_id, "recurrent": bool(getattr(algo, "recurrent", False)),
            "hidden_size": config.network.gru_size}


class _ShapeTemplate:
    """Stands in for a trainer in :func:`load_for_eval`: ``init()`` gives the runner's
    shapes (``jax.eval_shape``), the template a checkpoint is restored into."""

    def __init__(self, trainer):
        self.trainer = trainer

    def init(self):
        return self.trainer.runner_shape


def acting_state(algo, train_state):
    """``train_state`` without what acting never reads (critics, optimiser states, target
    networks, replay buffers, MDPO's models and data window), so that a policy and its export
    carry the actor only. Unknown train states (a plugin's) are kept whole."""
    from teamrl.algos.common import TrainState
    from teamrl.algos.iql import QTrainState
    from teamrl.algos.obs_norm import ObsNormState

    if isinstance(train_state, ObsNormState):
        return train_state.replace(inner=acting_state(algo.algo, train_state.inner))
    if isinstance(train_state, TrainState):
        return train_state.replace(critic_params=(), actor_opt=(), critic_opt=(),
                                   value_norm=(), algo_state=())
    if isinstance(train_state, QTrainState):
        return train_state.replace(target_params=(), opt_state=(), buffer=(), algo_state=())
    return train_state


class Policy:
    """A trained team policy (see the module doc for shapes).

    ``act(obs, state=None, *, deterministic=True, key=None, avail=None)``: actions
    (feed-forward), or ``(actions, state)`` for recurrent policies (``state`` from
    :meth:`init_state`; ``state.reset(done)`` where episodes ended). JAX backend: ``key`` is a
    ``jax.random`` key (needed when not deterministic); ``act`` is jitted, and
    ``apply(params, obs, state, ...)`` is the same as a pure function of ``params``
    (:attr:`params`) for jax.jit / vmap / grad. NumPy backend: ``key`` is a
    ``numpy.random.Generator`` or int seed; arrays in and out are NumPy's.
    """

    def __init__(self, algo, spec, train_state, meta: dict, backend: str = "jax"):
        self.algo, self.spec, self.meta, self.backend = algo, spec, meta, backend
        self.recurrent = meta["recurrent"]
        self.params = self._slim(train_state)
        self._jitted = jax.jit(self.apply, static_argnames=("deterministic",))
        self._numpy = self._numpy_policy() if backend == "numpy" else None

    def __repr__(self) -> str:
        m = self.meta
        return (f"Policy({m['algo']} on {m['env_id']}, {m['checkpoint']} checkpoint at "
                f"{m['env_steps']} env steps, seed {m['seed']}, backend {self.backend})")

    # ----------------------------------------------------------------------- JAX
    def _slim(self, train_state):
        """:func:`acting_state` where the acting function still traces on it, else whole."""
        slim = acting_state(self.algo, train_state)
        probe = np.zeros((1, self.spec.n_agents, self.spec.obs_dim), np.float32)
        state = self.init_state(1) if self.recurrent else None
        try:
            for deterministic in (True, False):
                jax.eval_shape(lambda p: self.apply(p, probe, state, key=jax.random.PRNGKey(0),
                                                    deterministic=deterministic), slim)
        except (AttributeError, TypeError, KeyError, ValueError, IndexError):
            return train_state  # an algorithm acting on more than the known fields
        return slim

    def init_state(self, batch: int = 1) -> PolicyState:
        """Zero hidden states [batch, N, H] of a recurrent policy, every env starting."""
        if not self.recurrent:
            raise PolicyInputError(f"{self.meta['algo']} on {self.meta['env_id']} is "
                                   "feed-forward: act(obs) takes no state")
        shape = (batch, self.spec.n_agents, self.meta["hidden_size"])
        if self.backend == "numpy":
            return PolicyState(np.zeros(shape, np.float32), np.ones((batch,), bool))
        return PolicyState(jnp.zeros(shape, jnp.float32), jnp.ones((batch,), bool))

    def apply(self, params, obs, state=None, *, key=None, deterministic: bool = True,
              avail=None):
        """The acting function as a pure function of ``params`` (traceable; see the class
        doc). Returns actions, or ``(actions, state)`` for recurrent policies."""
        from teamrl.core.rollout import Memory
        from teamrl.envs.spec import TeamObs

        team_obs = obs if isinstance(obs, TeamObs) else None
        obs, avail = team_inputs(self.meta, obs, avail, jnp)
        if key is None:
            if not deterministic:
                raise PolicyInputError("deterministic=False needs key=jax.random.key(...)")
            key = jax.random.PRNGKey(0)  # unused by greedy actions
        single = self.recurrent and obs.ndim == 2
        if single:
            obs, avail = obs[None], avail[None]
        lead = obs.shape[:-2]
        if team_obs is not None and team_obs.state.shape[:-1] == lead:
            world, alive = team_obs.state, team_obs.alive
        else:  # actors read obs and avail only; the rest of a TeamObs as the env's shapes
            world = jnp.zeros(lead + (self.spec.state_dim,), jnp.float32)
            alive = jnp.ones(lead + (self.spec.n_agents,), bool)
        team = TeamObs(obs, world, avail, alive)
        if not self.recurrent:
            if state is not None:
                raise PolicyInputError("this policy is feed-forward: act(obs) takes no state")
            return self.algo.policy_action(params, team, key, deterministic)
        if obs.ndim != 3:
            raise PolicyInputError(f"obs has shape {tuple(obs.shape)}; a recurrent policy "
                                   "takes [N, D] or [B, N, D]")
        _check_state(state, obs.shape[0])
        memory = Memory(state.hidden, (), state.start)
        action, memory = self.algo.recurrent_policy_action(params, team, key, deterministic,
                                                           memory)
        action = action[0] if single else action
        return action, PolicyState(memory.actor, jnp.zeros_like(state.start))

    def act(self, obs, state=None, *, deterministic: bool = True, key=None, avail=None):
        """Actions for ``obs`` (see the class doc)."""
        if self._numpy is not None:
            return self._act_numpy(obs, state, deterministic, key, avail)
        return self._jitted(self.params, obs, state, key=key, deterministic=deterministic,
                            avail=avail)

    # --------------------------------------------------------------------- NumPy
    def _numpy_policy(self):
        """host_policy's NumpyPolicy and its weights, or a PolicyError naming the network."""
        from teamrl.algos.common import OnPolicyActorCritic
        from teamrl.train.host_policy import numpy_policy

        inner = getattr(self.algo, "algo", self.algo)
        policy = numpy_policy(self.algo)
        if policy is None or type(inner).policy_action is not OnPolicyActorCritic.policy_action:
            if self.recurrent:
                what = "a GRU actor (recurrent=true)"
            elif hasattr(inner, "networks"):  # the value-based learners (IQL and kin)
                what = ("a deterministic actor trained through Q-networks" if "actor" in
                        inner.networks() else "Q-networks (greedy over Q-values)")
            else:
                what = "an actor the NumPy forward pass does not mirror"
            raise PolicyError(f"NumPy acting (backend='numpy', .npz export) covers "
                              f"feed-forward actor-critic actors (MLP logits, MLP mean + log "
                              f"std: ippo, mappo, happo, ...); {self.meta['algo']} on "
                              f"{self.meta['env_id']} acts with {what}; use backend='jax' or "
                              "export to .jaxexport")
        params = policy.host_params(jax.tree.map(lambda x: np.asarray(x)[None], self.params))
        return policy, params

    def _act_numpy(self, obs, state, deterministic, key, avail):
        if state is not None:
            raise PolicyInputError("this policy is feed-forward: act(obs) takes no state")
        policy, params = self._numpy
        obs, avail = team_inputs(self.meta, obs, avail, np)
        lead, (n, a) = obs.shape[:-2], avail.shape[-2:]
        obs = obs.reshape((1, -1) + obs.shape[-2:])  # [S = 1, E, N, D]
        avail = avail.reshape((1, -1, n, a))
        if deterministic:  # zero noise: the argmax of the logits, the Gaussian mean
            noise = np.zeros(avail.shape, np.float32)
        else:
            if key is None:
                raise PolicyInputError("deterministic=False needs key=numpy.random."
                                       "default_rng(...) or an int seed")
            rng = key if isinstance(key, np.random.Generator) else np.random.default_rng(key)
            noise = (rng.gumbel(size=avail.shape) if self.spec.discrete
                     else rng.standard_normal(avail.shape)).astype(np.float32)
        action, _ = policy.act(params, obs, avail, noise)
        return action.reshape(lead + action.shape[2:])

    def numpy_weights(self) -> dict:
        """One seed's NumPy weights in the ``.npz`` layout :mod:`teamrl.exported` reads
        (host_policy's layout without the seed axis), ``meta`` included as a JSON string."""
        policy, params = self._numpy or self._numpy_policy()
        arrays = {}
        if params["input_norm"] is not None:
            arrays["input_norm_scale"], arrays["input_norm_bias"] = (
                x[0] for x in params["input_norm"])
        for i, (kernel, bias, norm) in enumerate(params["layers"]):
            arrays[f"kernel_{i}"], arrays[f"bias_{i}"] = kernel[0], bias[0]
            if norm is not None:
                arrays[f"norm_scale_{i}"], arrays[f"norm_bias_{i}"] = norm[0][0], norm[1][0]
        if "log_std" in params:
            arrays["log_std"] = params["log_std"][0]
        obs_norm = policy.obs_norm is not None
        if obs_norm:
            arrays["obs_mean"], arrays["obs_std"] = params["obs_mean"][0], params["obs_std"][0]
            arrays["raw_mask"] = params["raw_mask"]
        net = policy.actor.net
        meta = {**self.meta, "activation": net.activation, "shared": bool(policy.shared),
                "hidden_layers": policy.hidden, "obs_norm": obs_norm,
                "obs_clip": float(policy.obs_norm.clip) if obs_norm else None}
        return {**{k: np.asarray(v) for k, v in arrays.items()}, "meta": np.array(json.dumps(meta))}

    # ---------------------------------------------------------------------- export
    def exported_functions(self) -> dict:
        """{"deterministic", "stochastic": jax.export.Exported} of the acting function with
        the parameters baked in, for any batch size b: (obs [b, N, D] float32, avail
        [b, N, A] bool, key uint32[2]) -> actions; recurrent policies take (obs, avail,
        hidden [b, N, H], start [b] bool, key) -> (actions, hidden)."""
        from jax import export

        b, = export.symbolic_shape("b")
        spec, params = self.spec, self.params
        n, d, a = spec.n_agents, spec.obs_dim, spec.action_dim
        args = [jax.ShapeDtypeStruct((b, n, d), jnp.float32),
                jax.ShapeDtypeStruct((b, n, a), jnp.bool_)]
        if self.recurrent:
            args += [jax.ShapeDtypeStruct((b, n, self.meta["hidden_size"]), jnp.float32),
                     jax.ShapeDtypeStruct((b,), jnp.bool_)]
        args.append(jax.ShapeDtypeStruct((2,), jnp.uint32))
        functions = {}
        for deterministic in (True, False):
            if self.recurrent:
                def fn(obs, avail, hidden, start, key, deterministic=deterministic):
                    action, state = self.apply(params, obs, PolicyState(hidden, start),
                                               key=key, deterministic=deterministic,
                                               avail=avail)
                    return action, state.hidden
            else:
                def fn(obs, avail, key, deterministic=deterministic):
                    return self.apply(params, obs, key=key, deterministic=deterministic,
                                      avail=avail)
            name = "deterministic" if deterministic else "stochastic"
            functions[name] = export.export(jax.jit(fn))(*args)
        return functions


def export_policy(run_dir, out, checkpoint: str = "best", seed: int | None = None,
                  overwrite: bool = False) -> dict:
    """Write the policy of ``run_dir`` to ``out``: ``.jaxexport`` (jax.export functions, any
    algorithm) or ``.npz`` (NumPy weights, feed-forward actor-critics). Nothing is replaced
    without ``overwrite``; the file appears whole or not at all. Returns a summary dict."""
    out = pathlib.Path(out)
    suffix = out.suffix.lower()
    if suffix not in EXTENSIONS:
        raise PolicyError(f"out={str(out)!r} has extension {suffix or '(none)'!r}; valid: "
                          f"{', '.join(EXTENSIONS)}")
    if out.is_dir():
        raise PolicyError(f"out={str(out)!r} is a folder; give a file ending in "
                          f"{' or '.join(EXTENSIONS)}")
    if out.exists() and not overwrite:
        raise PolicyError(f"out={str(out)!r} exists; pass overwrite=true to replace it")
    if not out.parent.is_dir():
        raise PolicyError(f"out={str(out)!r}: folder {str(out.parent)!r} does not exist")
    if suffix == ".jaxexport":
        try:
            import flatbuffers  # noqa: F401  (jax.export serialises with it)
        except ImportError:
            raise PolicyError(f"out={str(out)!r}: writing .jaxexport needs the flatbuffers "
                              "package: pip install flatbuffers (or 'teamrl[export]'); or "
                              "export NumPy weights to .npz") from None
    policy = load_policy(run_dir, checkpoint, seed, backend="numpy" if suffix == ".npz"
                         else "jax")
    handle, tmp = tempfile.mkstemp(suffix=suffix, dir=out.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            if suffix == ".npz":
                np.savez(file, **policy.numpy_weights())
            else:
                import zipfile

                with zipfile.ZipFile(file, "w", zipfile.ZIP_DEFLATED) as archive:
                    archive.writestr("meta.json", json.dumps(policy.meta, indent=1))
                    for name, function in policy.exported_functions().items():
                        archive.writestr(f"{name}.bin", bytes(function.serialize()))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal rights
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"file": str(out), "bytes": out.stat().st_size, **{
        k: policy.meta[k] for k in ("algo", "env_id", "checkpoint", "env_steps", "seed",
                                    "recurrent")}}
