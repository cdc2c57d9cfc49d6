"""A saved run's policy evaluated (``teamrl eval``) or rendered to a video; the compiled
evaluation episodes themselves are :func:`teamrl.core.rollout.episode_returns`."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np

from teamrl.core.rollout import episode_returns  # noqa: F401  (its import path before 0.2)


def evaluate_run(run_dir, episodes: int | None, deterministic: bool, checkpoint: str = "best",
                 overrides: dict | None = None) -> dict:
    """Evaluate every seed of a run folder's checkpoint (``best`` falls back to ``latest``);
    ``episodes`` defaults to the run's ``eval_episodes``. Writes ``eval_<ckpt>_<mode>.json``."""
    from teamrl.train.presets import config_from_run_dir
    from teamrl.train.loop import make_trainer

    from teamrl.scale.distributed import ONE_DEVICE

    run_dir = pathlib.Path(run_dir)
    config = config_from_run_dir(run_dir, {**ONE_DEVICE, **(overrides or {})})
    episodes = episodes or config.run.eval_episodes
    trainer = make_trainer(config)
    try:
        checkpoint, runner, meta = load_for_eval(run_dir, checkpoint, trainer)
        keys = jax.vmap(lambda k: jax.random.fold_in(k, 2**31 - 1))(trainer.seed_keys())
        returns, won = (np.asarray(x) for x in trainer.evaluation_returns(
            runner.train_state, keys, episodes, deterministic))
        # Host envs' further episode metrics (football's goals, passes, ...): {name: [S, n]}.
        extra = dict(getattr(trainer, "last_eval_metrics", {}))
    finally:
        trainer.close()
    result = {"checkpoint": checkpoint, "env_steps": meta.get("env_steps"),
              "deterministic": deterministic, "episodes": episodes, "seeds": []}
    for s in range(returns.shape[0]):
        r = returns[s]
        result["seeds"].append({"seed": config.run.seed + s, "return_mean": float(np.mean(r)),
                                "return_std": float(np.std(r)), "return_min": float(np.min(r)),
                                "return_max": float(np.max(r))})
        if trainer.spec.has_wins:
            result["seeds"][-1]["win_rate"] = float(np.nanmean(won[s]))
        for metric, values in extra.items():
            result["seeds"][-1][metric] = _nanmean(values[s])
    result["return_mean"] = float(np.mean(returns))
    if trainer.spec.has_wins:
        result["win_rate"] = float(np.nanmean(won))
    for metric, values in extra.items():
        result[metric] = _nanmean(values)
    name = f"eval_{checkpoint}_{'det' if deterministic else 'stoch'}.json"
    (run_dir / name).write_text(json.dumps(result, indent=2))
    result["file"] = str(run_dir / name)
    return result


def load_for_eval(run_dir, checkpoint: str, trainer):
    """``(name, runner, meta)`` of checkpoint ``checkpoint`` (best or latest), else the other
    one, with a one-line note on stderr saying why; raises CheckpointError (one line) when
    neither is usable."""
    import sys

    from teamrl import runs

    other = "latest" if checkpoint == "best" else "best"
    return runs.load_with_fallback(
        run_dir, trainer.init(), order=(checkpoint, other),
        what_to_do=f"train it (`teamrl resume {run_dir}` or `teamrl train --config "
                   f"{pathlib.Path(run_dir) / runs.CONFIG_FILE} overwrite=true`) first",
        note=lambda line: print(line, file=sys.stderr))


def _nanmean(values) -> float | None:
    """Mean over the defined (non-NaN) values; None (JSON null) when there is none."""
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else None


# ================================================================================ rendering
RENDER_FORMATS = (".gif", ".mp4")
_GL_HELP = ("install the Debian package libegl1 (MUJOCO_GL=egl, the default without a "
            "display) or libosmesa6 (MUJOCO_GL=osmesa)")


def _prepare_headless_gl() -> None:
    """MuJoCo picks its OpenGL backend when it is first imported: without a display, use EGL
    (offscreen, GPU or Mesa) unless the user chose another backend."""
    import os

    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("MUJOCO_GL", "egl")
        os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


def _host_frames(trainer, train_state, episodes: int, deterministic: bool, key):
    """Frames [T, H, W, 3] uint8 and returns of ``episodes`` episodes of a host env rendered
    with its own ``render_mode="rgb_array"``, in this process."""
    import dataclasses
    import os

    from teamrl.config import ConfigError
    from teamrl.envs.host_worker import TeamAdapter, TeamBuffers
    from teamrl.envs.spec import TeamObs

    team_env = trainer.team_env
    recipe = team_env.recipe
    if recipe.function == "build_pettingzoo":
        kwargs = {**recipe.kwargs, "kwargs": {**recipe.kwargs["kwargs"],
                                              "render_mode": "rgb_array"}}
    else:
        kwargs = {**recipe.kwargs, "render_mode": "rgb_array"}
    env_id = team_env.spec.env_id
    gl = os.environ.get("MUJOCO_GL", "glfw")
    try:
        env = dataclasses.replace(recipe, kwargs=kwargs).build()
        buffers = TeamBuffers(team_env.layout, 1)
        adapter = TeamAdapter(env, team_env.layout, buffers, 0)
        adapter.reset(2**31 - 1)
        first = env.render()
    except Exception as err:  # noqa: BLE001 - any GL or env failure gets the same advice
        if env_id.startswith("mamujoco/"):
            raise ConfigError(f"rendering {env_id} offscreen failed with MUJOCO_GL={gl} "
                              f"({type(err).__name__}: {err}); {_GL_HELP}") from None
        raise ConfigError(f"{env_id} cannot render rgb_array frames ({type(err).__name__}: "
                          f"{err}); valid: envs whose parallel_env accepts "
                          "render_mode='rgb_array'") from None
    if first is None:
        raise ConfigError(f"{env_id} returned no frame from render(); valid: envs whose "
                          "parallel_env accepts render_mode='rgb_array'")
    policy = jax.jit(lambda obs, episode, t: trainer.algo.policy_action(
        train_state, obs, jax.random.fold_in(jax.random.fold_in(key, episode), t),
        deterministic))
    frames, returns = [np.asarray(first)], []
    try:
        for episode in range(episodes):
            total = 0.0
            for t in range(trainer.spec.max_steps or 100_000):
                obs = TeamObs(*(getattr(buffers, n)[0] for n in ("obs", "state", "avail",
                                                                  "alive")))
                buffers.action[0] = np.asarray(policy(obs, np.int32(episode), np.int32(t)))
                adapter.step()
                total += float(buffers.reward[0])
                frames.append(np.asarray(env.render()))  # after a reset: the next start
                if buffers.terminated[0] or buffers.truncated[0]:
                    break
            returns.append(total)
    finally:
        adapter.close()
    return frames, returns


