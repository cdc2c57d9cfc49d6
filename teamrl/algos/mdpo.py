"""MDPO (Luo, Jiang & Lu 2023, model-based decentralised policy optimisation), following
``MDPO.md`` (the specification; the paper's method section was not accessible, so every
[C] choice below is configurable and listed on docs/algorithms/mdpo.md).

Each agent i, fully on its own (parameters stacked on the N axis, applied with ``vmap``;
nothing is shared across agents), keeps a sliding window of its last l iterations' data
D^1..D^l and latent functions ψ_{ω_1..ω_l}(z|o), and learns

  ① a stationary dynamics model P_θ(o'|o,a_i,z) and reward model R_φ(o,a_i,z), with the
    newest latent function ψ_{ω_l}, on all of the window:
      L_① = Σ_j E_{D^j}[−log P_θ(o'|o,a_i,z_j) + (R_φ(o,a_i,z_j) − r)²],
      z_j = μ_{ω_j}(o) + σ_{ω_j}(o)·ε, ψ_{ω_{j<l}} frozen (stop_gradient);
  ② a latent prediction function f_ζ(z^l|z^1..z^{l−1}) on D^l (every ψ frozen):
      L_② = −E_{o~D^l}[log f_ζ(z^l | z^1, …, z^{l−1})];
  ③ branched rollouts of ``branch_length`` k steps from D^l's observations in its own model,
    with a ~ π_old, z ~ f_ζ(z^2..z^l) (the forecast of the next iteration's latent; ψ_{ω_l}
    with ``prediction=false``), ô' ~ P_θ, r̂ = R_φ, the latent recomputed at every step;
  ④ the base algorithm (``inner=ippo|dpo``) on the imagined batch, with its own GAE along
    each branch (bootstrapped with V_i at the branch end) and its own clipped surrogate /
    KL penalties, unchanged (``teamrl.algos.common``, ``teamrl.algos.dpo``).

Then the window shifts: D^j ← D^{j+1}, ψ_{ω_j} ← ψ_{ω_{j+1}} for j < l, ψ_{ω_l} kept (warm
start); the next rollout overwrites D^l. The window, models, latent functions and their
optimiser states live in ``TrainState.algo_state`` (checkpointed, resumed). The step counter
counts real environment steps only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from teamrl.core.advantages import RunningNorm
from teamrl.algos.common import (AgentOptimizer, OnPolicyActorCritic, PPOConfig,
                                 random_permutation)
from teamrl.algos.dpo import DPO, DPOConfig
from teamrl.algos.ippo import IPPO, IPPOConfig
from teamrl.config import ConfigError, option
from teamrl.envs.spec import TeamObs
from teamrl.core.nets import MLP
from teamrl.core.policies import soft_clip
from teamrl.core.rollout import Batch

INNER = {"ippo": (IPPO, IPPOConfig), "dpo": (DPO, DPOConfig)}
INNER_EPOCHS = {"ippo": 5, "dpo": 15}  # the base algorithms' own defaults
STD_FLOOR, INPUT_CLIP = 1e-3, 10.0  # model input normalisation


@dataclass
class MDPOConfig(DPOConfig, PPOConfig):
    """MDPO: models and latent functions per agent (MDPO.md §2, §8), branched rollouts, and
    the inner algorithm's settings (IPPO's ``clip_eps``, DPO's KL coefficients)."""

    inner: str = option("ippo", "policy optimiser run on the imagined batch (step 4)",
                        choices=["ippo", "dpo"])
    epochs: int = option(0, "passes over each (imagined) batch (0: the inner algorithm's "
                         "default, 5 for ippo, 15 for dpo)", low=0)
    prediction: bool = option(True, "forecast the next latent with f_zeta (false: the "
                              "ablation 'MDPO w/o prediction', z ~ psi_l)")
    window: int = option(3, "window length l: datasets and latent functions kept", low=1)
    latent_dim: int = option(8, "latent dimension d_z", low=1)
    branch_length: int = option(5, "steps k of each branched model rollout (0: no imagination; "
                                "needs real_ratio=1)", low=0)
    n_starts: int = option(0, "branch points drawn uniformly from D^l's observations "
                           "(0: all of D^l)", low=0)
    real_ratio: float = option(0.0, "share of D^l's k-step segments of real data added to the "
                               "imagined batch (an ablation; 0: imagined data only)",
                               low=0.0, high=1.0)
    dynamics: str = option("gaussian", "dynamics model likelihood: diagonal Gaussian over the "
                           "normalised change of observation, or categorical over one-hot "
                           "observation features (tabular games)",
                           choices=["gaussian", "categorical"])
    done_head: bool = option(True, "termination logit on the dynamics model, trained by BCE "
                             "on terminations; imagined branches stop where it fires")
    done_threshold: float = option(0.5, "termination probability above which an imagined "
                                   "step terminates", low=0.0, high=1.0)
    dynamics_hidden: list = option([256, 256, 256], "hidden widths of P_theta (SiLU)")
    reward_hidden: list = option([256, 256], "hidden widths of R_phi (SiLU)")
    psi_hidden: list = option([128, 128], "hidden widths of the latent functions psi (SiLU)")
    pred_hidden: list = option([128, 128], "hidden widths of the prediction function f (SiLU)")
    latent_log_std_min: float = option(-5.0, "soft lower bound of the log std of psi and f")
    latent_log_std_max: float = option(2.0, "soft upper bound of the log std of psi and f")
    model_log_std_min: float = option(-5.0, "soft lower bound of the dynamics log std "
                                      "(normalised units, PETS-style)")
    model_log_std_max: float = option(1.0, "soft upper bound of the dynamics log std")
    model_lr: float = option(1e-3, "Adam learning rate of the models, psi and f", low=0.0,
                             low_open=True)
    model_weight_decay: float = option(1e-5, "decoupled weight decay of the models, psi and f",
                                       low=0.0)
    model_grad_norm: float = option(10.0, "grad-norm clip of the models, psi and f (per "
                                    "agent)", low=0.0, low_open=True)
    model_epochs: int = option(5, "epochs of loss 1 over the window per iteration", low=1)
    model_epochs_first: int = option(50, "epochs of loss 1 in the first iteration", low=1)
    model_batch: int = option(256, "loss 1 minibatch size per window slot", low=1)
    pred_epochs: int = option(5, "epochs of loss 2 over D^l per iteration", low=1)
    pred_batch: int = option(256, "loss 2 minibatch size", low=1)
    pred_input: str = option("sample", "inputs of f: latent samples z^j ~ psi_j(o) (as the "
                             "slides) or the means mu_j(o)", choices=["sample", "mean"])
    warmup_real_iters: int = option(0, "first iterations whose policy update uses the real "
                                    "batch instead of imagination (e.g. window-1)", low=0)

    def check(self):
        super().check()
        if self.share_actor or self.central_critic:
            raise ConfigError("mdpo is fully decentralised: share_actor and central_critic "
                              "must be false")
        if self.prediction and self.window < 2:
            raise ConfigError(f"window={self.window} must be >= 2 with prediction=true (f needs "
                              "l-1 >= 1 past latents); or set prediction=false")
        if self.branch_length == 0 and self.real_ratio != 1.0:
            raise ConfigError("branch_length=0 leaves no imagined data: set real_ratio=1 (the "
                              "base algorithm on real data)")
        if self.latent_log_std_min >= self.latent_log_std_max:
            raise ConfigError("latent_log_std_min must be < latent_log_std_max")
        if self.model_log_std_min >= self.model_log_std_max:
            raise ConfigError("model_log_std_min must be < model_log_std_max")
        for name in ("dynamics_hidden", "reward_hidden", "psi_hidden", "pred_hidden"):
            sizes = getattr(self, name)
            if not sizes or not all(isinstance(w, int) and w > 0 for w in sizes):
                raise ConfigError(f"{name}={sizes!r} must be a non-empty list of positive ints")


