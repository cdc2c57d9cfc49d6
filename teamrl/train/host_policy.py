"""The host runner's per-step action call in NumPy, for feed-forward on-policy actors.

Host-stepped envs (MaMuJoCo, Gymnasium, PettingZoo) need one action call per env step. For
the small batches involved (tens of envs x a few agents) a jitted XLA call costs 0.5-2.5 ms
per step, almost all of it fixed dispatch and thread wake-up cost rather than arithmetic, in
series with the env stepping. The same forward pass in NumPy on the calling thread takes
about 0.1-0.2 ms. :class:`NumpyPolicy` is that forward pass: it mirrors
``teamrl.core.nets.MLP`` / ``GaussianHead`` (Dense, activation, LayerNorm as flax computes them)
and the sampling of ``teamrl.core.policies.DiagGaussian`` / ``MaskedCategorical``, with the random
draws made by JAX once per rollout from exactly the keys the jitted call would use
(``fold_in(key, t)`` per step), so both give the same actions up to float rounding
(``tests/test_host_policy.py`` checks it for every network option). Anything it does not
cover (recurrent actors, Q-learners) keeps the jitted call: :func:`numpy_policy` returns
None for those.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from teamrl.core.policies import _MASKED_LOGIT, soft_clip

_LN_EPSILON = 1e-6  # flax.linen.LayerNorm's default


def _gelu(x):  # flax.linen.gelu's default (tanh approximation)
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _silu(x):
    return x / (1.0 + np.exp(-x))


# In place where NumPy allows (x is always a fresh intermediate here).
_ACTIVATIONS = {"tanh": lambda x: np.tanh(x, out=x), "relu": lambda x: np.maximum(x, 0.0, out=x),
                "gelu": _gelu, "silu": _silu}


def _layer_norm(x, scale, bias):
    """flax LayerNorm over the last axis (fast variance E[x²] − E[x]², as flax computes it);
    scale and bias [..., 1, D] broadcast over rows. Reductions through ``np.add.reduce``:
    ``ndarray.mean``'s Python wrapper costs more than the arithmetic at these sizes."""
    inv_d = 1.0 / x.shape[-1]
    mean = np.add.reduce(x, axis=-1, keepdims=True) * inv_d
    var = np.add.reduce(x * x, axis=-1, keepdims=True) * inv_d - mean * mean
    np.maximum(var, 0.0, out=var)
    var += _LN_EPSILON
    y = x - mean
    y /= np.sqrt(var, out=var)
    y *= scale
    y += bias
    return y


def numpy_policy(algo) -> "NumpyPolicy | None":
    """A NumpyPolicy for ``algo`` (possibly wrapped by ``ObsNormalised``), or None where the
    algorithm acts otherwise than by sampling its feed-forward actor."""
    from teamrl.algos.common import OnPolicyActorCritic
    from teamrl.algos.obs_norm import ObsNormalised

    inner = algo.algo if isinstance(algo, ObsNormalised) else algo
    if not isinstance(inner, OnPolicyActorCritic) or type(inner).act is not \
            OnPolicyActorCritic.act or inner.actor.recurrent or \
            inner.actor.net.activation not in _ACTIVATIONS:  # (one added to nets only)
        return None
    return NumpyPolicy(inner.actor, obs_norm=algo if isinstance(algo, ObsNormalised) else None)


