import numpy as np
import pytest

from training.fl import partition
from training.fl.datasets import load_dataset


def assert_covers_once(parts, n):
    assert all(len(p) > 0 for p in parts), "no client may be empty"
    everything = np.concatenate(parts)
    assert len(everything) == n
    np.testing.assert_array_equal(np.sort(everything), np.arange(n))
    assert all(p.dtype == np.int64 for p in parts)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits").train


@pytest.mark.parametrize(
    ("scheme", "params"),
    [
        ("iid", {}),
        ("dirichlet", {"alpha": 0.1}),
        ("dirichlet", {"alpha": 100.0}),
        ("shards", {"shards_per_client": 2}),
        ("quantity", {"sigma": 2.0}),
    ],
)
@pytest.mark.parametrize("num_clients", [1, 7, 20, 100])
def test_every_sample_exactly_once(digits, scheme, params, num_clients):
    parts = partition.partition_dataset(scheme, digits, num_clients, seed=4, **params)
    assert len(parts) == num_clients
    assert_covers_once(parts, len(digits))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards", "quantity"])
def test_seeded(digits, scheme):
    a = partition.partition_dataset(scheme, digits, 10, seed=1)
    b = partition.partition_dataset(scheme, digits, 10, seed=1)
    c = partition.partition_dataset(scheme, digits, 10, seed=2)
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c, strict=True))


def test_iid_sizes_differ_by_at_most_one():
    sizes = [len(p) for p in partition.iid(1437, 20, seed=0)]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_small_alpha_skews_labels(digits):
    labels = digits.labels
    skewed = partition.dirichlet(labels, 10, alpha=0.05, seed=0)
    flat = partition.dirichlet(labels, 10, alpha=1000.0, seed=0)

    def mean_dominant_share(parts):
        return np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts])

    assert mean_dominant_share(skewed) > 0.5
    assert mean_dominant_share(flat) < 0.2


def test_dirichlet_never_leaves_a_client_empty():
    labels = np.repeat(np.arange(3), 4)  # 12 samples, 3 classes
    for seed in range(30):
        parts = partition.dirichlet(labels, 12, alpha=0.01, seed=seed)
        assert_covers_once(parts, 12)


def test_shards_give_each_client_few_labels(digits):
    labels = digits.labels
    parts = partition.shards(labels, 20, shards_per_client=2, seed=0)
    classes_per_client = [len(np.unique(labels[p])) for p in parts]
    # two label-sorted shards: at most 2 classes, +1 for each shard straddling a class boundary
    assert max(classes_per_client) <= 4
    assert np.mean(classes_per_client) <= 3


def test_quantity_skew_is_unequal():
    sizes = np.array([len(p) for p in partition.quantity_skew(1000, 20, sigma=1.5, seed=0)])
    assert sizes.sum() == 1000 and sizes.min() >= 1
    assert sizes.max() > 3 * np.median(sizes)


def test_natural_uses_synthetic_devices():
    data = load_dataset("synthetic", seed=0).train
    parts = partition.partition_dataset("natural", data, 30, seed=0)
    assert_covers_once(parts, len(data))
    assert all(len(np.unique(data.groups[p])) == 1 for p in parts)
    assert [int(data.groups[p[0]]) for p in parts] == list(range(30))


@pytest.mark.parametrize(
    ("scheme", "clients", "params", "message"),
    [
        ("natural", 30, {}, "no natural clients"),
        ("iid", 5000, {}, "at least one sample"),
        ("dirichlet", 10, {"alpha": 0}, "alpha must be > 0"),
        ("shards", 1000, {"shards_per_client": 2}, "non-empty shards"),
        ("zipf", 10, {}, "unknown partition"),
        ("iid", 10, {"alpha": 1}, "alpha"),
        ("iid", 0, {}, "at least one client"),
    ],
)
def test_bad_requests_raise_value_error(digits, scheme, clients, params, message):
    with pytest.raises(ValueError, match=message):
        partition.partition_dataset(scheme, digits, clients, seed=0, **params)


def test_natural_needs_at_least_one_user_per_phone():
    data = load_dataset("synthetic", seed=0).train
    with pytest.raises(ValueError, match="30 natural clients, fewer than 40"):
        partition.partition_dataset("natural", data, 40, seed=0)


def test_natural_with_fewer_phones_gives_each_phone_whole_users():
    data = load_dataset("synthetic", seed=0).train
    parts = partition.partition_dataset("natural", data, 10, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(data)))
    for index, part in enumerate(parts):  # users index, index + 10, index + 20: never split between phones
        assert set(np.unique(data.groups[part]).tolist()) == {index, index + 10, index + 20}
