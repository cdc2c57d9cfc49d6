"""Exported policies (``teamrl export``) loaded without the run folder or the rest of teamrl.

Two artefacts, written by :func:`teamrl.train.policy.export_policy`:

* ``.jaxexport``: a zip of ``meta.json`` and two ``jax.export`` serialisations (``deterministic``
  and ``stochastic``) of the trained acting function with its parameters baked in, for any
  batch size. Needs JAX (and the ``flatbuffers`` package jax.export serialises with), not
  flax, not teamrl's algorithms or environments. Covers every algorithm, recurrent ones too.
* ``.npz``: the NumPy weights the host runner acts with (``teamrl.train.host_policy``'s
  layout, one seed) plus ``meta`` (a JSON string); acting needs NumPy only. Covers feed-forward
  actor-critic actors (MLP logits, MLP mean + log std), the networks ``host_policy`` covers.

This module imports nothing of teamrl and NumPy only at import time (JAX where a
``.jaxexport`` is loaded), so that a deployed policy loads fast and on its own.

Observations are the env's team layout: ``obs [..., N, D]`` float32 as the team adapter gives
it (``TeamObs.obs``: zero-padded to the widest agent, the one-hot agent id last when the run
used ids; the ids are appended here when ``obs`` comes without them), ``avail [..., N, A]``
bool (default: every action each agent has). Actions: ``[..., N]`` int32 (discrete) or
``[..., N, A]`` float32 (continuous, the env's units; padded dimensions 0).
"""

from __future__ import annotations

import json
import pathlib
import zipfile
from typing import NamedTuple

import numpy as np

FORMAT = "teamrl-policy"
VERSION = 1
EXTENSIONS = (".jaxexport", ".npz")
_MASKED_LOGIT = -1e9  # teamrl.core.policies._MASKED_LOGIT
_LN_EPSILON = 1e-6  # flax.linen.LayerNorm's default


class PolicyInputError(ValueError):
    """Observations, masks or recurrent state that do not fit the policy (one line)."""


class PolicyState(NamedTuple):
    """What a recurrent policy carries from one step of B envs to the next.

    hidden: [B, N, H] the actors' GRU hidden states.
    start:  [B] bool, the next observation starts an episode (the hidden state is zeroed
            before it is used); :meth:`reset` sets it where episodes ended.
    """

    hidden: object
    start: object

    def reset(self, done) -> "PolicyState":
        """The state with ``start`` set where ``done`` [B] (an episode ended in that env)."""
        return self._replace(start=self.start | done)


def team_inputs(meta: dict, obs, avail, xp=np):
    """(obs [..., N, D] float32, avail [..., N, A] bool) from what a user hands in.

    ``obs`` is an array [..., N, D] or [..., N, D - N] (agent ids left out; appended here), or
    anything with ``.obs`` and ``.avail`` (a ``TeamObs``, whose avail is used when ``avail`` is
    None). ``xp``: numpy or jax.numpy (the latter under jit: shapes are static)."""
    if avail is None and hasattr(obs, "obs") and hasattr(obs, "avail"):
        obs, avail = obs.obs, obs.avail
    elif hasattr(obs, "obs"):
        obs = obs.obs
    obs = xp.asarray(obs, dtype=xp.float32)
    n, d, a = meta["n_agents"], meta["obs_dim"], meta["action_dim"]
    ids = n if meta["agent_id"] else 0
    if obs.ndim < 2 or obs.shape[-2] != n or obs.shape[-1] not in {d, d - ids}:
        widths = f"{d} or {d - ids} (without the agent ids)" if ids else f"{d}"
        raise PolicyInputError(f"obs has shape {tuple(obs.shape)}; expected [..., {n}, D] "
                               f"(agents x observation width) with D = {widths}")
    if obs.shape[-1] != d:  # the one-hot agent ids the team adapter appends
        eye = xp.broadcast_to(xp.eye(n, dtype=xp.float32), obs.shape[:-1] + (n,))
        obs = xp.concatenate([obs, eye], axis=-1)
    mask = np.asarray(meta["action_mask"], bool)
    if avail is None:
        avail = xp.broadcast_to(xp.asarray(mask), obs.shape[:-1] + (a,))
    else:
        avail = xp.asarray(avail).astype(bool)
        if avail.shape != obs.shape[:-1] + (a,):
            raise PolicyInputError(f"avail has shape {tuple(avail.shape)}; expected "
                                   f"{tuple(obs.shape[:-1]) + (a,)} (obs's leading axes, "
                                   "agents, actions)")
        avail = avail & xp.asarray(mask)  # padded actions never exist
    return obs, avail