class NumpyPolicy:
    """Samples a feed-forward actor in NumPy, vectorised over seeds, envs and agents.

    Use per rollout: ``params = policy.host_params(train_state)`` and ``noise =
    policy.noise(keys, T, E)``; then per step ``policy.act(params, obs, avail, noise[t])``.
    """

    def __init__(self, actor, obs_norm=None):
        self.actor, self.obs_norm = actor, obs_norm
        net = actor.net
        self.discrete = actor.spec.discrete
        self.shared = actor.shared
        self.activation = _ACTIVATIONS[net.activation]
        self.hidden = len(net.hidden_sizes)
        self.layer_norm, self.input_norm = net.layer_norm, net.input_norm
        self.log_std_range = (net.log_std_min, net.log_std_max)
        self._noise = {}  # (T, E) -> jitted draw

    def host_params(self, train_state) -> dict:
        """The actor parameters (and observation statistics) of ``train_state`` ([S]-batched)
        as NumPy arrays laid out for :meth:`act`: per layer (kernel [S, (N,) in, out], bias
        [S, (N,) 1, out], LayerNorm (scale, bias) [S, (N,) 1, width] or None); the row axis
        of vectors is -2, where :meth:`_mlp` keeps its rows."""
        inner = train_state.inner if self.obs_norm else train_state
        tree = {"actor": inner.actor_params["params"]}
        if self.obs_norm:
            tree["obs_mean"], tree["obs_std"] = train_state.obs.mean, train_state.obs.std
        tree = jax.device_get(tree)
        net = tree["actor"] if self.discrete else tree["actor"]["MLP_0"]
        row = lambda v: v[..., None, :]  # noqa: E731
        norms = iter((row(net[f"LayerNorm_{i}"]["scale"]), row(net[f"LayerNorm_{i}"]["bias"]))
                     for i in range(self.hidden * self.layer_norm + self.input_norm))
        params = {"input_norm": next(norms) if self.input_norm else None, "layers": []}
        for i in range(self.hidden + 1):
            dense = net[f"Dense_{i}"]
            norm = next(norms) if self.layer_norm and i < self.hidden else None
            params["layers"].append((dense["kernel"], row(dense["bias"]), norm))
        if not self.discrete:  # [S, (N,) A] -> [S, 1, (1 or N), A], broadcast over envs
            log_std = soft_clip(tree["actor"]["log_std"], *self.log_std_range, xp=np)
            params["log_std"] = log_std[:, None, None] if self.shared else log_std[:, None]
        if self.obs_norm:  # [S, N, D] -> [S, 1, N, D]
            params["obs_mean"] = tree["obs_mean"][:, None]
            params["obs_std"] = tree["obs_std"][:, None]
            params["raw_mask"] = np.asarray(self.obs_norm.raw_mask)
        return params

    def noise(self, keys: jax.Array, length: int, num_envs: int) -> np.ndarray:
        """[T, S, E, N, A] standard draws for T steps of E envs per seed: normal (Gaussian
        actors) or Gumbel (categorical), from ``fold_in(keys[s], t)`` with the shapes the
        jitted sampler draws. keys: [S] (one per seed)."""
        shape = (length, num_envs)
        if shape not in self._noise:
            spec = self.actor.spec
            draw = jax.random.gumbel if self.discrete else jax.random.normal

            def step(t, key):
                return draw(jax.random.fold_in(key, t),
                            (num_envs, spec.n_agents, spec.action_dim), jnp.float32)

            self._noise[shape] = jax.jit(lambda keys: jax.vmap(
                lambda t: jax.vmap(lambda k: step(t, k))(keys))(jnp.arange(length)))
        return np.asarray(self._noise[shape](keys))

    def act(self, params: dict, obs: np.ndarray, avail: np.ndarray, noise: np.ndarray):
        """obs [S, E, N, D], avail [S, E, N, A] bool, noise [S, E, N, A] -> (action [S, E, N]
        int32 or [S, E, N, A] float32, log_prob [S, E, N] float32)."""
        if self.obs_norm:
            scaled = np.clip((obs - params["obs_mean"]) / params["obs_std"],
                             -self.obs_norm.clip, self.obs_norm.clip)
            obs = np.where(params["raw_mask"], scaled, obs)
        out = self._mlp(params, obs)
        if self.discrete:
            action = np.argmax(np.where(avail, out, -np.inf) + noise, axis=-1).astype(np.int32)
            z = np.where(avail, out, _MASKED_LOGIT)
            z -= z.max(-1, keepdims=True)
            log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
            log_prob = np.take_along_axis(log_probs, action[..., None], -1)[..., 0]
            return action, log_prob.astype(np.float32)
        log_std = params["log_std"]
        action = np.where(avail, out + np.exp(log_std) * noise, 0.0).astype(np.float32)
        z = (action - out) * np.exp(-log_std)
        per_dim = -0.5 * z * z - log_std - 0.5 * math.log(2 * math.pi)
        return action, np.add.reduce(np.where(avail, per_dim, 0.0), axis=-1).astype(np.float32)

    def _mlp(self, params: dict, obs: np.ndarray) -> np.ndarray:
        """teamrl.core.nets.MLP on obs [S, E, N, D] -> [S, E, N, out] (the mean of a Gaussian
        actor, the logits of a categorical one). Shared parameters see [S, E·N, D] rows,
        stacked ones [S, N, E, D], so one batched matmul per layer covers every seed (and
        agent)."""
        S, E, N, D = obs.shape
        x = obs.reshape(S, E * N, D) if self.shared else obs.transpose(0, 2, 1, 3)
        if params["input_norm"] is not None:
            x = _layer_norm(x, *params["input_norm"])
        for i, (kernel, bias, norm) in enumerate(params["layers"]):
            x = np.matmul(x, kernel)
            x += bias
            if i < self.hidden:
                x = self.activation(x)
                if norm is not None:
                    x = _layer_norm(x, *norm)
        out = x.shape[-1]
        return x.reshape(S, E, N, out) if self.shared else x.transpose(0, 2, 1, 3)
