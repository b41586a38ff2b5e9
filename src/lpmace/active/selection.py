"""Which sampled frames go to the oracle: the most uncertain ones, spread out in MD time.

A frame's uncertainty is the largest per-atom force spread of the committee (eV/Å,
`lpmace.committee.frame_uncertainty`). `select` takes frames above the threshold in order of
decreasing uncertainty (ties: trajectory, then time) and skips any frame closer than
`min_separation_fs` in MD time to one already taken from the same trajectory: consecutive frames of
one trajectory are near-duplicates, frames of different trajectories are not. No randomness, so the
choice depends only on the frames (and so on the seed that made them).
"""

from __future__ import annotations

import numpy as np


def select(uncertainty: np.ndarray, trajectory: np.ndarray, time_fs: np.ndarray, *, k: int, threshold: float,
           min_separation_fs: float, max_uncertainty: float | None = None) -> list[int]:
    """Indices (in the order taken) of at most `k` frames; arrays [n_frames]. Frames above
    `max_uncertainty` (None: no limit) are passed over."""
    order = np.lexsort((time_fs, trajectory, -uncertainty))  # last key sorts first
    taken: list[int] = []
    for i in order:
        if len(taken) == k or not uncertainty[i] > threshold:
            break
        if max_uncertainty is not None and uncertainty[i] > max_uncertainty:
            continue
        near = [j for j in taken if trajectory[j] == trajectory[i] and abs(time_fs[j] - time_fs[i]) < min_separation_fs]
        if not near:
            taken.append(int(i))
    return taken


def random_frames(n_frames: int, count: int, rng: np.random.Generator, exclude=()) -> list[int]:
    """`count` distinct indices in [0, n_frames) and not in `exclude` (the selected frames, so that the
    comparison is with frames the selection did not take), drawn uniformly by `rng`, sorted."""
    pool = np.setdiff1d(np.arange(n_frames), np.asarray(list(exclude), dtype=np.int64))
    return sorted(int(i) for i in rng.choice(pool, size=min(count, len(pool)), replace=False))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation of x and y [n] (average ranks for ties); NaN for n < 3 or a constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3:
        return float("nan")
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=np.float64)
    for value in np.unique(values):  # ties share their average rank
        same = values == value
        ranks[same] = ranks[same].mean()
    return ranks