def load_exported(path) -> "JaxExportedPolicy | NumpyExportedPolicy":
    """The policy saved by ``teamrl export`` at ``path`` (``.jaxexport`` or ``.npz``).

    Both kinds act with ``act(obs, state=None, *, deterministic=True, key=None,
    avail=None)``: the JAX one takes a ``jax.random`` key for ``deterministic=False``, the
    NumPy one a ``numpy.random.Generator`` or an int seed. Raises ValueError (one line) for a
    missing file, an unknown extension or a file that is not a teamrl policy."""
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise ValueError(f"{str(path)!r} has extension {suffix or '(none)'!r}; valid: "
                         f"{', '.join(EXTENSIONS)}")
    if not path.is_file():
        raise ValueError(f"{str(path)!r} does not exist")
    if suffix == ".npz":
        return NumpyExportedPolicy.load(path)
    return JaxExportedPolicy.load(path)


def _check_meta(meta, path) -> dict:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a teamrl policy (no {FORMAT!r} metadata)")
    if meta.get("version", 0) > VERSION:
        raise ValueError(f"{str(path)!r} is policy format version {meta['version']}; this "
                         f"teamrl reads versions up to {VERSION}: upgrade teamrl")
    return meta


class _Exported:
    meta: dict

    @property
    def n_agents(self) -> int:
        return self.meta["n_agents"]

    @property
    def recurrent(self) -> bool:
        return bool(self.meta.get("recurrent"))

    def __repr__(self) -> str:
        m = self.meta
        return (f"{type(self).__name__}({m['algo']} on {m['env_id']}, {m['checkpoint']} "
                f"checkpoint at {m['env_steps']} env steps, seed {m['seed']})")


class JaxExportedPolicy(_Exported):
    """A ``.jaxexport`` policy: the trained acting functions as ``jax.export`` artefacts."""

    def __init__(self, meta: dict, functions: dict):
        self.meta, self.functions = meta, functions  # {"deterministic"|"stochastic": Exported}

    @classmethod
    def load(cls, path: pathlib.Path) -> "JaxExportedPolicy":
        try:
            with zipfile.ZipFile(path) as archive:
                meta = _check_meta(json.loads(archive.read("meta.json")), path)
                blobs = {name: archive.read(f"{name}.bin")
                         for name in ("deterministic", "stochastic")}
        except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as err:
            raise ValueError(f"{str(path)!r} is not a teamrl .jaxexport policy ({err})") from None
        from jax import export

        try:
            functions = {name: export.deserialize(bytearray(blob)) for name, blob in blobs.items()}
        except ImportError as err:  # jax.export serialises with flatbuffers
            raise ValueError(f"loading {str(path)!r} needs the flatbuffers package: pip install "
                             f"flatbuffers ({err})") from None
        return cls(meta, functions)

    def init_state(self, batch: int = 1) -> PolicyState:
        """Zero hidden states [batch, N, H] of a recurrent policy, every env starting."""
        import jax.numpy as jnp

        if not self.recurrent:
            raise PolicyInputError(f"{self.meta['algo']} on {self.meta['env_id']} is "
                                   "feed-forward: act(obs) takes no state")
        return PolicyState(jnp.zeros((batch, self.n_agents, self.meta["hidden_size"])),
                           jnp.ones((batch,), bool))

    def act(self, obs, state=None, *, deterministic: bool = True, key=None, avail=None):
        """obs [..., N, D] (or a TeamObs), avail [..., N, A] -> actions [..., N] (int32) or
        [..., N, A]; recurrent policies take ``state`` (:meth:`init_state`) and return
        ``(actions, state)``. ``key``: a jax.random key, needed when not deterministic."""
        import jax
        import jax.numpy as jnp

        obs, avail = team_inputs(self.meta, obs, avail, jnp)
        if key is None:
            if not deterministic:
                raise PolicyInputError("deterministic=False needs key=jax.random.key(...)")
            key = jax.random.PRNGKey(0)
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.key_data(key)
        single = obs.ndim == 2
        if single:
            obs, avail = obs[None], avail[None]
        elif obs.ndim != 3:
            raise PolicyInputError(f"obs has shape {tuple(obs.shape)}; expected [N, D] or "
                                   "[B, N, D]")
        function = self.functions["deterministic" if deterministic else "stochastic"]
        if not self.recurrent:
            if state is not None:
                raise PolicyInputError("this policy is feed-forward: act(obs) takes no state")
            action = function.call(obs, avail, key)
            return action[0] if single else action
        _check_state(state, obs.shape[0])
        action, hidden = function.call(obs, avail, state.hidden, state.start, key)
        state = PolicyState(hidden, jnp.zeros_like(state.start))
        return (action[0] if single else action), state


def _check_state(state, batch: int) -> None:
    if not isinstance(state, PolicyState):
        raise PolicyInputError("a recurrent policy needs act(obs, state) with state = "
                               "policy.init_state(batch)")
    if state.hidden.shape[0] != batch:
        raise PolicyInputError(f"state is for {state.hidden.shape[0]} envs but obs holds "
                               f"{batch}; use policy.init_state({batch})")


