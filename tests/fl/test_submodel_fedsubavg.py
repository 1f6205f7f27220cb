"""FedSubAvg: per-row aggregation against hand-computed means and FedAvg, per-client instructions, the
request step, the phone-side client, and a short in-process job that learns."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from training.fl.client import CLIENT_ALGORITHMS, ClientTask, client_config_for_round, client_train
from training.fl.ctr_model import CTRModel, CTRModelConfig, build_ctr_model, evaluate_ctr
from training.fl.fedavg import FedAvg
from training.fl.fedsubavg import (
    FedSubAvg,
    FullModelFedAvg,
    fedsubavg_client_request,
)
from training.fl.recsys_data import RecsysConfig, generate_recsys
from training.fl.registry import make_strategy
from training.fl.strategy import ClientInfo, ClientUpdate
from training.fl.submodel import densify_update, index_sets_of, union_of

MODEL = CTRModelConfig(emb_dim=8, hidden=(16,), attention_hidden=8)
BASE = {"model": {"name": "ctr", **MODEL.to_json()}, "epochs": 1, "batch_size": 16, "lr": 0.01}


def _sparse(ids, rows, counts, dense):
    return {
        "emb.item.idx": torch.tensor(ids, dtype=torch.int64),
        "emb.item.rows": torch.tensor(rows, dtype=torch.float32),
        "emb.item.count": torch.tensor(counts, dtype=torch.float32),
        "dense.w": torch.tensor(dense, dtype=torch.float32),
    }


# Three clients over a 6-row table: row 0 touched by all, row 1 by A and B, row 2 requested by A but not
# trained (count 0), row 3 by nobody, rows 4 and 5 by one client each.
FIXED = [
    ("A", _sparse([0, 1, 2], [[1, 1], [2, 2], [0, 0]], [1, 2, 0], [1, 1, 1])),
    ("B", _sparse([0, 1, 4], [[3, 3], [4, 4], [6, 6]], [1, 1, 3], [2, 2, 2])),
    ("C", _sparse([0, 5], [[5, 5], [9, 9]], [2, 1], [0, 0, 0])),
]


def _tiny_state(strategy):
    return strategy.initial_state({"emb.item.weight": torch.zeros(6, 2), "dense.w": torch.zeros(3)})


def _updates(samples):
    return [ClientUpdate(cid, n, tensors) for (cid, tensors), n in zip(FIXED, samples, strict=True)]


@pytest.mark.parametrize(
    ("row_weight", "expected_rows"),
    [
        ("touched", [3.0, 3.0, 0.0, 0.0, 6.0, 9.0]),  # plain mean over the clients that trained the row
        ("count", [3.5, 8 / 3, 0.0, 0.0, 6.0, 9.0]),  # (1·1 + 1·3 + 2·5)/4, (2·2 + 1·4)/3
    ],
)
def test_fedsubavg_equals_hand_computed_per_row_means(row_weight, expected_rows) -> None:
    strategy = FedSubAvg(tables=["emb.item"], row_weight=row_weight, privacy="none")
    state, metrics = strategy.aggregate(_tiny_state(strategy), 1, _updates([10, 30, 20]), [])
    rows = state.weights["emb.item.weight"]
    assert torch.allclose(rows[:, 0], torch.tensor(expected_rows), atol=1e-6)
    assert torch.equal(rows[:, 0], rows[:, 1])
    assert torch.allclose(state.weights["dense.w"], torch.full((3,), 70 / 60))  # Σ n_i Δ_i / Σ n_i
    assert metrics["emb.item.rows_updated"] == 4.0  # rows 0, 1, 4, 5


def test_fedsubavg_differs_from_fedavg_exactly_on_rarely_touched_rows() -> None:
    fedsubavg = FedSubAvg(tables=["emb.item"], privacy="none")
    sub_state, _ = fedsubavg.aggregate(_tiny_state(fedsubavg), 1, _updates([20, 20, 20]), [])
    shapes = {"emb.item.weight": (6, 2), "dense.w": (3,)}
    dense_updates = [
        ClientUpdate(cid, 20, densify_update(tensors, shapes, ["emb.item"])[0]) for cid, tensors in FIXED
    ]
    fedavg = FedAvg()
    avg_state, _ = fedavg.aggregate(
        fedavg.initial_state(_tiny_state(fedsubavg).weights), 1, dense_updates, []
    )
    sub_rows, avg_rows = (
        sub_state.weights["emb.item.weight"][:, 0],
        avg_state.weights["emb.item.weight"][:, 0],
    )
    differs = ~torch.isclose(sub_rows, avg_rows, atol=1e-6)
    assert differs.nonzero().reshape(-1).tolist() == [1, 4, 5]  # touched by some clients, not all
    assert avg_rows[1:].tolist() == pytest.approx([2.0, 0.0, 0.0, 2.0, 3.0])  # FedAvg shrinks them
    assert torch.allclose(sub_state.weights["dense.w"], avg_state.weights["dense.w"])


@pytest.fixture(scope="module")
def data():
    return generate_recsys(
        RecsysConfig(num_items=5_000, num_categories=40, num_clients=8, samples_per_user=300, seed=1)
    )


def _server(data, strategy):
    model = build_ctr_model(data.num_items, data.num_categories, MODEL, seed=0)
    state = strategy.initial_state(dict(model.state_dict()))
    if isinstance(strategy, FedSubAvg):
        strategy.set_union(state, union_of([index_sets_of(c) for c in data.clients]))
    return state


def _task(config, tensors, samples, state_dir=None):
    x, y = samples.to_xy()
    return ClientTask(config=config, received=tensors, x=x, y=y, state_dir=state_dir)


def test_configure_sends_each_client_its_own_rows(data) -> None:
    strategy = FedSubAvg(privacy="none")
    state = _server(data, strategy)
    with pytest.raises(ValueError, match="no submodel request from c0"):
        strategy.configure(state, 1, ["c0"], BASE)
    for i in (0, 1):
        strategy.set_request(state, 1, f"c{i}", index_sets_of(data.clients[i]))
    plan = strategy.configure(state, 1, ["c0", "c1"], BASE)
    for i, instructions in enumerate(plan):
        real = index_sets_of(data.clients[i])
        assert torch.equal(instructions.tensors["emb.item.idx"], real["emb.item"])
        expected_rows = state.weights["emb.item.weight"][real["emb.item"]]
        assert torch.equal(instructions.tensors["emb.item.weight"], expected_rows)
        assert torch.equal(instructions.tensors["mlp.0.weight"], state.weights["mlp.0.weight"])
        assert instructions.config["algorithm"] == "fedsubavg"
        assert instructions.config["index_privacy"]["name"] == "none"
    assert not torch.equal(plan[0].tensors["emb.item.idx"], plan[1].tensors["emb.item.idx"])


def test_requests_outside_the_union_or_the_table_are_refused(data) -> None:
    strategy = FedSubAvg()
    state = _server(data, strategy)
    union = strategy.union(state)["emb.item"]
    outside = next(i for i in range(data.num_items) if i not in set(union.tolist()))
    with pytest.raises(ValueError, match="outside the union"):
        strategy.set_request(
            state, 1, "c0", {"emb.item": torch.tensor([outside]), "emb.cat": torch.tensor([0])}
        )
    with pytest.raises(ValueError, match="lacks table emb.cat"):
        strategy.set_request(state, 1, "c0", {"emb.item": union[:3]})
    good = {"emb.item.idx": union[:3], "emb.cat.idx": torch.tensor([0, 1])}
    assert strategy.parse_request(state, good)["emb.item"].tolist() == union[:3].tolist()
    for bad, reason in [
        ({**good, "emb.item.idx": union[:3].flip(0)}, "sorted"),
        ({**good, "emb.item.idx": torch.tensor([outside])}, "outside the union"),
        ({**good, "emb.cat.idx": torch.tensor([0.0, 1.0])}, "int64"),
        ({"emb.item.idx": union[:3]}, "missing emb.cat.idx"),
        ({**good, "secret": torch.zeros(1)}, "unexpected tensors: secret"),
    ]:
        with pytest.raises(ValueError, match=reason):
            strategy.parse_request(state, bad)


def test_request_step_on_the_phone_memoises_and_is_accepted_by_the_server(data, tmp_path: Path) -> None:
    strategy = FedSubAvg(privacy="default")
    state = _server(data, strategy)
    tensors, config = strategy.request_round_inputs(state, BASE)
    assert set(tensors) == {"emb.item.union", "emb.cat.union"}
    x, y = data.clients[0].to_xy()
    upload = fedsubavg_client_request(config, tensors, x, y, tmp_path, seed=3)
    assert (tmp_path / "index_privacy.emb.item.safetensors").exists()
    request = strategy.parse_request(state, upload)
    real = index_sets_of(data.clients[0])["emb.item"]
    hidden = ~torch.isin(real, request["emb.item"])
    decoys = ~torch.isin(request["emb.item"], real)
    assert int(hidden.sum()) > 0 and int(decoys.sum()) > 0  # some real ids withheld, some decoys added


def test_without_decoys_the_phone_needs_no_union(data, tmp_path: Path) -> None:
    x, y = data.clients[0].to_xy()
    real = index_sets_of(data.clients[0])
    strategy = FedSubAvg(privacy="none")
    state = _server(data, strategy)
    _, config = strategy.request_round_inputs(state, BASE)
    upload = fedsubavg_client_request(config, {}, x, y, tmp_path / "none", seed=3)
    assert {k: v.tolist() for k, v in upload.items()} == {t + ".idx": ids.tolist() for t, ids in real.items()}
    assert strategy.parse_request(state, upload)  # still checked against U on the server
    # With decoys, U is what they are drawn from: the phone cannot do without it.
    strategy = FedSubAvg(privacy="default")
    _, config = strategy.request_round_inputs(_server(data, strategy), BASE)
    with pytest.raises(ValueError, match="emb.item.union"):
        fedsubavg_client_request(config, {}, x, y, tmp_path / "default", seed=3)


def test_uploads_are_validated_against_the_clients_request(data) -> None:
    strategy = FedSubAvg(privacy="none")
    state = _server(data, strategy)
    strategy.set_request(state, 1, "c0", index_sets_of(data.clients[0]))
    (instructions,) = strategy.configure(state, 1, ["c0"], BASE)
    result = client_train(
        _task(
            client_config_for_round(instructions.config, job_seed=0, round_no=1, client_id="c0"),
            instructions.tensors,
            data.clients[0],
        )
    )
    upload = result.upload()
    assert strategy.validate_update(state, "c0", upload, result.num_samples) == []
    assert strategy.validate_update(state, "c9", upload) == ["'no submodel request recorded for client c9'"]
    other = index_sets_of(data.clients[1])
    strategy.set_request(state, 1, "c1", other)
    assert any("not requested" in p for p in strategy.validate_update(state, "c1", upload))
    assert set(strategy.expected_upload(state.weights)) == {
        k for k in state.weights if not k.startswith("emb.")
    }
    new_state, _ = strategy.aggregate(state, 1, [ClientUpdate("c0", result.num_samples, upload)], [])
    assert "c0" not in new_state.meta["fedsubavg.requests"]  # requests are per round
    assert "fedsubavg.request.c0.emb.item" not in new_state.buffers
    assert "c1" in new_state.meta["fedsubavg.requests"]


def test_client_side_trains_the_full_model_when_the_download_has_no_indices(data) -> None:
    assert "fedsubavg" in CLIENT_ALGORITHMS
    baseline = make_strategy("fedavg_full")
    assert isinstance(baseline, FullModelFedAvg)
    state = _server(data, baseline)
    (instructions,) = baseline.configure(state, 1, ["c0"], BASE)
    assert instructions.config["algorithm"] == "fedsubavg" and "emb.item.idx" not in instructions.tensors
    events = []
    task = _task({**instructions.config, "seed": 5}, instructions.tensors, data.clients[0])
    result = client_train(ClientTask(**{**task.__dict__, "progress": events.append}))
    assert set(result.delta) == set(state.weights)
    assert result.delta["emb.item.weight"].shape == (data.num_items, 8)
    assert result.num_samples == len(data.clients[0]) and result.loss_after < result.loss_before
    assert len(events) == result.steps == result.planned_steps and events[-1].step == result.steps


def test_one_client_gives_the_same_model_either_way_and_fedavg_shrinks_single_client_rows(data) -> None:
    """Apples to apples: identical local training, so FedSubAvg and FedAvg agree on one client, and with
    two clients FedAvg scales a row only client i trained by n_i / Σ n."""
    outcomes = {}
    for name, strategy in (("sub", FedSubAvg(privacy="none")), ("full", FullModelFedAvg())):
        state = _server(data, strategy)
        clients = {"c0": data.clients[0], "c1": data.clients[1]}
        states = []
        for chosen in (["c0"], ["c0", "c1"]):
            if isinstance(strategy, FedSubAvg):
                for cid in chosen:
                    strategy.set_request(state, 1, cid, index_sets_of(clients[cid]))
            updates = []
            for ins in strategy.configure(state, 1, chosen, BASE):
                result = client_train(_task({**ins.config, "seed": 1}, ins.tensors, clients[ins.client_id]))
                updates.append(ClientUpdate(ins.client_id, result.num_samples, result.upload()))
            states.append(strategy.aggregate(state, 1, updates, [])[0])
        outcomes[name] = (state, states)
    start = outcomes["sub"][0].weights
    (sub_one, sub_two), (full_one, full_two) = outcomes["sub"][1], outcomes["full"][1]
    for key in start:
        assert torch.allclose(sub_one.weights[key], full_one.weights[key], atol=3e-5), key
    only_c1 = index_sets_of(data.clients[1])["emb.item"]
    only_c1 = only_c1[~torch.isin(only_c1, index_sets_of(data.clients[0])["emb.item"])]
    sub_delta = sub_two.weights["emb.item.weight"][only_c1] - start["emb.item.weight"][only_c1]
    full_delta = full_two.weights["emb.item.weight"][only_c1] - start["emb.item.weight"][only_c1]
    assert torch.allclose(full_delta, 0.5 * sub_delta, atol=3e-5)  # n_0 = n_1 = 300


def test_a_short_fedsubavg_job_with_index_privacy_learns(data, tmp_path: Path) -> None:
    strategy = make_strategy("fedsubavg", {"privacy": "default"})
    assert isinstance(strategy, FedSubAvg)
    state = _server(data, strategy)
    eval_model = CTRModel(data.num_items, data.num_categories, MODEL)

    def test_auc(weights) -> float:
        eval_model.load_state_dict(weights)
        return evaluate_ctr(eval_model, data.test)["auc"]

    before = test_auc(state.weights)
    clients = {f"c{i}": samples for i, samples in enumerate(data.clients)}
    available = [ClientInfo(cid, len(s)) for cid, s in clients.items()]
    for round_no in range(1, 7):
        chosen = strategy.select(state, round_no, available, 6, random.Random(round_no))
        union_tensors, request_config = strategy.request_round_inputs(state, BASE)
        for cid in chosen:
            x, y = clients[cid].to_xy()
            seed = round_no * 100 + int(cid[1:])  # fixed here; phones draw unpredictable randomness
            upload = fedsubavg_client_request(request_config, union_tensors, x, y, tmp_path / cid, seed=seed)
            strategy.set_request(state, round_no, cid, strategy.parse_request(state, upload))
        updates = []
        for ins in strategy.configure(state, round_no, chosen, {**BASE, "lr": 0.003}):
            config = client_config_for_round(
                ins.config, job_seed=0, round_no=round_no, client_id=ins.client_id
            )
            result = client_train(
                _task(config, ins.tensors, clients[ins.client_id], tmp_path / ins.client_id)
            )
            assert strategy.validate_update(state, ins.client_id, result.upload(), result.num_samples) == []
            updates.append(ClientUpdate(ins.client_id, result.num_samples, result.upload()))
        state, metrics = strategy.aggregate(state, round_no, updates, [])
        assert metrics["num_reported"] == 6.0
    after = test_auc(state.weights)
    assert before == pytest.approx(0.5, abs=0.06)
    assert after > 0.63, (before, after)