def _mpe_frames(trainer, train_state, episodes: int, deterministic: bool, key):
    """Frames of a JaxMARL MPE env drawn with matplotlib from the entity positions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    team_env = trainer.team_env
    env = team_env.env
    reset = jax.jit(team_env.reset)
    step = jax.jit(team_env.step)
    policy = jax.jit(lambda obs, k: trainer.algo.policy_action(train_state, obs, k,
                                                               deterministic))
    positions, returns = [], []
    for episode in range(episodes):
        ekey = jax.random.fold_in(key, episode)
        state, obs = reset(ekey)
        total = 0.0
        positions.append(np.asarray(state.env_state.p_pos))
        for t in range(team_env.spec.max_steps):
            k_act, k_env = jax.random.split(jax.random.fold_in(ekey, t + 1))
            state, out = step(k_env, state, policy(obs, k_act))
            total += float(out.reward)
            positions.append(np.asarray(state.env_state.p_pos))
            obs = out.next_obs
            if bool(out.terminated | out.truncated):
                break
        returns.append(total)
    bound = max(1.0, float(np.abs(np.stack(positions)).max()) + 0.2)
    colours = [tuple(c / 255 for c in rgb) for rgb in env.colour]
    radii = np.asarray(env.rad)
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    frames = []
    for pos in positions:
        ax.clear()
        ax.set_xlim(-bound, bound)
        ax.set_ylim(-bound, bound)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        # Landmarks first, agents on top (agents are the first num_agents entities).
        for i in list(range(env.num_agents, len(pos))) + list(range(env.num_agents)):
            ax.add_patch(plt.Circle(pos[i], radii[i], color=colours[i],
                                    alpha=0.9 if i < env.num_agents else 0.6))
        fig.canvas.draw()
        frames.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return frames, returns


def render_run(run_dir, out, episodes: int = 1, deterministic: bool = True,
               checkpoint: str = "best", fps: int = 0) -> dict:
    """Render ``episodes`` evaluation episodes of the first seed of a run to ``out`` (.gif or
    .mp4). MaMuJoCo and PettingZoo envs render with their own ``rgb_array`` mode (MuJoCo
    offscreen through EGL by default), MPE through matplotlib. Returns a summary dict."""
    import os
    import tempfile

    from teamrl.train.presets import config_from_run_dir
    from teamrl.config import ConfigError
    from teamrl.train.loop import make_trainer

    out = pathlib.Path(out)
    if out.suffix.lower() not in RENDER_FORMATS:
        raise ConfigError(f"render={str(out)!r} must end in one of {', '.join(RENDER_FORMATS)}")
    if out.suffix.lower() == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise ConfigError(f"render={str(out)!r}: writing .mp4 needs imageio-ffmpeg; "
                              "pip install 'teamrl[render]', or render to .gif") from None
    if not out.parent.is_dir():
        raise ConfigError(f"render={str(out)!r}: folder {str(out.parent)!r} does not exist")
    _prepare_headless_gl()
    from teamrl.scale.distributed import ONE_DEVICE

    run_dir = pathlib.Path(run_dir)
    config = config_from_run_dir(run_dir, dict(ONE_DEVICE))
    env_id = config.run.env_id
    trainer = make_trainer(config)
    try:
        checkpoint, runner, meta = load_for_eval(run_dir, checkpoint, trainer)
        train_state = jax.tree.map(lambda x: x[0], runner.train_state)
        key = jax.random.fold_in(trainer.seed_keys()[0], 0xF11E)
        if getattr(trainer.team_env, "is_host", False):
            frames, returns = _host_frames(trainer, train_state, episodes, deterministic, key)
            fps = fps or 1000 // 50  # MuJoCo tasks step at 20 ms (HalfCheetah: dt 0.05 s)
        elif env_id.startswith("mpe/"):
            frames, returns = _mpe_frames(trainer, train_state, episodes, deterministic, key)
            fps = fps or 10
        else:
            raise ConfigError(f"{env_id} has no renderer; valid: mamujoco/*, football/*, "
                              "pettingzoo/* envs with render_mode='rgb_array', mpe/*")
    finally:
        trainer.close()
    import imageio.v2 as imageio

    # Write next to the target and rename: an interrupted render never leaves half a file.
    handle, tmp = tempfile.mkstemp(suffix=out.suffix, dir=out.parent)
    os.close(handle)
    try:
        if out.suffix.lower() == ".gif":
            imageio.mimsave(tmp, frames, duration=1000 / fps, loop=0)
        else:
            imageio.mimsave(tmp, frames, fps=fps, macro_block_size=1)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal rights
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"file": str(out), "frames": len(frames), "returns": returns,
            "checkpoint": checkpoint, "env_steps": meta.get("env_steps")}