class GaussianMLP(nn.Module):
    """SiLU MLP -> diagonal Gaussian (mean, soft-bounded log std): [..., in] -> 2 × [..., out]."""

    hidden_sizes: tuple
    out_dim: int
    log_std_min: float
    log_std_max: float
    out_gain: float = 1.0

    @nn.compact
    def __call__(self, x):
        out = MLP(self.hidden_sizes, 2 * self.out_dim, "silu", out_gain=self.out_gain)(x)
        mean, raw = jnp.split(out, 2, axis=-1)
        return mean, soft_clip(raw, self.log_std_min, self.log_std_max)


def gaussian_nll(x, mean, log_std):
    """Elementwise −log N(x; mean, exp(log_std)²) without the constant ½·log 2π."""
    return 0.5 * jnp.square((x - mean) * jnp.exp(-log_std)) + log_std


def masked_mean(x, mask):
    mask = mask.astype(x.dtype)
    return (x * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def shift_window(x: jax.Array) -> jax.Array:
    """Slot j <- slot j+1 for j < l; slot l keeps its value (axis 0 = window slot)."""
    return jnp.roll(x, -1, axis=0).at[-1].set(x[-1])


def nearest_divisor(total: int, target: int) -> int:
    """The divisor of ``total`` nearest to ``target`` (ties: the larger)."""
    divisors = [d for d in range(1, total + 1) if total % d == 0]
    return min(divisors, key=lambda d: (abs(d - target), -d))


@flax.struct.dataclass
class MDPOState:
    """MDPO's part of the train state (``TrainState.algo_state``).

    inner:     the inner algorithm's own algo_state (DPO's coefficients; () for IPPO).
    window:    D^1..D^l, each leaf [l, B, ...] (B = num_envs·rollout_length): obs, next_obs
               [l, B, N, D], action [l, B, N(, A)], reward, terminated [l, B], alive [l, B, N].
    psi:       ψ_{ω_1..ω_l} parameters [l, N, ...].
    model:     {"dynamics": θ, "reward": φ} [N, ...]; model_opt: the optimiser state of
               {"model": (θ, φ), "psi": ω_l} (what loss ① trains).
    pred:      ζ [N, ...]; pred_opt its optimiser state.
    obs_norm, delta_norm: running statistics [N, D] of observations and of o' − o.
    iteration: [] int32, updates done.
    """

    inner: Any
    window: dict
    psi: Any
    model: Any
    model_opt: Any
    pred: Any
    pred_opt: Any
    obs_norm: RunningNorm
    delta_norm: RunningNorm
    iteration: jax.Array


class MDPO(OnPolicyActorCritic):
    """MDPO around an inner IPPO or DPO (see module doc). ``check(spec, cfg, run)`` must run
    before construction (``teamrl.train.build`` does): it records the real batch size the
    window is allocated for."""

    config_class = MDPOConfig
    central_critic = False
    supports_recurrent = False

    @classmethod
    def check(cls, spec, cfg, run) -> None:
        super().check(spec, cfg, run)
        cfg._samples_per_update = run.num_envs * run.rollout_length
        if cfg.real_ratio > 0 and cfg.branch_length > 0 and run.rollout_length % cfg.branch_length:
            raise ConfigError(f"real_ratio>0 cuts the real rollout into k-step segments: "
                              f"branch_length={cfg.branch_length} must divide rollout_length="
                              f"{run.rollout_length}")
        if cfg.n_starts > cfg._samples_per_update:
            raise ConfigError(f"n_starts={cfg.n_starts} exceeds the real batch "
                              f"num_envs*rollout_length={cfg._samples_per_update}")

    def __init__(self, spec, cfg: MDPOConfig, net, total_updates: int):
        if not hasattr(cfg, "_samples_per_update"):
            raise ConfigError("MDPO.check(spec, cfg, run) must run before MDPO(...)")
        self.spec, self.cfg, self.net = spec, cfg, net
        self.recurrent = False
        self.samples = cfg._samples_per_update
        k = cfg.branch_length
        self.n_starts = cfg.n_starts or self.samples
        self.n_real = (round(cfg.real_ratio * self.samples / k) if k else 0)
        imagined = k * (self.n_starts + self.n_real)
        # Minibatch size as in the model-free setting (MDPO.md §5): more minibatches.
        mb_size = max(self.samples // cfg.minibatches, 1)
        inner_cls, inner_cfg_cls = INNER[cfg.inner]
        base = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(inner_cfg_cls)}
        base["epochs"] = cfg.epochs or INNER_EPOCHS[cfg.inner]
        self.real_inner = inner_cls(spec, inner_cfg_cls(**base), net, total_updates)
        if imagined:
            scaled = dict(base, minibatches=nearest_divisor(imagined, imagined // mb_size))
            self.inner = inner_cls(spec, inner_cfg_cls(**scaled), net, total_updates)
        else:
            self.inner = self.real_inner
        # Acting, values and the networks are the inner algorithm's.
        self.actor, self.critic = self.inner.actor, self.inner.critic
        self.actor_tx, self.critic_tx = self.inner.actor_tx, self.inner.critic_tx

        n, d = spec.n_agents, spec.obs_dim
        self.raw_mask = jnp.asarray(np.arange(d)[None, :] < np.asarray(spec.obs_dims)[:, None])
        self.act_dim = spec.action_dim
        dz = cfg.latent_dim
        categorical = cfg.dynamics == "categorical"
        dyn_out = (d if categorical else 2 * d) + 1  # + done logit
        self.dynamics_net = MLP(tuple(cfg.dynamics_hidden), dyn_out, "silu")
        self.reward_net = MLP(tuple(cfg.reward_hidden), 1, "silu")
        self.psi_net = GaussianMLP(tuple(cfg.psi_hidden), dz, cfg.latent_log_std_min,
                                   cfg.latent_log_std_max)
        # f starts near the identity: small output gain on the residual mean.
        self.pred_net = GaussianMLP(tuple(cfg.pred_hidden), dz, cfg.latent_log_std_min,
                                    cfg.latent_log_std_max, out_gain=0.01)
        tx = optax.chain(optax.clip_by_global_norm(cfg.model_grad_norm),
                         optax.adamw(cfg.model_lr, weight_decay=cfg.model_weight_decay))
        self.model_tx = AgentOptimizer(tx, stacked=True)
        self.n_agents = n

    # ------------------------------------------------------------------------- state
    def init_model_state(self, key, inner_state) -> MDPOState:
        cfg, spec = self.cfg, self.spec
        n, d, l, dz, b = spec.n_agents, spec.obs_dim, cfg.window, cfg.latent_dim, self.samples
        a_in = self.act_dim
        k_dyn, k_rew, k_psi, k_pred = jax.random.split(key, 4)
        x_in = jnp.zeros((1, d + a_in + dz))

        def stacked(module, key, x):
            return jax.vmap(lambda k: module.init(k, x))(jax.random.split(key, n))

        model = {"dynamics": stacked(self.dynamics_net, k_dyn, x_in),
                 "reward": stacked(self.reward_net, k_rew, x_in)}
        psi_one = stacked(self.psi_net, k_psi, jnp.zeros((1, d)))
        psi = jax.tree.map(lambda p: jnp.broadcast_to(p, (l,) + p.shape), psi_one)
        pred = stacked(self.pred_net, k_pred, jnp.zeros((1, max(l - 1, 1) * dz)))
        action_shape = (l, b, n) if spec.discrete else (l, b, n, a_in)
        window = {"obs": jnp.zeros((l, b, n, d)), "next_obs": jnp.zeros((l, b, n, d)),
                  "action": jnp.zeros(action_shape, jnp.int32 if spec.discrete else jnp.float32),
                  "reward": jnp.zeros((l, b)), "terminated": jnp.zeros((l, b), bool),
                  "alive": jnp.zeros((l, b, n), bool)}
        return MDPOState(inner_state, window, psi, model,
                         self.model_tx.init({"model": model, "psi": psi_one}), pred,
                         self.model_tx.init(pred),
                         RunningNorm.create((n, d)), RunningNorm.create((n, d)),
                         jnp.int32(0))

    def init(self, key):
        ac_key, model_key = jax.random.split(key)
        ts = self.inner.init(ac_key)
        ts = ts.replace(algo_state=self.init_model_state(model_key, ts.algo_state))
        # Strong dtypes throughout, so a jitted update's output state has the input's types.
        return jax.tree.map(lambda x: jnp.asarray(x, jnp.result_type(x)), ts)

    # ------------------------------------------------------- one agent's components
    @staticmethod
    def norm_stats(ms: MDPOState) -> dict:
        """The model normalisers as arrays [N, D] (vmappable per agent)."""
        floor = lambda std: jnp.maximum(std, STD_FLOOR)
        return {"obs_mean": ms.obs_norm.mean, "obs_std": floor(ms.obs_norm.std),
                "delta_mean": ms.delta_norm.mean, "delta_std": floor(ms.delta_norm.std)}

    @staticmethod
    def normalise_obs(obs, stats):
        """Model inputs: standardised and clipped to ±INPUT_CLIP (a feature never seen, e.g.
        a rare one-hot state, has std ~ 0)."""
        return jnp.clip((obs - stats["obs_mean"]) / stats["obs_std"], -INPUT_CLIP, INPUT_CLIP)

    def encode_action(self, action):
        """[...] int or [..., A] -> [..., A] float model input."""
        if self.spec.discrete:
            return jax.nn.one_hot(action, self.act_dim)
        return action.astype(jnp.float32)

    def latent_dist(self, psi, obs_in):
        """One agent's ψ: normalised obs [..., D] -> (mean, log std) [..., dz]."""
        return self.psi_net.apply(psi, obs_in)

    @staticmethod
    def sample(mean, log_std, key):
        return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)

    def model_outputs(self, model, obs_in, action_in, z):
        """One agent: (normalised obs, action encoding, latent) [M, ...] -> (dynamics head
        [M, out], done logit [M], reward [M])."""
        x = jnp.concatenate([obs_in, action_in, z], axis=-1)
        out = self.dynamics_net.apply(model["dynamics"], x)
        reward = self.reward_net.apply(model["reward"], x)[..., 0]
        return out[..., :-1], out[..., -1], reward

    def transition_nll(self, head, obs, next_obs, raw_mask, stats):
        """One agent's −log P_θ(o'|·) [M] on its real observation features only."""
        if self.cfg.dynamics == "categorical":
            logits = jnp.where(raw_mask, head, -1e9)
            target = jnp.argmax(jnp.where(raw_mask, next_obs, -1.0), axis=-1)
            return -jnp.take_along_axis(jax.nn.log_softmax(logits), target[..., None], -1)[..., 0]
        mean, raw = jnp.split(head, 2, axis=-1)
        log_std = soft_clip(raw, self.cfg.model_log_std_min, self.cfg.model_log_std_max)
        target = (next_obs - obs - stats["delta_mean"]) / stats["delta_std"]
        return jnp.sum(jnp.where(raw_mask, gaussian_nll(target, mean, log_std), 0.0), axis=-1)

    def next_observation(self, head, obs, raw_mask, stats, key):
        """One agent's sample ô' ~ P_θ [M, D]; padding and agent-id features copied from ô."""
        if self.cfg.dynamics == "categorical":
            logits = jnp.where(raw_mask, head, -1e9)
            idx = jax.random.categorical(key, logits)
            nxt = jax.nn.one_hot(idx, obs.shape[-1])
        else:
            mean, raw = jnp.split(head, 2, axis=-1)
            log_std = soft_clip(raw, self.cfg.model_log_std_min, self.cfg.model_log_std_max)
            delta = self.sample(mean, log_std, key) * stats["delta_std"] + stats["delta_mean"]
            nxt = obs + delta
        return jnp.where(raw_mask, nxt, obs)

    # ------------------------------------------------------------------- loss ①
    def model_loss(self, trainable, frozen_psi, data, key, slot_weight, stats, raw_mask):
        """One agent's L_① over the window: trainable = {"model": (θ, φ), "psi": ω_l};
        frozen_psi: ω_1..ω_{l−1} stacked [l−1, ...] (stop_gradient); data leaves [l, M, ...];
        slot_weight [l]; stats: this agent's normalisers (:meth:`norm_stats`), raw_mask [D].
        Returns (loss, per-slot metrics [l])."""
        cfg = self.cfg
        psi_all = jax.tree.map(
            lambda f, c: jnp.concatenate([jax.lax.stop_gradient(f), c[None]]),
            frozen_psi, trainable["psi"])
        obs_in = self.normalise_obs(data["obs"], stats)
        mean, log_std = jax.vmap(self.latent_dist)(psi_all, obs_in)  # [l, M, dz]
        z = self.sample(mean, log_std, key)
        head, done_logit, reward = self.model_outputs(
            trainable["model"], obs_in, self.encode_action(data["action"]), z)
        alive = data["alive"]
        nll = jax.vmap(masked_mean)(self.transition_nll(head, data["obs"], data["next_obs"],
                                                        raw_mask, stats), alive)
        reward_mse = jax.vmap(masked_mean)(jnp.square(reward - data["reward"]), alive)
        per_slot = nll + reward_mse
        metrics = {"nll": nll, "reward_mse": reward_mse}
        if cfg.done_head:
            bce = optax.sigmoid_binary_cross_entropy(done_logit,
                                                     data["terminated"].astype(jnp.float32))
            metrics["done_bce"] = jax.vmap(masked_mean)(bce, alive)
            per_slot = per_slot + metrics["done_bce"]
        return jnp.sum(slot_weight * per_slot), metrics

    # ------------------------------------------------------------------- loss ②
    def forecast(self, pred, past):
        """One agent's f_ζ: past latents [l−1, M, dz] -> (mean, log std) [M, dz], mean residual
        on the last input."""
        x = jnp.concatenate(list(past), axis=-1)
        mean, log_std = self.pred_net.apply(pred, x)
        return past[-1] + mean, log_std

    def window_latents(self, psi, obs_in, key):
        """One agent: ψ_1..ψ_l at the same obs [M, D] -> inputs [l, M, dz] (samples or means
        as ``pred_input``) and samples [l, M, dz]."""
        mean, log_std = jax.vmap(self.latent_dist, in_axes=(0, None))(psi, obs_in)
        z = self.sample(mean, log_std, key)
        return (mean if self.cfg.pred_input == "mean" else z), z, mean

    def pred_loss(self, pred, psi, obs, key, stats):
        """One agent's L_② on obs [M, D] of D^l; every ψ frozen. Returns (loss, metrics)."""
        psi = jax.lax.stop_gradient(psi)
        inputs, z, mean = self.window_latents(psi, self.normalise_obs(obs, stats), key)
        f_mean, f_log_std = self.forecast(pred, inputs[:-1])
        nll = jnp.sum(gaussian_nll(z[-1], f_mean, f_log_std), -1).mean()
        metrics = {"pred_nll": nll,
                   "forecast_error": jnp.linalg.norm(f_mean - mean[-1], axis=-1).mean(),
                   "latent_drift": jnp.linalg.norm(mean[-1] - mean[-2], axis=-1).mean()}
        return nll, metrics

    # ---------------------------------------------------------------- training loops
    def _agents_first(self, tree, axis):
        return jax.tree.map(lambda x: jnp.moveaxis(x, axis, 0), tree)

    def train_models(self, ms: MDPOState, key, first):
        """Loss ① for ``model_epochs`` (``model_epochs_first`` in the first iteration) epochs
        of minibatches drawn uniformly (with replacement) from each slot; returns (model, psi
        slot l, their optimiser states, metrics)."""
        cfg, l = self.cfg, self.cfg.window
        per_epoch = max(self.samples // cfg.model_batch, 1)
        steps = jnp.where(first, cfg.model_epochs_first, cfg.model_epochs) * per_epoch
        # The first iteration's window holds D^1 only (written into every slot after it).
        slot_weight = jnp.where(first, jnp.arange(l) == l - 1, True).astype(jnp.float32)
        stats = self.norm_stats(ms)

        def agent_loss(trainable, frozen, data, key, stats, mask):
            return self.model_loss(trainable, frozen, data, key, slot_weight, stats, mask)

        grad_fn = jax.vmap(jax.value_and_grad(agent_loss, has_aux=True))
        frozen = jax.tree.map(lambda p: jnp.moveaxis(p[:-1], 1, 0), ms.psi)  # [N, l-1, ...]

        def step(i, carry):
            trainable, opt, _ = carry
            step_key = jax.random.fold_in(key, i)
            idx_key, eps_key = jax.random.split(step_key)
            idx = jax.random.randint(idx_key, (l, cfg.model_batch), 0, self.samples)
            data = jax.tree.map(lambda x: jax.vmap(lambda xs, ix: xs[ix])(x, idx), ms.window)
            data["reward"] = jnp.broadcast_to(data["reward"][..., None], data["alive"].shape)
            data["terminated"] = jnp.broadcast_to(data["terminated"][..., None],
                                                  data["alive"].shape)
            data = self._agents_first(data, 2)  # [N, l, M, ...]
            keys = jax.random.split(eps_key, self.n_agents)
            (_, metrics), grads = grad_fn(trainable, frozen, data, keys, stats, self.raw_mask)
            params, opt, _ = self.model_tx.step(grads, opt, trainable)
            return params, opt, metrics

        trainable = {"model": ms.model, "psi": jax.tree.map(lambda p: p[-1], ms.psi)}
        opt = ms.model_opt
        init_metrics = jax.eval_shape(lambda: step(0, (trainable, opt, None))[2])
        init_metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), init_metrics)
        trainable, opt, metrics = jax.lax.fori_loop(0, steps, step,
                                                    (trainable, opt, init_metrics))
        return trainable, opt, metrics

    def train_predictor(self, ms: MDPOState, key):
        """Loss ② for ``pred_epochs`` epochs of minibatches from D^l (slot l)."""
        cfg = self.cfg
        steps = cfg.pred_epochs * max(self.samples // cfg.pred_batch, 1)
        grad_fn = jax.vmap(jax.value_and_grad(self.pred_loss, has_aux=True))
        psi = self._agents_first(ms.psi, 1)  # [N, l, ...]
        obs = ms.window["obs"][-1]  # [B, N, D]

        def step(carry, step_key):
            pred, opt = carry
            idx_key, z_key = jax.random.split(step_key)
            idx = jax.random.randint(idx_key, (cfg.pred_batch,), 0, self.samples)
            mb = jnp.moveaxis(obs[idx], 1, 0)  # [N, M, D]
            (_, metrics), grads = grad_fn(pred, psi, mb, jax.random.split(z_key, self.n_agents),
                                          self.norm_stats(ms))
            pred, opt, _ = self.model_tx.step(grads, opt, pred)
            return (pred, opt), metrics

        (pred, opt), metrics = jax.lax.scan(step, (ms.pred, ms.pred_opt),
                                            jax.random.split(key, steps))
        return pred, opt, jax.tree.map(lambda m: m[-1], metrics)

    # ------------------------------------------------------------------- step ③
    def rollout_latent(self, psi, pred, obs_in, key):
        """One agent's latent for imagination at obs [M, D]: z ~ f_ζ(z^2..z^l) with z^j ~ ψ_j
        (prediction), or z ~ ψ_l (ablation)."""
        in_key, z_key = jax.random.split(key)
        if not self.cfg.prediction:
            mean, log_std = self.latent_dist(jax.tree.map(lambda p: p[-1], psi), obs_in)
            return self.sample(mean, log_std, z_key)
        inputs, _, _ = self.window_latents(psi, obs_in, in_key)
        mean, log_std = self.forecast(pred, inputs[1:])
        return self.sample(mean, log_std, z_key)

    def imagine_agent(self, model, psi, pred, obs, action, key, stats, raw_mask):
        """One agent, one imagined step from obs [M, D] with actions [M(, A)] -> (ô' [M, D],
        r̂ [M], termination probability [M])."""
        z_key, o_key = jax.random.split(key)
        obs_in = self.normalise_obs(obs, stats)
        z = self.rollout_latent(psi, pred, obs_in, z_key)
        head, done_logit, reward = self.model_outputs(model, obs_in, self.encode_action(action),
                                                      z)
        nxt = self.next_observation(head, obs, raw_mask, stats, o_key)
        return nxt, reward, jax.nn.sigmoid(done_logit)

    def branch_starts(self, batch: Batch, key) -> TeamObs:
        """``n_starts`` observations of D^l (the real batch), flattened: TeamObs [S, ...]."""
        obs = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), batch.obs)
        if self.n_starts == self.samples:
            return obs
        idx = random_permutation(key, self.samples)[: self.n_starts]
        return jax.tree.map(lambda x: x[idx], obs)

    def imagine(self, ts, batch: Batch, key) -> Batch:
        """Branched rollouts ③: k imagined steps from the branch starts, each agent in its own
        model, actions from π_old: -> Batch [k, S, N] (per-agent rewards and terminations;
        the last step truncated and bootstrapped)."""
        cfg, ms = self.cfg, ts.algo_state
        start_key, key = jax.random.split(key)
        start = self.branch_starts(batch, start_key)
        psi = self._agents_first(ms.psi, 1)
        imagine = jax.vmap(self.imagine_agent, in_axes=(0, 0, 0, 1, 1, 0, 0, 0),
                           out_axes=(1, 1, 1))
        stats = self.norm_stats(ms)

        def step(carry, step_key):
            obs, alive = carry
            act_key, model_key = jax.random.split(step_key)
            team_obs = start._replace(obs=obs, alive=alive)
            dist = self.actor.distribution(ts.actor_params, obs, start.avail)
            action = dist.sample(act_key)
            log_prob = dist.log_prob(action)
            nxt, reward, p_done = imagine(ms.model, psi, ms.pred, obs, action,
                                          jax.random.split(model_key, self.n_agents),
                                          stats, self.raw_mask)
            if cfg.done_head:
                terminated = (p_done > cfg.done_threshold) | ~alive
            else:
                terminated = ~alive
            out = (team_obs, action, log_prob, jnp.where(alive, reward, 0.0), terminated,
                   nxt, alive & ~terminated)
            return (nxt, alive & ~terminated), out

        _, (obs, action, log_prob, reward, terminated, next_obs, next_alive) = jax.lax.scan(
            step, (start.obs, start.alive), jax.random.split(key, cfg.branch_length))
        value = self.values(ts, obs)
        next_value = self.values(ts, obs._replace(obs=next_obs, alive=next_alive))
        last = jnp.arange(cfg.branch_length)[:, None, None] == cfg.branch_length - 1
        truncated = last & ~terminated
        return Batch(obs, action, log_prob, value, next_value, reward, terminated, truncated)

    def real_segments(self, batch: Batch, key) -> Batch:
        """``real_ratio`` of the real batch's k-step segments ([T, E] -> [k, R]), each segment
        end bootstrapped (truncated) unless it terminated; per-agent reward layout."""
        k, (t, e) = self.cfg.branch_length, batch.reward.shape
        n = self.spec.n_agents
        ends = (jnp.arange(t) % k == k - 1)[:, None]
        per_agent = lambda x: jnp.broadcast_to(x[..., None], x.shape + (n,))
        batch = batch._replace(reward=per_agent(batch.reward),
                               terminated=per_agent(batch.terminated),
                               truncated=per_agent(batch.truncated | (ends & ~batch.terminated)),
                               next_obs=None, memory=None)

        def segments(x):
            x = x.reshape((t // k, k, e) + x.shape[2:])
            return jnp.swapaxes(x, 0, 1).reshape((k, (t // k) * e) + x.shape[3:])

        segs = jax.tree.map(segments, batch)
        idx = random_permutation(key, (t // k) * e)[: self.n_real]
        return jax.tree.map(lambda x: x[:, idx], segs)

    # ------------------------------------------------------------------- update
    def write_newest(self, ms: MDPOState, batch: Batch) -> MDPOState:
        """Write the real batch into D^l (every slot in the first iteration) and fold it into
        the model's input statistics."""
        flat = lambda x: x.reshape((-1,) + x.shape[2:])
        new = {"obs": flat(batch.obs.obs), "next_obs": flat(batch.next_obs.obs),
               "action": flat(batch.action), "reward": flat(batch.reward),
               "terminated": flat(batch.terminated), "alive": flat(batch.obs.alive)}
        first = ms.iteration == 0
        window = jax.tree.map(
            lambda w, x: jnp.where(first, jnp.broadcast_to(x, w.shape), w.at[-1].set(x)),
            ms.window, new)
        obs_norm = ms.obs_norm.update(new["obs"])
        delta_norm = ms.delta_norm.update(new["next_obs"] - new["obs"])
        return ms.replace(window=window, obs_norm=obs_norm, delta_norm=delta_norm)

    def shift(self, ms: MDPOState) -> MDPOState:
        """Lines 8-10: D^j <- D^{j+1}, ψ_j <- ψ_{j+1} (j < l); ψ_l kept (warm start)."""
        return ms.replace(window=jax.tree.map(shift_window, ms.window),
                          psi=jax.tree.map(shift_window, ms.psi))

    def policy_batch(self, ts, batch: Batch, key) -> Batch:
        """The batch step ④ learns from: the imagined branches, plus real segments when
        ``real_ratio > 0``."""
        imag_key, real_key = jax.random.split(key)
        parts = [self.imagine(ts, batch, imag_key)]
        if self.n_real:
            parts.append(self.real_segments(batch, real_key))
        if len(parts) == 1:
            return parts[0]
        return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=1), *parts)

    def update(self, ts, batch: Batch, key):
        cfg = self.cfg
        ms: MDPOState = ts.algo_state
        model_key, pred_key, imag_key = (jax.random.fold_in(key, i) for i in (1, 2, 3))
        first = ms.iteration == 0
        ms = self.write_newest(ms, batch)
        # ① models and ψ_l on the whole window.
        trainable, opt, model_metrics = self.train_models(ms, model_key, first)
        psi_l = trainable["psi"]
        psi = jax.tree.map(lambda old, new: jnp.where(
            first, jnp.broadcast_to(new, old.shape), old.at[-1].set(new)), ms.psi, psi_l)
        ms = ms.replace(model=trainable["model"], model_opt=opt, psi=psi)
        metrics = {"model_nll": model_metrics["nll"].mean(),
                   "reward_mse": model_metrics["reward_mse"].mean()}
        for j in range(cfg.window):
            metrics[f"model_nll_slot{j + 1}"] = model_metrics["nll"][:, j].mean()
        if cfg.done_head:
            metrics["done_bce"] = model_metrics["done_bce"].mean()
        # ② the latent prediction function on D^l.
        if cfg.window >= 2:
            pred, pred_opt, pred_metrics = self.train_predictor(ms, pred_key)
            ms = ms.replace(pred=pred, pred_opt=pred_opt)
            metrics.update(jax.tree.map(jnp.mean, pred_metrics))
        # ③ + ④ the inner algorithm on imagined (or, k = 0, real) data.
        inner_ts = ts.replace(algo_state=ms.inner)
        model_ts = ts.replace(algo_state=ms)

        def real_update(_):
            return self.real_inner.update(inner_ts, batch, key)

        def imagined_update(_):
            imagined = self.policy_batch(model_ts, batch, imag_key)
            new_ts, m = self.inner.update(inner_ts, imagined, key)
            return new_ts, {**m, "imagined_reward": imagined.reward.mean()}

        if cfg.branch_length == 0:
            inner_ts, inner_metrics = real_update(None)
        elif cfg.warmup_real_iters > 0:
            def real_with_reward(_):
                new_ts, m = real_update(None)
                return new_ts, {**m, "imagined_reward": jnp.float32(0.0)}
            inner_ts, inner_metrics = jax.lax.cond(ms.iteration < cfg.warmup_real_iters,
                                                   real_with_reward, imagined_update, None)
        else:
            inner_ts, inner_metrics = imagined_update(None)
        ms = self.shift(ms.replace(inner=inner_ts.algo_state, iteration=ms.iteration + 1))
        return inner_ts.replace(algo_state=ms), {**inner_metrics, **metrics}
