"""Uploading a data set through the page: checked in full, stored only when it passes (one clear error per
problem otherwise, nothing left behind), shown with its clients, usable by jobs as "uploaded"."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from training.fl.data_formats.writers import leaf_document, npz_bytes
from training.fl.datasets import load_dataset, load_digits
from training.jobs import datasets
from training.jobs.config import JobConfigError, parse_job_config
from training.models import DataSet

pytestmark = pytest.mark.django_db


def digits_leaf(users: int = 12) -> bytes:
    train = load_digits(seed=0).train
    x, y = train.x.numpy(), train.y.numpy()
    owners = [f"u{index % users:03d}" for index in range(len(y))]
    return leaf_document(x, y, owners)


def upload(client: Any, name: str, content: bytes, **fields: Any) -> Any:
    return client.post(
        "/jobs/datasets/upload/", {"name": "", "file": SimpleUploadedFile(name, content), **fields}
    )


def stored_files() -> list[str]:
    root = datasets.datasets_dir()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_a_leaf_upload_gives_one_client_per_user_and_its_page(operator_client: Any) -> None:
    response = upload(operator_client, "digits_leaf.json", digits_leaf(12), feature_shape="1,8,8")
    assert response.status_code == 302, response.content.decode()[:2000]
    dataset = DataSet.objects.get()
    assert dataset.format == "leaf" and dataset.summary["clients"]["count"] == 12
    assert dataset.summary["feature_shape"] == [1, 8, 8] and dataset.summary["num_classes"] == 10
    assert datasets.dataset_file(dataset).is_file()
    assert not any(name.startswith(".incoming") for name in stored_files())

    page = operator_client.get(response["Location"])
    assert page.status_code == 200
    html = page.content.decode()
    assert (
        "12 (samples per client" in html and 'id="figure-client_sizes"' in html and "figure-label_mix" in html
    )

    # A job uses it by id; the natural partition gives each phone whole users.
    config = parse_job_config(
        {"dataset": "uploaded", "dataset_params": {"dataset_id": dataset.pk}, "partition": "natural"}
    )
    splits = load_dataset(config.dataset, seed=0, **config.dataset_params)
    assert len(np.unique(splits.train.groups)) == 12 and splits.feature_shape == (1, 8, 8)
    with pytest.raises(JobConfigError) as caught:
        parse_job_config({"dataset": "uploaded", "dataset_params": {"dataset_id": dataset.pk + 1}})
    assert f"no stored data set #{dataset.pk + 1}" in caught.value.errors["dataset_params"]


@pytest.mark.parametrize("with_clients", [True, False])
def test_npz_and_csv_with_and_without_client_ids(operator_client: Any, with_clients: bool) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)).astype(np.float32), np.arange(60) % 3
    buffer = io.BytesIO()
    arrays = {"x": x, "y": y, **({"client_ids": np.arange(60) % 5} if with_clients else {})}
    np.savez(buffer, **arrays)
    header = "a,b,c,d,label" + (",client_id" if with_clients else "")
    rows = [
        ",".join([*map(str, x[i]), str(y[i])] + ([f"c{i % 4}"] if with_clients else [])) for i in range(60)
    ]
    csv_text = "\n".join([header, *rows]).encode()
    assert upload(operator_client, "arrays.npz", buffer.getvalue()).status_code == 302
    assert upload(operator_client, "table.csv", csv_text).status_code == 302
    npz_set, csv_set = DataSet.objects.get(format="npz"), DataSet.objects.get(format="csv")
    if with_clients:
        assert npz_set.summary["clients"]["count"] == 5 and csv_set.summary["clients"]["count"] == 4
    else:
        assert npz_set.summary["clients"] is None and csv_set.summary["clients"] is None
    assert npz_set.summary["num_classes"] == csv_set.summary["num_classes"] == 3


def malformed_cases() -> list[tuple[str, str, bytes, str]]:
    good_x = np.zeros((10, 3), dtype=np.float32)
    nan_x = good_x.copy()
    nan_x[2, 1] = np.nan
    wrong_shape = io.BytesIO()
    np.savez(wrong_shape, x=good_x, y=np.zeros(7, dtype=np.int64))
    leaf_bad_label = json.loads(leaf_document(good_x, np.arange(10) % 2, ["a"] * 5 + ["b"] * 5))
    leaf_bad_label["user_data"]["a"]["y"][0] = 7
    return [
        ("wrong shapes", "shapes.npz", wrong_shape.getvalue(), "10 feature rows but 7 labels"),
        ("NaN", "nan.npz", npz_bytes(nan_x, np.arange(10) % 2), "1 non-finite value(s)"),
        ("labels out of range", "labels.json", json.dumps(leaf_bad_label).encode(), "0..1: 1 are larger"),
        ("not the format it claims", "fake.npz", b"a,b,label\n1,2,0\n", "not an NPZ archive"),
        ("oversized", "big.csv", b"a,label\n" + b"1.0,0\n" * 400, "is 2408 bytes, over the limit of 1000"),
    ]


@pytest.mark.parametrize(("case", "name", "content", "reason"), malformed_cases(), ids=lambda v: str(v)[:20])
def test_each_malformed_upload_is_refused_with_its_reason_and_nothing_is_stored(
    operator_client: Any, settings: Any, case: str, name: str, content: bytes, reason: str
) -> None:
    settings.FEDFLEET_DATASET_MAX_BYTES = 1000
    before = stored_files()
    kwargs = {"num_classes": "2"} if case == "labels out of range" else {}
    response = upload(operator_client, name, content, **kwargs)
    assert response.status_code == 400
    html = response.content.decode()
    assert 'id="upload-problems"' in html and "Not stored" in html
    assert reason.lower() in html.lower(), html[html.find("upload-problems") :][:800]
    assert DataSet.objects.count() == 0
    assert stored_files() == before  # no temp file, no folder


def test_viewers_cannot_upload_or_delete(viewer_client: Any) -> None:
    assert upload(viewer_client, "d.json", digits_leaf(3)).status_code == 403
    assert DataSet.objects.count() == 0
    assert viewer_client.get("/jobs/datasets/").status_code == 200


def test_import_by_path_uses_the_same_checks(operator_user: Any, tmp_path: Any) -> None:
    from django.core.management import CommandError, call_command  # noqa: PLC0415

    good = tmp_path / "digits.json"
    good.write_bytes(digits_leaf(4))
    out = io.StringIO()
    call_command("import_dataset", str(good), owner=operator_user.username, feature_shape="1,8,8", stdout=out)
    assert json.loads(out.getvalue())["summary"]["clients"]["count"] == 4
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"a,label\nx,0\n")
    with pytest.raises(CommandError, match="refused, nothing stored") as caught:
        call_command("import_dataset", str(bad), owner=operator_user.username)
    assert caught.value.returncode == 2
    assert DataSet.objects.count() == 1
