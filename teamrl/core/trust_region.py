"""Natural-gradient machinery of TRPO, TNPG and HATRPO: Fisher-vector products by automatic
differentiation (never a dense Fisher), conjugate gradient, the KL-sized step and the
backtracking line search.

Everything works on one flat parameter vector (``jax.flatten_util.ravel_pytree``): one agent's
parameters, or the shared actor's, are a few thousand numbers, and flat vectors make the
conjugate-gradient algebra plain dot products.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from teamrl.config import option


@dataclass
class TrustRegionConfig:
    """The trust-region settings (HARL's HATRPO defaults)."""

    kl_threshold: float = option(0.01, "trust-region size delta: mean KL(pi_old || pi) bound",
                                 low=0.0, low_open=True)
    cg_iters: int = option(10, "conjugate-gradient iterations", low=1)
    cg_damping: float = option(0.1, "damping added to the Fisher: (F + damping*I) v", low=0.0)
    line_search_steps: int = option(10, "backtracking line-search steps", low=1)
    backtrack_coef: float = option(0.8, "step shrink factor per line-search step", low=0.0,
                                   high=1.0, low_open=True, high_open=True)
    accept_ratio: float = option(0.5, "accept a step when improvement >= this x expected",
                                 low=0.0)
    fisher_subsample: int = option(1, "Fisher-vector products on every k-th sample (rllab's "
                                   "subsample_factor = 1/k); gradient and line search use all",
                                   low=1)


def gauss_newton_fvp(outputs_fn: Callable, kl_of_outputs: Callable, flat_params: jax.Array,
                     damping: float = 0.0) -> Callable[[jax.Array], jax.Array]:
    """v -> (F + damping·I) v with F = Jᵀ H J: J the Jacobian of the policy's outputs (logits,
    or mean and log std) in the parameters, H the Hessian of the mean KL in those outputs.

    At π = π_old this equals the Hessian of the KL in the parameters exactly (the KL's gradient
    in the outputs vanishes there, so the network's own curvature drops out), but costs one
    linear forward (Jv) and one linear backward (Jᵀu) pass per product instead of a
    forward-over-reverse pass through the network; H·u is elementwise-cheap.
    """
    outputs, jvp = jax.linearize(outputs_fn, flat_params)
    _, vjp = jax.vjp(outputs_fn, flat_params)
    _, output_hvp = jax.linearize(jax.grad(kl_of_outputs), outputs)
    return lambda v: vjp(output_hvp(jvp(v)))[0] + damping * v


def conjugate_gradient(matvec: Callable, b: jax.Array, iterations: int = 10,
                       residual_tol: float = 1e-10) -> jax.Array:
    """Approximately solve A x = b for symmetric positive-definite A given as ``matvec``.

    A fixed number of iterations (compiled as a fori_loop); once the squared residual falls
    below ``residual_tol``·|b|² the iterate is frozen (no division by a vanishing curvature).
    The tolerance is relative so that it means the same for small and large gradients.
    """
    tolerance = residual_tol * jnp.vdot(b, b)

    def body(_, state):
        x, r, p, rr = state
        active = rr > tolerance
        ap = matvec(p)
        p_ap = jnp.vdot(p, ap)
        alpha = jnp.where(active & (p_ap > 0), rr / jnp.where(p_ap > 0, p_ap, 1.0), 0.0)
        x = x + alpha * p
        r = r - alpha * ap
        new_rr = jnp.vdot(r, r)
        beta = jnp.where(active, new_rr / jnp.where(rr > 0, rr, 1.0), 0.0)
        p = jnp.where(active, r + beta * p, p)
        return x, r, p, jnp.where(active, new_rr, rr)

    state = (jnp.zeros_like(b), b, b, jnp.vdot(b, b))
    return jax.lax.fori_loop(0, iterations, body, state)[0]


def trust_region_step(outputs: Callable, objective: Callable, kl: Callable, params,
                      cfg: TrustRegionConfig, line_search: bool = True,
                      fisher: tuple[Callable, Callable] | None = None):
    """One TRPO step that maximises the surrogate subject to mean KL(π_old ‖ π) ≤ δ.

    The policy enters only through its raw outputs (logits, or mean and log std), so one
    forward pass serves the objective, its gradient and the Fisher products. The search
    direction s solves F s = g (g the objective's gradient) by conjugate gradient; the full
    step √(2δ / sᵀFs)·s makes the quadratic KL model equal δ. With ``line_search`` the step is
    shrunk by ``backtrack_coef`` up to ``line_search_steps`` times and accepted at the first
    fraction whose measured KL ≤ δ and whose improvement is positive and at least
    ``accept_ratio`` of the linear model's; if none passes, the parameters stay unchanged (a
    rejection). Without it (TNPG) the full natural-gradient step is taken.

    Args:
        outputs: params -> the policy's outputs on the batch (any pytree).
        objective: outputs -> [] surrogate to maximise.
        kl: outputs -> [] mean KL(π_old ‖ π_outputs), π_old fixed (0 at the current params).
        fisher: optionally (outputs, kl) on a subsample, for the Fisher-vector products only.
    Returns:
        (new params, stats dict of [] arrays: kl, improvement, expected_improvement,
        accepted (1.0/0.0), step_fraction, grad_norm).
    """
    flat, unravel = ravel_pytree(params)
    flat_outputs = lambda x: outputs(unravel(x))
    evaluate = lambda x: (objective(flat_outputs(x)), kl(flat_outputs(x)))
    current, vjp = jax.vjp(flat_outputs, flat)
    value, output_grad = jax.value_and_grad(objective)(current)
    grad = vjp(output_grad)[0]
    fisher_outputs, fisher_kl = fisher if fisher is not None else (outputs, kl)
    fvp = gauss_newton_fvp(lambda x: fisher_outputs(unravel(x)), fisher_kl, flat,
                           cfg.cg_damping)
    direction = conjugate_gradient(fvp, grad, cfg.cg_iters)
    curvature = jnp.vdot(direction, fvp(direction))  # sᵀFs
    usable = (curvature > 0) & jnp.all(jnp.isfinite(direction))
    scale = jnp.where(usable, jnp.sqrt(2.0 * cfg.kl_threshold / jnp.where(usable, curvature,
                                                                            1.0)), 0.0)
    full_step = scale * jnp.where(usable, direction, 0.0)
    expected = jnp.vdot(grad, full_step)

    if not line_search:
        new = flat + full_step
        new_value, new_kl = evaluate(new)
        stats = {"kl": new_kl, "improvement": new_value - value,
                 "expected_improvement": expected, "accepted": usable.astype(jnp.float32),
                 "step_fraction": jnp.float32(1.0)}
    else:
        def cond(state):
            k, accepted = state[0], state[1]
            return (k < cfg.line_search_steps) & ~accepted

        def body(state):
            k = state[0]
            fraction = jnp.float32(cfg.backtrack_coef) ** k
            new_value, step_kl = evaluate(flat + fraction * full_step)
            improvement = new_value - value
            ok = (usable & (step_kl <= cfg.kl_threshold) & (improvement > 0)
                  & (improvement >= cfg.accept_ratio * expected * fraction))
            return k + 1, ok, fraction, improvement, step_kl

        init = (jnp.int32(0), jnp.bool_(False), jnp.float32(0.0), jnp.float32(0.0),
                jnp.float32(0.0))
        _, accepted, fraction, improvement, step_kl = jax.lax.while_loop(cond, body, init)
        new = jnp.where(accepted, flat + fraction * full_step, flat)
        stats = {"kl": jnp.where(accepted, step_kl, 0.0),
                 "improvement": jnp.where(accepted, improvement, 0.0),
                 "expected_improvement": expected, "accepted": accepted.astype(jnp.float32),
                 "step_fraction": jnp.where(accepted, fraction, 0.0)}
    stats["grad_norm"] = jnp.linalg.norm(grad)
    return unravel(new), stats
