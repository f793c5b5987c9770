"""BAC's offline scheduling (Ji et al. 2025; `ky-ji/HAS`, BACInfer): each block's update steps from its step-similarity
matrix (the Adaptive Caching Scheduler, a dynamic programme), then Bubbling Union over the error-prone blocks.

- `optimal_updates(S, M)`: the M update steps (step 0 always) that maximise the summed similarity of every step
  to its last update, `Σ_t S[u(t), t]`; with `cost[a, b] = Σ_{t=a..b} S[a, t]`,
  `dp[1, i] = cost[0, i]`, `dp[m, i] = max_j dp[m-1, j] + cost[j+1, i]`, backtracked from `dp[M, K'-1]`;
  O(M·K'²).
- `bubbling_union(updates, errors, n)`: the n blocks with the largest schedule-independent caching error (mean L1
  distance of the block's output between all pairs of steps) also update whenever a feed-forward block at their
  layer or deeper does, so an error-prone upstream block is fresh when a downstream feed-forward recomputes.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence

import numpy as np

BLOCK_NAME = re.compile(r"^layer(\d+)\.(self_attn|cross_attn|ffn)$")  # TransformerDenoiser.block_names()
FEED_FORWARD = "ffn"


def parse_block(name: str) -> tuple[int, str]:
    """`layer3.ffn` -> (3, "ffn")."""
    m = BLOCK_NAME.match(name)
    if m is None:
        raise ValueError(f"block name {name!r} is not layer<i>.self_attn|cross_attn|ffn")
    return int(m.group(1)), m.group(2)


def segment_cost(similarity: np.ndarray) -> np.ndarray:
    """`cost[a, b] = Σ_{t=a..b} S[a, t]` for b >= a (the similarity earned by steps a…b reusing step a's output);
    -inf below the diagonal."""
    s = np.asarray(similarity, dtype=np.float64)
    cost = np.cumsum(np.triu(s), axis=1)
    cost[np.tril_indices(s.shape[0], -1)] = -np.inf
    return cost


def schedule_value(similarity: np.ndarray, updates: Sequence[int]) -> float:
    """`Σ_t S[u(t), t]`, u(t) the last update at or before t: what `optimal_updates` maximises."""
    s = np.asarray(similarity, dtype=np.float64)
    steps = sorted({int(k) for k in updates})
    if not steps or steps[0] != 0:
        raise ValueError(f"update steps must include step 0, got {list(updates)}")
    bounds = [*steps, s.shape[0]]
    return float(sum(s[a, a:b].sum() for a, b in itertools.pairwise(bounds)))


def optimal_updates(similarity: np.ndarray, budget: int) -> list[int]:
    """The `budget` update steps (step 0 included, increasing) maximising `schedule_value` (the DP above; ties go
    to the earliest split)."""
    s = np.asarray(similarity, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] < 1:
        raise ValueError(f"a step-similarity matrix is square K'×K', got shape {s.shape}")
    k = s.shape[0]
    if not 1 <= int(budget) <= k:
        raise ValueError(f"budget must be in [1, {k}] (the grid's steps), got {budget}")
    m_max = int(budget)
    cost = segment_cost(s)
    dp = np.full((m_max + 1, k), -np.inf)
    back = np.zeros((m_max + 1, k), dtype=np.int64)
    dp[1] = cost[0]
    if k > 1:
        split = cost[1:]  # split[j, i] = cost[j + 1, i]: the last segment starts at j + 1
        for m in range(2, m_max + 1):
            cand = dp[m - 1, : k - 1, None] + split  # [j, i]; -inf where j + 1 > i or dp[m-1, j] infeasible
            back[m] = np.argmax(cand, axis=0)
            dp[m] = cand[back[m], np.arange(k)]
    steps, i = [], k - 1
    for m in range(m_max, 1, -1):
        j = int(back[m, i])
        steps.append(j + 1)
        i = j
    steps.append(0)
    return sorted(steps)


def step_similarity(outputs: np.ndarray) -> np.ndarray:
    """Mean cosine similarity between a block's outputs at every pair of steps: `outputs [K', n, ...]` (steps,
    observations, features) -> `S [K', K']`. (Calibration accumulates the same sums batch by batch.)"""
    x = np.asarray(outputs, dtype=np.float64).reshape(outputs.shape[0], outputs.shape[1], -1)
    x = x / np.maximum(np.linalg.norm(x, axis=2, keepdims=True), 1e-12)
    return np.einsum("kbn,jbn->kj", x, x) / x.shape[1]


def pairwise_l1(outputs: np.ndarray) -> float:
    """Mean L1 distance of a block's output between all pairs of steps (`outputs [K', n, ...]`), averaged over
    elements and observations: the schedule-independent caching error that ranks blocks for Bubbling Union."""
    x = np.asarray(outputs, dtype=np.float64).reshape(outputs.shape[0], -1)
    k = x.shape[0]
    if k < 2:
        return 0.0
    # Σ_{i<j} |v_i - v_j| = Σ_r (2r - k - 1) v_(r) over the sorted values v_(1) ≤ … ≤ v_(k), per element
    weights = 2 * np.arange(1, k + 1) - k - 1
    pair_sums = (weights[:, None] * np.sort(x, axis=0)).sum(axis=0)
    return float(pair_sums.mean() / (k * (k - 1) / 2))


def rank_blocks(errors: Mapping[str, float], blocks: Sequence[str]) -> list[str]:
    """Blocks by caching error, largest first (ties in execution order)."""
    order = {b: i for i, b in enumerate(blocks)}
    return sorted(blocks, key=lambda b: (-float(errors[b]), order[b]))


def bubbling_union(updates: Mapping[str, Sequence[int]], errors: Mapping[str, float], n: int
                   ) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Bubbling Union: the `n` blocks of largest caching error take the union of their update steps with those of
    every feed-forward block at their layer or deeper (the feed-forward sets as the scheduler chose them).
    Returns the new update sets (every set a superset of the old) and the bubbled blocks, largest error first."""
    blocks = list(updates)
    if not 0 <= int(n) <= len(blocks):
        raise ValueError(f"bubbling must be in [0, {len(blocks)}] (the number of blocks), got {n}")
    chosen = rank_blocks(errors, blocks)[: int(n)]
    ffn = [(parse_block(b)[0], set(updates[b])) for b in blocks if parse_block(b)[1] == FEED_FORWARD]
    out = {b: tuple(sorted({int(k) for k in updates[b]})) for b in blocks}
    for b in chosen:
        layer = parse_block(b)[0]
        extra = set().union(*(steps for lay, steps in ffn if lay >= layer))
        out[b] = tuple(sorted(set(out[b]) | extra))
    return out, chosen