# ------------------------------------------------------------------- NumPy weights (.npz)
def _activation(name: str):
    # flax.linen's: gelu with its default tanh approximation.
    return {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0),
            "gelu": lambda x: 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi)
                                                       * (x + 0.044715 * x**3))),
            "silu": lambda x: x / (1.0 + np.exp(-x))}[name]


def _layer_norm(x, scale, bias):
    """flax LayerNorm over the last axis (variance as E[x²] − E[x]², as flax computes it)."""
    mean = x.mean(-1, keepdims=True)
    var = np.maximum((x * x).mean(-1, keepdims=True) - mean * mean, 0.0)
    return (x - mean) / np.sqrt(var + _LN_EPSILON) * scale + bias


class NumpyExportedPolicy(_Exported):
    """A ``.npz`` policy: the forward pass of ``teamrl.train.host_policy.NumpyPolicy`` over
    one seed's weights, in NumPy alone (repeated here so that loading needs nothing but
    NumPy; tests/test_policy_api.py holds the two and the JAX policy to the same actions)."""

    def __init__(self, meta: dict, arrays: dict):
        self.meta, self.arrays = meta, arrays
        self._act = _activation(meta["activation"])

    @classmethod
    def load(cls, path: pathlib.Path) -> "NumpyExportedPolicy":
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            meta = _check_meta(json.loads(str(arrays.pop("meta"))), path)
        except (ValueError, KeyError, OSError, zipfile.BadZipFile) as err:
            if "is not a teamrl policy" in str(err) or "format version" in str(err):
                raise
            raise ValueError(f"{str(path)!r} is not a teamrl .npz policy ({err})") from None
        return cls(meta, arrays)

    def init_state(self, batch: int = 1):
        raise PolicyInputError(f"{self.meta['algo']} on {self.meta['env_id']} is "
                               "feed-forward: act(obs) takes no state")

    def act(self, obs, state=None, *, deterministic: bool = True, key=None, avail=None):
        """obs [..., N, D] (or a TeamObs), avail [..., N, A] -> actions [..., N] int32 or
        [..., N, A] float32. ``key``: a numpy Generator or int seed, needed when not
        deterministic (samples have the policy's distribution; they are not the JAX
        policy's draws)."""
        if state is not None:
            raise PolicyInputError("this policy is feed-forward: act(obs) takes no state")
        obs, avail = team_inputs(self.meta, obs, avail, np)
        lead = obs.shape[:-2]
        obs = obs.reshape((-1,) + obs.shape[-2:])
        avail = avail.reshape((-1,) + avail.shape[-2:])
        out = self.forward(obs)
        noise = 0.0
        if not deterministic:
            if key is None:
                raise PolicyInputError("deterministic=False needs key=numpy.random."
                                       "default_rng(...) or an int seed")
            rng = key if isinstance(key, np.random.Generator) else np.random.default_rng(key)
            noise = (rng.gumbel(size=out.shape) if self.meta["discrete"]
                     else rng.standard_normal(out.shape))
        if self.meta["discrete"]:
            action = np.argmax(np.where(avail, out, -np.inf) + noise, axis=-1).astype(np.int32)
        else:
            std = np.exp(self.arrays["log_std"])
            action = np.where(avail, out + std * noise, 0.0).astype(np.float32)
        return action.reshape(lead + action.shape[1:])

    def forward(self, obs: np.ndarray) -> np.ndarray:
        """obs [B, N, D] -> logits or Gaussian means [B, N, A] (host_policy's ``_mlp``)."""
        a, meta = self.arrays, self.meta
        if meta["obs_norm"]:
            scaled = np.clip((obs - a["obs_mean"]) / a["obs_std"], -meta["obs_clip"],
                             meta["obs_clip"])
            obs = np.where(a["raw_mask"], scaled, obs)
        B, N, D = obs.shape
        # Shared parameters see [B·N, D] rows, stacked ones [N, B, D] (kernels [N, in, out]).
        x = obs.reshape(B * N, D) if meta["shared"] else obs.transpose(1, 0, 2)
        if "input_norm_scale" in a:
            x = _layer_norm(x, a["input_norm_scale"], a["input_norm_bias"])
        for i in range(meta["hidden_layers"] + 1):
            x = np.matmul(x, a[f"kernel_{i}"]) + a[f"bias_{i}"]
            if i < meta["hidden_layers"]:
                x = self._act(x)
                if f"norm_scale_{i}" in a:
                    x = _layer_norm(x, a[f"norm_scale_{i}"], a[f"norm_bias_{i}"])
        return x.reshape(B, N, -1) if meta["shared"] else x.transpose(1, 0, 2)
