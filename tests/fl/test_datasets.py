import numpy as np
import pytest
import torch

from training.fl import datasets


def test_digits_scaled_float32_with_fixed_split():
    a = datasets.load_dataset("digits")
    b = datasets.load_dataset("digits")
    assert len(a.train) + len(a.test) == 1797
    assert len(a.test) == 360
    assert a.train.x.dtype == torch.float32 and a.train.y.dtype == torch.int64
    assert a.feature_shape == (1, 8, 8) and a.num_classes == 10
    assert float(a.train.x.min()) == 0.0 and float(a.train.x.max()) == 1.0
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.test.y, b.test.y)
    # stratified: every class is in the test set in about its share
    assert np.bincount(a.test.labels, minlength=10).min() >= 34


def test_digits_split_depends_on_data_seed():
    a = datasets.load_dataset("digits", seed=0)
    b = datasets.load_dataset("digits", seed=1)
    assert not torch.equal(a.test.y, b.test.y)


def test_synthetic_shapes_and_per_device_split():
    splits = datasets.load_dataset("synthetic", seed=3, alpha=1.0, beta=1.0)
    devices = datasets.generate_synthetic(1.0, 1.0, seed=3)
    assert len(devices) == 30
    assert splits.feature_shape == (60,) and splits.num_classes == 10
    assert splits.train.x.dtype == torch.float32
    sizes = np.array([len(d.y) for d in devices])
    assert sizes.min() >= 50
    train_sizes = np.bincount(splits.train.groups, minlength=30)
    np.testing.assert_array_equal(train_sizes, (0.9 * sizes).astype(int))
    assert len(splits.test) == int(sizes.sum() - train_sizes.sum())
    assert set(np.unique(splits.train.labels)) <= set(range(10))
    # labels are argmax(xW + b): more than one class occurs overall
    assert len(np.unique(splits.train.labels)) >= 5


def test_synthetic_is_seed_deterministic():
    a = datasets.generate_synthetic(0.5, 0.5, seed=11)
    b = datasets.generate_synthetic(0.5, 0.5, seed=11)
    c = datasets.generate_synthetic(0.5, 0.5, seed=12)
    assert all(np.array_equal(p.x, q.x) and np.array_equal(p.y, q.y) for p, q in zip(a, b, strict=True))
    assert not np.array_equal(a[0].x[:5], c[0].x[:5])


def test_synthetic_sample_counts_are_lognormal_plus_50():
    rng = np.random.default_rng(5)
    expected = rng.lognormal(4, 2, 30).astype(np.int64) + 50
    got = [len(d.y) for d in datasets.generate_synthetic(1, 1, seed=5)]
    assert got == expected.tolist()


def test_synthetic_feature_variance_follows_sigma():
    # With alpha = beta = 0 every device's mean v_k ~ N(0, 1) per coordinate; within a device the spread
    # around v_k must follow Σ_jj = j^-1.2.
    devices = datasets.generate_synthetic(0, 0, seed=1)
    big = max(devices, key=lambda d: len(d.y))
    assert len(big.y) > 500
    var = big.x.var(axis=0)
    expected = np.arange(1, 61, dtype=float) ** -1.2
    np.testing.assert_allclose(var[:5], expected[:5], rtol=0.25)


def test_synthetic_iid_shares_one_model_and_zero_mean():
    devices = datasets.generate_synthetic(1, 1, iid=True, seed=2)
    pooled = np.concatenate([d.x for d in devices])
    assert abs(pooled[:, 0].mean()) < 0.1  # v = 0 (coordinate 0 has variance 1)
    per_device_means = [d.x[:, 0].mean() for d in devices if len(d.y) > 200]
    assert max(abs(m) for m in per_device_means) < 0.3


def test_non_iid_devices_have_different_means():
    devices = datasets.generate_synthetic(1, 1, seed=2)
    means = [d.x[:, 0].mean() for d in devices]
    assert np.std(means) > 0.5


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("mnist", {}, "unknown data set"),
        ("synthetic", {"alpha": -1}, "alpha"),
        ("digits", {"gamma": 1}, "gamma"),
        ("digits", {"test_fraction": 1.5}, "test_fraction"),
    ],
)
def test_bad_dataset_requests_raise_value_error(name, params, message):
    with pytest.raises(ValueError, match=message):
        datasets.load_dataset(name, **params)


def test_subset_keeps_groups_aligned():
    splits = datasets.load_dataset("synthetic", seed=0)
    idx = np.array([5, 0, 9])
    sub = splits.train.subset(idx)
    assert torch.equal(sub.y, splits.train.y[torch.tensor([5, 0, 9])])
    np.testing.assert_array_equal(sub.groups, splits.train.groups[idx])
