"""Closed-form checks of GAE, value normalisation, padding/masking and the distributions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from teamrl.core.advantages import RunningNorm, gae
from teamrl.core.policies import DiagGaussian, MaskedCategorical


def test_gae_hand_computed_with_termination_and_truncation():
    # step 0 continues, step 1 hits the time limit (bootstrap from the final obs' value 9.0),
    # step 2 terminates (no bootstrap), step 3 continues into the next rollout (V = 1.0).
    reward = jnp.array([[1.0], [2.0], [3.0], [4.0]])
    value = jnp.array([[0.5], [0.6], [0.7], [0.8]])[..., None]
    next_value = jnp.array([[0.6], [9.0], [0.8], [1.0]])[..., None]
    terminated = jnp.array([[False], [False], [True], [False]])
    truncated = jnp.array([[False], [True], [False], [False]])
    adv, ret = gae(reward, value, next_value, terminated, truncated, gamma=0.9, lam=0.8)
    deltas = [1 + 0.9 * 0.6 - 0.5, 2 + 0.9 * 9.0 - 0.6, 3 - 0.7, 4 + 0.9 * 1.0 - 0.8]
    expected = [deltas[0] + 0.9 * 0.8 * deltas[1], deltas[1], deltas[2], deltas[3]]
    np.testing.assert_allclose(adv[:, 0, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(ret, adv + value, rtol=1e-6)


def test_gae_lambda_one_is_discounted_return_minus_value():
    rng = np.random.default_rng(0)
    reward = jnp.asarray(rng.normal(size=(6, 2)), jnp.float32)
    value = jnp.asarray(rng.normal(size=(6, 2, 3)), jnp.float32)
    next_value = jnp.concatenate([value[1:], jnp.zeros((1, 2, 3))])
    false = jnp.zeros((6, 2), bool)
    adv, _ = gae(reward, value, next_value, false, false, gamma=0.95, lam=1.0)
    discounted = np.array([sum(0.95**k * reward[t + k] for k in range(6 - t)) for t in range(6)])
    np.testing.assert_allclose(adv, discounted[..., None] - value, rtol=1e-5, atol=1e-5)


def test_running_norm_matches_numpy_over_batches():
    rng = np.random.default_rng(1)
    chunks = [rng.normal(3.0, 2.0, size=n) for n in (50, 7, 300)]
    norm = RunningNorm.create()
    for c in chunks:
        norm = norm.update(jnp.asarray(c, jnp.float32))
    data = np.concatenate(chunks)
    np.testing.assert_allclose(norm.mean, data.mean(), rtol=1e-4)
    np.testing.assert_allclose(norm.var, data.var(), rtol=1e-3)
    x = jnp.asarray([0.0, 5.0])
    np.testing.assert_allclose(norm.denormalise(norm.normalise(x)), x, rtol=1e-5, atol=1e-5)


def test_categorical_closed_forms_and_masking():
    logits = jnp.array([0.3, -1.2, 2.0, 0.5])
    avail = jnp.array([True, False, True, True])
    dist = MaskedCategorical(logits, avail)
    p = np.exp(np.array([0.3, 2.0, 0.5]))
    p /= p.sum()
    np.testing.assert_allclose(dist.probs, [p[0], 0.0, p[1], p[2]], rtol=1e-6)
    np.testing.assert_allclose(dist.log_prob(jnp.array(2)), math.log(p[1]), rtol=1e-6)
    np.testing.assert_allclose(dist.entropy(), -(p * np.log(p)).sum(), rtol=1e-6)
    other = MaskedCategorical(jnp.array([1.0, 5.0, 0.0, 0.0]), avail)
    q = np.exp(np.array([1.0, 0.0, 0.0]))
    q /= q.sum()
    np.testing.assert_allclose(dist.kl(other), (p * np.log(p / q)).sum(), rtol=1e-5)
    assert float(dist.kl(dist)) == pytest.approx(0.0, abs=1e-7)
    assert int(dist.mode()) == 2


def test_masked_categorical_never_samples_unavailable_actions():
    key = jax.random.PRNGKey(0)
    logits = jax.random.normal(key, (2000, 6)) * 3
    avail = jax.random.bernoulli(jax.random.PRNGKey(1), 0.4, (2000, 6))
    avail = avail.at[:, 5].set(avail[:, 5] | ~avail.any(-1))  # at least one per row
    samples = MaskedCategorical(logits, avail).sample(jax.random.PRNGKey(2))
    assert bool(jnp.take_along_axis(avail, samples[:, None], 1).all())


def test_gaussian_closed_forms_sum_over_real_dims_only():
    mean = jnp.array([0.5, -1.0, 7.0])
    log_std = jnp.array([0.1, -0.3, 4.0])
    mask = jnp.array([True, True, False])  # third dim is padding
    dist = DiagGaussian(mean, log_std, mask)
    a = jnp.array([0.2, -0.5, 123.0])
    std = np.exp([0.1, -0.3])
    logp = sum(-0.5 * ((a[i] - mean[i]) / std[i]) ** 2 - math.log(std[i])
               - 0.5 * math.log(2 * math.pi) for i in range(2))
    np.testing.assert_allclose(dist.log_prob(a), logp, rtol=1e-6)
    np.testing.assert_allclose(dist.entropy(), sum(0.5 * math.log(2 * math.pi * math.e * s**2)
                                                   for s in std), rtol=1e-6)
    other = DiagGaussian(jnp.array([0.0, 0.0, 0.0]), jnp.array([0.0, 0.2, -3.0]), mask)
    s2 = np.exp([0.0, 0.2])
    kl = sum(math.log(s2[i] / std[i]) + (std[i] ** 2 + float(mean[i]) ** 2) / (2 * s2[i] ** 2)
             - 0.5 for i in range(2))
    np.testing.assert_allclose(dist.kl(other), kl, rtol=1e-5)
    sample = dist.sample(jax.random.PRNGKey(0))
    assert float(sample[2]) == 0.0


def test_gaussian_kl_matches_monte_carlo():
    p = DiagGaussian(jnp.array([0.3, -0.2]), jnp.array([-0.2, 0.4]), jnp.array([True, True]))
    q = DiagGaussian(jnp.array([0.0, 0.5]), jnp.array([0.1, 0.0]), jnp.array([True, True]))
    xs = jax.vmap(p.sample)(jax.random.split(jax.random.PRNGKey(3), 200_000))
    mc = jnp.mean(p.log_prob(xs) - q.log_prob(xs))
    assert float(mc) == pytest.approx(float(p.kl(q)), abs=0.01)
