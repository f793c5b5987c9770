"""BAC's offline scheduling (Ji et al. 2025): the DP's update set is optimal (brute force on small K'), Bubbling
Union only adds steps, the caching error and similarity reductions match their definitions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rtdp.policy.caching.scheduler import (
    bubbling_union,
    optimal_updates,
    pairwise_l1,
    rank_blocks,
    schedule_value,
    segment_cost,
    step_similarity,
)

BLOCKS = [f"layer{i}.{kind}" for i in range(3) for kind in ("self_attn", "cross_attn", "ffn")]


def brute_force(similarity: np.ndarray, budget: int) -> float:
    """The best `schedule_value` over every set of `budget` update steps that contains step 0."""
    k = similarity.shape[0]
    return max(schedule_value(similarity, (0, *rest)) for rest in itertools.combinations(range(1, k), budget - 1))


def random_similarity(rng: np.random.Generator, k: int) -> np.ndarray:
    """A cosine-like matrix: symmetric, 1 on the diagonal, decaying off it with noise (negative entries too)."""
    x = rng.normal(size=(k, 6)).cumsum(axis=0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x @ x.T


@pytest.mark.parametrize("k", [1, 2, 5, 8, 9])
def test_the_dp_finds_the_best_update_set_on_random_matrices_as_brute_force_does(k):
    rng = np.random.default_rng(k)
    for _ in range(6):
        s = random_similarity(rng, k)
        for budget in range(1, k + 1):
            steps = optimal_updates(s, budget)
            assert len(steps) == budget and steps[0] == 0 and steps == sorted(set(steps))
            assert schedule_value(s, steps) == pytest.approx(brute_force(s, budget), abs=1e-9)


def test_the_dp_places_updates_where_a_hand_made_matrix_changes():
    # three plateaus: steps 0-2 alike, 3-5 alike, 6-7 alike, nothing alike across plateaus
    s = np.zeros((8, 8))
    for a, b in ((0, 3), (3, 6), (6, 8)):
        s[a:b, a:b] = 1.0
    assert optimal_updates(s, 3) == [0, 3, 6]
    assert schedule_value(s, [0, 3, 6]) == 8.0  # every step reuses an identical output
    assert optimal_updates(s, 1) == [0] and schedule_value(s, [0]) == 3.0
    assert optimal_updates(s, 8) == list(range(8))


def test_the_dp_is_not_fooled_by_an_asymmetric_matrix():
    # S[a, t] is what step t earns reusing step a; here reusing step 1 is worth far more than step 0
    s = np.eye(4)
    s[1, 1:] = 1.0
    assert optimal_updates(s, 2) == [0, 1]
    s2 = np.eye(4)
    s2[0, :3] = 1.0
    s2[3, 3] = 1.0
    assert optimal_updates(s2, 2) == [0, 3]


def test_segment_cost_sums_a_row_from_the_diagonal():
    s = np.arange(16, dtype=float).reshape(4, 4)
    cost = segment_cost(s)
    assert cost[1, 3] == s[1, 1] + s[1, 2] + s[1, 3]
    assert cost[2, 2] == s[2, 2] and np.isneginf(cost[3, 0])


@pytest.mark.parametrize("budget", [0, 6])
def test_a_budget_outside_the_grid_is_refused(budget):
    with pytest.raises(ValueError, match=r"budget must be in \[1, 5\]"):
        optimal_updates(np.eye(5), budget)


def test_bubbling_union_only_adds_steps_from_feed_forward_blocks_at_or_below_the_block():
    rng = np.random.default_rng(0)
    k = 20
    updates = {b: tuple(sorted({0, *rng.choice(np.arange(1, k), 3, replace=False).tolist()})) for b in BLOCKS}
    errors = {b: float(e) for b, e in zip(BLOCKS, rng.uniform(size=len(BLOCKS)))}
    for n in range(len(BLOCKS) + 1):
        out, chosen = bubbling_union(updates, errors, n)
        assert chosen == rank_blocks(errors, BLOCKS)[:n]
        for b in BLOCKS:
            assert set(updates[b]) <= set(out[b])  # only ever adds
            layer = int(b[5])
            deeper_ffn = set().union(*(set(updates[f"layer{i}.ffn"]) for i in range(layer, 3)))
            expected = set(updates[b]) | deeper_ffn if b in chosen else set(updates[b])
            assert set(out[b]) == expected
    with pytest.raises(ValueError, match="bubbling must be in"):
        bubbling_union(updates, errors, len(BLOCKS) + 1)


def test_bubbling_union_ranks_blocks_by_caching_error():
    updates = {b: (0,) for b in BLOCKS}
    updates["layer2.ffn"] = (0, 7)
    errors = {b: 0.0 for b in BLOCKS}
    errors["layer1.cross_attn"] = 5.0
    out, chosen = bubbling_union(updates, errors, 1)
    assert chosen == ["layer1.cross_attn"] and out["layer1.cross_attn"] == (0, 7)
    assert all(out[b] == updates[b] for b in BLOCKS if b != "layer1.cross_attn")


def test_pairwise_l1_is_the_mean_distance_over_pairs_of_steps():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 3, 4, 5))  # steps, observations, tokens, features
    flat = x.reshape(6, -1)
    direct = np.mean([np.abs(flat[i] - flat[j]).mean() for i in range(6) for j in range(i + 1, 6)])
    assert pairwise_l1(x) == pytest.approx(direct)


def test_step_similarity_is_the_mean_cosine_over_observations():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 3, 10))
    s = step_similarity(x)
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert s[1, 3] == pytest.approx(np.mean([cos(x[1, i], x[3, i]) for i in range(3)]))
    assert np.allclose(np.diag(s), 1.0)
