"""A seeded generator of recommendation click logs, in the spirit of the seed's Mobile Taobao case.

The world: `num_items` items (default 100,000) in `num_categories` categories, with Zipf popularity (a
few items are everywhere, most are rare). Every item has a latent vector near its category's vector and
a small bias ("quality"). Every user has a few interest categories and a pool of items they interacted
with, drawn by popularity within those categories; their taste is the mean latent vector of that pool.

A sample is (history, candidate, label): the history is a random, variable-length slice of the user's
pool (padded with PAD_ID to a fixed length), the candidate is drawn from the user's interests or, with
probability `explore_fraction`, from global popularity, and the click is Bernoulli of

    sigmoid(signal_strength * <taste, candidate latent> + candidate bias + base_logit)

so the task is learnable from the history (which estimates the taste) and the candidate. One client holds
`users_per_client` users, so it touches only a few hundred of the many items: that is what makes
submodels small. The server's held-out test set is later logs of the same users (a time split, as in
production recommenders), generated independently from the training logs.

Server-side only (it uses numpy); phones receive the generated samples as tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from training.fl.ctr_model import PAD_ID, CTRSamples


@dataclass(frozen=True)
class RecsysConfig:
    num_items: int = 100_000
    num_categories: int = 200
    num_clients: int = 20
    users_per_client: int = 1
    samples_per_user: int = 300
    test_samples_per_user: int = 100
    history_len: int = 20
    min_history_len: int = 4
    user_pool_size: int = 150
    interests_per_user: int = 3
    zipf_exponent: float = 1.0
    latent_dim: int = 8
    item_noise: float = 0.5
    item_bias_std: float = 0.5
    explore_fraction: float = 0.3
    signal_strength: float = 5.0
    base_logit: float = -1.0
    seed: int = 0

    def problems(self) -> list[str]:
        out = []
        for name in ("num_items", "num_categories", "num_clients", "users_per_client", "history_len"):
            if getattr(self, name) < 1:
                out.append(f"{name} must be >= 1")
        if not 1 <= self.min_history_len <= self.history_len:
            out.append("min_history_len must be in [1, history_len]")
        if not 1 <= self.interests_per_user <= self.num_categories:
            out.append("interests_per_user must be in [1, num_categories]")
        if not 0.0 <= self.explore_fraction <= 1.0:
            out.append("explore_fraction must be in [0, 1]")
        if self.samples_per_user < 1 or self.test_samples_per_user < 0 or self.user_pool_size < 1:
            out.append("samples_per_user and user_pool_size must be >= 1, test_samples_per_user >= 0")
        return out


@dataclass
class RecsysWorld:
    """The generator's hidden ground truth (the server sees only `item_category`)."""

    item_category: np.ndarray  # [num_items] int64
    popularity: np.ndarray  # [num_items] float64, sums to 1
    item_latent: np.ndarray  # [num_items, latent_dim]
    item_bias: np.ndarray  # [num_items]
    # Items sorted by category, with the popularity CDF over that order, for per-category sampling.
    by_category: np.ndarray
    category_cdf: np.ndarray
    category_bounds: np.ndarray  # [num_categories + 1] offsets into by_category
    global_cdf: np.ndarray


@dataclass
class RecsysData:
    config: RecsysConfig
    world: RecsysWorld
    clients: list[CTRSamples]
    test: CTRSamples
    test_oracle_prob: torch.Tensor  # the generator's true click probability per test sample

    @property
    def num_items(self) -> int:
        return self.config.num_items

    @property
    def num_categories(self) -> int:
        return self.config.num_categories


def _make_world(cfg: RecsysConfig, rng: np.random.Generator) -> RecsysWorld:
    n, c, d = cfg.num_items, cfg.num_categories, cfg.latent_dim
    item_category = rng.integers(0, c, size=n, dtype=np.int64)
    # Zipf popularity over a random permutation of ids, so popularity says nothing about the id.
    rank = rng.permutation(n).astype(np.float64)
    popularity = 1.0 / np.power(rank + 1.0, cfg.zipf_exponent)
    popularity /= popularity.sum()
    category_latent = rng.normal(size=(c, d)) / np.sqrt(d)
    item_latent = category_latent[item_category] + cfg.item_noise * rng.normal(size=(n, d)) / np.sqrt(d)
    item_bias = cfg.item_bias_std * rng.normal(size=n)
    by_category = np.argsort(item_category, kind="stable")
    category_cdf = np.cumsum(popularity[by_category])
    category_bounds = np.searchsorted(item_category[by_category], np.arange(c + 1), side="left")
    return RecsysWorld(
        item_category=item_category,
        popularity=popularity,
        item_latent=item_latent,
        item_bias=item_bias,
        by_category=by_category,
        category_cdf=category_cdf,
        category_bounds=category_bounds,
        global_cdf=np.cumsum(popularity),
    )


