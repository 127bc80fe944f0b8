"""Rollouts of Gymnasium's classic-control environments as transition CSVs.

CartPole-v1: each episode follows a "lean toward the pole" heuristic with an
episode-specific chance of a random push instead (0.2..1.0), so the data holds both long
balanced runs and quick failures; episodes stop at termination (the terminal transition is
kept) or after `max_steps`. Pendulum-v1: smoothly varying random torques (a clipped random
walk), fixed-length episodes from random start angles. Files are named after the Gymnasium
id so the transitions kind records the environment.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from unified_pipeline.atomic import atomic_dir


def _fmt(values) -> list[str]:
    return [format(float(v), ".7g") for v in values]


def _write(dest: Path, env_id: str, rows: list[list[str]], n_state: int, n_action: int) -> Path:
    header = (["episode"] + [f"state_{i}" for i in range(n_state)] + [f"action_{i}" for i in range(n_action)]
              + ["reward"] + [f"next_state_{i}" for i in range(n_state)])
    with atomic_dir(dest) as tmp:
        with open(tmp / f"{env_id}.csv", "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
    return dest


def cartpole_rows(seed: int = 0, episodes: int = 200, max_steps: int = 100) -> list[list[str]]:
    import gymnasium as gym

    env = gym.make("CartPole-v1").unwrapped  # no wrappers: the loop enforces its own step limit
    rng = np.random.default_rng(seed)
    rows: list[list[str]] = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=int(rng.integers(2**31)))
        eps = float(rng.uniform(0.2, 1.0))
        for _ in range(max_steps):
            if rng.random() < eps:
                action = int(rng.integers(2))
            else:
                action = int(obs[2] + 0.5 * obs[3] > 0)
            nxt, reward, terminated, _, _ = env.step(action)
            rows.append([str(ep)] + _fmt(obs) + [str(action), _fmt([reward])[0]] + _fmt(nxt))
            obs = nxt
            if terminated:
                break
    env.close()
    return rows


def pendulum_rows(seed: int = 0, episodes: int = 150, steps: int = 100) -> list[list[str]]:
    import gymnasium as gym

    env = gym.make("Pendulum-v1").unwrapped
    rng = np.random.default_rng(seed)
    rows: list[list[str]] = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=int(rng.integers(2**31)))
        torque = float(rng.uniform(-2.0, 2.0))
        for _ in range(steps):
            torque = float(np.clip(0.8 * torque + rng.normal(0.0, 0.8), -2.0, 2.0))
            action = np.array([torque], dtype=np.float32)
            nxt, reward, _, _, _ = env.step(action)
            rows.append([str(ep)] + _fmt(obs) + _fmt(action) + _fmt([reward]) + _fmt(nxt))
            obs = nxt
    env.close()
    return rows


def generate_cartpole(dest: Path, seed: int = 0, episodes: int = 200, max_steps: int = 100) -> Path:
    """Write CartPole-v1.csv under `dest` (kept as is when it already exists)."""
    dest = Path(dest)
    if dest.is_dir() and any(dest.iterdir()):
        return dest
    return _write(dest, "CartPole-v1", cartpole_rows(seed, episodes, max_steps), 4, 1)


def generate_pendulum(dest: Path, seed: int = 0, episodes: int = 150, steps: int = 100) -> Path:
    """Write Pendulum-v1.csv under `dest` (kept as is when it already exists)."""
    dest = Path(dest)
    if dest.is_dir() and any(dest.iterdir()):
        return dest
    return _write(dest, "Pendulum-v1", pendulum_rows(seed, episodes, steps), 3, 1)