def _draw_from_cdf(
    cdf: np.ndarray, low: np.ndarray, high: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Positions i with cdf[i-1] <= u < cdf[i] for u ~ U[low, high): inverse-CDF sampling, vectorised."""
    u = low + (high - low) * rng.random(size=low.shape)
    return np.minimum(np.searchsorted(cdf, u, side="right"), cdf.shape[0] - 1)


def _draw_in_categories(world: RecsysWorld, categories: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One item per entry of `categories`, by popularity within that category."""
    start = world.category_bounds[categories]
    end = world.category_bounds[categories + 1]
    cdf = world.category_cdf
    low = np.where(start > 0, cdf[np.maximum(start - 1, 0)], 0.0)
    high = cdf[np.maximum(end - 1, 0)]
    pos = _draw_from_cdf(cdf, low, high, rng)
    # An empty category (possible only with tiny num_items) falls back to a global draw.
    empty = end <= start
    pos = np.clip(pos, start, np.maximum(end - 1, start))
    items = world.by_category[np.minimum(pos, world.by_category.shape[0] - 1)]
    if empty.any():
        items[empty] = _draw_global(world, int(empty.sum()), rng)
    return items


def _draw_global(world: RecsysWorld, count: int, rng: np.random.Generator) -> np.ndarray:
    zeros = np.zeros(count)
    return _draw_from_cdf(world.global_cdf, zeros, np.full(count, world.global_cdf[-1]), rng)


def _user_interests(
    cfg: RecsysConfig, world: RecsysWorld, num_users: int, rng: np.random.Generator
) -> np.ndarray:
    """[num_users, k] distinct categories per user, drawn by category popularity (Gumbel top-k)."""
    mass = np.bincount(world.item_category, weights=world.popularity, minlength=cfg.num_categories)
    keys = np.log(mass + 1e-12)[None, :] + rng.gumbel(size=(num_users, cfg.num_categories))
    return np.argsort(-keys, axis=1)[:, : cfg.interests_per_user]


def _user_samples(
    cfg: RecsysConfig,
    world: RecsysWorld,
    pools: np.ndarray,
    taste: np.ndarray,
    interests: np.ndarray,
    per_user: int,
    rng: np.random.Generator,
) -> tuple[CTRSamples, np.ndarray]:
    """`per_user` samples for every user (rows grouped by user); also the true click probabilities."""
    num_users = pools.shape[0]
    n = num_users * per_user
    user = np.repeat(np.arange(num_users), per_user)
    length = rng.integers(cfg.min_history_len, cfg.history_len + 1, size=n)
    picks = rng.integers(0, cfg.user_pool_size, size=(n, cfg.history_len))
    history = pools[user[:, None], picks]
    history[np.arange(cfg.history_len)[None, :] >= length[:, None]] = PAD_ID
    history_category = np.where(history >= 0, world.item_category[np.maximum(history, 0)], PAD_ID)

    interest = interests[user, rng.integers(0, interests.shape[1], size=n)]
    candidate = _draw_in_categories(world, interest, rng)
    explore = rng.random(size=n) < cfg.explore_fraction
    candidate[explore] = _draw_global(world, int(explore.sum()), rng)

    logit = (
        cfg.signal_strength * np.einsum("nd,nd->n", taste[user], world.item_latent[candidate])
        + world.item_bias[candidate]
        + cfg.base_logit
    )
    prob = 1.0 / (1.0 + np.exp(-logit))
    label = (rng.random(size=n) < prob).astype(np.float32)
    samples = CTRSamples(
        history=torch.from_numpy(history.astype(np.int64)),
        history_category=torch.from_numpy(history_category.astype(np.int64)),
        candidate=torch.from_numpy(candidate.astype(np.int64)),
        category=torch.from_numpy(world.item_category[candidate].astype(np.int64)),
        label=torch.from_numpy(label),
    )
    return samples, prob


def generate_recsys(cfg: RecsysConfig | None = None) -> RecsysData:
    """Client shards (one entry per client) and the server's held-out test set, all from `cfg.seed`."""
    cfg = cfg or RecsysConfig()
    problems = cfg.problems()
    if problems:
        raise ValueError("invalid RecsysConfig: " + "; ".join(problems))
    rng = np.random.default_rng(cfg.seed)
    world = _make_world(cfg, rng)
    num_users = cfg.num_clients * cfg.users_per_client
    interests = _user_interests(cfg, world, num_users, rng)
    pool_categories = interests[
        np.arange(num_users)[:, None],
        rng.integers(0, cfg.interests_per_user, size=(num_users, cfg.user_pool_size)),
    ]
    pools = _draw_in_categories(world, pool_categories.reshape(-1), rng).reshape(
        num_users, cfg.user_pool_size
    )
    taste = world.item_latent[pools].mean(axis=1)
    taste /= np.linalg.norm(taste, axis=1, keepdims=True) + 1e-12

    train, _ = _user_samples(cfg, world, pools, taste, interests, cfg.samples_per_user, rng)
    test, test_prob = _user_samples(cfg, world, pools, taste, interests, cfg.test_samples_per_user, rng)
    per_client = cfg.users_per_client * cfg.samples_per_user
    clients = [
        train.subset(torch.arange(i * per_client, (i + 1) * per_client)) for i in range(cfg.num_clients)
    ]
    return RecsysData(
        config=cfg,
        world=world,
        clients=clients,
        test=test,
        test_oracle_prob=torch.from_numpy(test_prob.astype(np.float32)),
    )
