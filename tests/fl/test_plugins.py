"""Plug-in models and data sets: typed parameters, their validation, discovery through entry points, and
the example plug-in (plugins/fedfleet_example, installed in editable mode by the Makefile) beside the
built-ins."""

import inspect
import sys
import textwrap
from importlib import metadata

import numpy as np
import pytest
import torch

from training.fl import datasets, nets, plugins
from training.fl.ctr_model import CTRModelConfig
from training.fl.partition import natural, partition_dataset
from training.fl.plugins import (
    DatasetDeclaration,
    DeclarationError,
    ModelDeclaration,
    Param,
    ParamError,
    PluginError,
    validate_params,
)

WIDTH = Param("width", "int", 64, min=1, max=512, help="units")
RATE = Param("rate", "float", 0.5, min=0.0, max=1.0)
MODE = Param("mode", "str", "a", choices=("a", "b"))
FLAG = Param("flag", "bool", False)
SIZES = Param("sizes", "ints", (8, 4), min=1, max=100, max_items=3)
ALL = (WIDTH, RATE, MODE, FLAG, SIZES)


# --------------------------------------------------------------------------------- validate_params


def test_defaults_fill_in_and_ints_come_back_as_lists():
    assert validate_params("m", ALL, {}) == {
        "width": 64,
        "rate": 0.5,
        "mode": "a",
        "flag": False,
        "sizes": [8, 4],
    }


def test_given_values_are_checked_and_normalised():
    got = validate_params("m", ALL, {"width": 3.0, "rate": 1, "sizes": (5,), "flag": True, "mode": "b"})
    assert got == {"width": 3, "rate": 1.0, "mode": "b", "flag": True, "sizes": [5]}
    assert isinstance(got["width"], int) and isinstance(got["rate"], float)


def test_every_problem_is_listed_in_one_error():
    given = {
        "width": 0,
        "rate": float("nan"),
        "mode": "c",
        "flag": 1,
        "sizes": [1, 2, 3, 4],
        "depth": 2,
        "colour": "red",
    }
    with pytest.raises(ParamError) as caught:
        validate_params("model 'm'", ALL, given)
    problems = caught.value.problems
    assert problems == (
        "unknown parameter(s) colour, depth (it takes width, rate, mode, flag, sizes)",
        "width must be >= 1, got 0",
        "rate must be a finite number, got nan",
        "mode must be one of a, b, got 'c'",
        "flag must be true or false, got 1",
        "sizes must have at most 3 items, got 4",
    )
    assert str(caught.value).startswith("model 'm': unknown parameter(s)")


@pytest.mark.parametrize(
    ("param", "value", "problem"),
    [
        (WIDTH, True, "must be an integer, got True"),
        (WIDTH, 2.5, "must be an integer, got 2.5"),
        (WIDTH, "3", "must be an integer, got '3'"),
        (WIDTH, 513, "must be <= 512, got 513"),
        (RATE, "0.1", "must be a finite number, got '0.1'"),
        (RATE, -0.5, "must be >= 0, got -0.5"),
        (MODE, 3, "must be a string, got 3"),
        (SIZES, [], "must be a non-empty list of integers, got []"),
        (SIZES, [4, "x"], "must be a list of integers, got [4, 'x']"),
        (SIZES, [4, 0], "every item must be >= 1, got 0"),
        (SIZES, 4, "must be a non-empty list of integers, got 4"),
    ],
)
def test_a_value_of_the_wrong_type_or_range_is_refused(param, value, problem):
    assert param.check(value) == (None, problem)


def test_form_text_is_parsed_by_type():
    text = {"width": " 32 ", "rate": "0.25", "mode": "b", "flag": "on", "sizes": "16, 8,4"}
    assert validate_params("m", ALL, text, from_text=True) == {
        "width": 32,
        "rate": 0.25,
        "mode": "b",
        "flag": True,
        "sizes": [16, 8, 4],
    }
    assert validate_params("m", ALL, {"width": "", "sizes": ""}, from_text=True)["width"] == 64
    with pytest.raises(ParamError) as caught:
        validate_params("m", ALL, {"width": "wide", "flag": "maybe", "sizes": "8,x"}, from_text=True)
    assert caught.value.problems == (
        "width must be an integer, got 'wide'",
        "flag must be true or false, got 'maybe'",
        "sizes must be an integer, got 'x'",
    )


def test_parameters_must_be_an_object():
    with pytest.raises(ParamError, match="parameters must be an object"):
        validate_params("m", ALL, [1, 2])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "Width", "type": "int", "default": 1}, "a name is 1-40 characters"),
        ({"name": "seed", "type": "int", "default": 1}, "reserved"),
        ({"name": "w", "type": "complex", "default": 1}, "type must be one of"),
        ({"name": "w", "type": "int", "default": 0, "min": 1}, "the default does not fit"),
        ({"name": "w", "type": "int", "default": 1, "min": 5, "max": 2}, "min 5 is above max 2"),
        ({"name": "w", "type": "str", "default": "a", "min": 0}, "has no min/max"),
        ({"name": "w", "type": "int", "default": 1, "choices": ("a",)}, "choices are for str"),
        ({"name": "w", "type": "ints", "default": [1], "max_items": 0}, "max_items"),
        ({"name": "w", "type": "float", "default": 1.0, "max": float("inf")}, "max must be a finite"),
    ],
)
def test_malformed_parameter_declarations_are_refused(fields, message):
    with pytest.raises(DeclarationError, match=message):
        Param(**fields)


def test_a_parameter_describes_itself_for_the_form_and_the_api():
    assert SIZES.to_json() == {
        "name": "sizes",
        "type": "ints",
        "default": [8, 4],
        "help": "",
        "min": 1,
        "max": 100,
        "max_items": 3,
    }
    assert MODE.to_json()["choices"] == ["a", "b"]


def test_a_model_cannot_declare_what_fedfleet_or_the_data_set_sets():
    with pytest.raises(DeclarationError, match="num_classes are set by FedFleet"):
        ModelDeclaration("m", nets.MLP, (Param("num_classes", "int", 2),))
    with pytest.raises(DeclarationError, match="num_items are set by FedFleet or the data set"):
        ModelDeclaration("m", nets.MLP, (Param("num_items", "int", 2),), data_kwargs={"num_items"})
    with pytest.raises(DeclarationError, match="declared twice"):
        ModelDeclaration("m", nets.MLP, (WIDTH, WIDTH))
    with pytest.raises(DeclarationError, match="build must be callable"):
        ModelDeclaration("m", 3)


# ------------------------------------------------------------------------------------------ discovery


@pytest.fixture
def plugin_module(tmp_path, monkeypatch, request):
    """A module on sys.path holding declarations of every kind, good and bad."""
    name = f"fake_plugin_{request.node.name.replace('[', '_').replace(']', '').replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def build(input_shape, num_classes, *, width):
                return nn.Linear(input_shape[0], num_classes)

            def load(*, seed, size):
                return "not a DatasetSplits"

            AS_MAPPING = {
                "build": build,
                "label": "Mapped",
                "params": [{"name": "width", "type": "int", "default": 4, "min": 1}],
            }
            BAD_FIELD = {"build": build, "colour": "red"}
            BAD_PARAM = {"build": build, "params": [{"name": "width", "type": "int", "default": -1, "min": 0}]}
            NOT_A_DECLARATION = build

            def broken(input_shape, num_classes):
                raise RuntimeError("boom")

            BROKEN = {"build": broken}
            WRONG_TYPE = {"build": lambda input_shape, num_classes: "not a module"}
            DATA = {"load": load, "params": [{"name": "size", "type": "int", "default": 3}]}
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def entry(name, value, group=plugins.MODELS_GROUP):
    return metadata.EntryPoint(name=name, value=value, group=group)


def test_discovery_keeps_good_plugins_and_says_why_the_others_were_left_out(plugin_module):
    found = plugins.discover(
        ModelDeclaration,
        plugins.MODELS_GROUP,
        [
            entry("mapped", f"{plugin_module}:AS_MAPPING"),
            entry("mlp", f"{plugin_module}:AS_MAPPING"),
            entry("twice", f"{plugin_module}:AS_MAPPING"),
            entry("twice", f"{plugin_module}:AS_MAPPING"),
            entry("missing", "no_such_module_anywhere:THING"),
            entry("bad_field", f"{plugin_module}:BAD_FIELD"),
            entry("bad_param", f"{plugin_module}:BAD_PARAM"),
            entry("function", f"{plugin_module}:NOT_A_DECLARATION"),
            entry("Bad-Name", f"{plugin_module}:AS_MAPPING"),
        ],
        reserved={"mlp"},
    )
    assert list(found.declarations) == ["mapped"]
    mapped = found.declarations["mapped"]
    assert mapped.label == "Mapped" and mapped.origin == f"module {plugin_module}"
    assert mapped.defaults() == {"width": 4}
    reasons = {p.name: p.reason for p in found.problems}
    assert reasons["mlp"] == "'mlp' is a built-in name"
    assert reasons["twice"] == "2 installed plug-ins declare 'twice'"
    assert reasons["missing"].startswith("cannot be imported: ModuleNotFoundError")
    assert reasons["bad_field"].startswith("unknown field(s) colour")
    assert "the default does not fit the declaration: must be >= 0, got -1" in reasons["bad_param"]
    assert reasons["function"] == "the entry point must name a ModelDeclaration or a mapping, got function"
    assert reasons["Bad-Name"].startswith("a name is 1-40 characters")
    assert [p.name for p in found.problems].count("twice") == 2


def test_an_unavailable_plugin_is_named_with_its_reason(plugin_module):
    found = plugins.discover(
        ModelDeclaration, plugins.MODELS_GROUP, [entry("broken", "no_such_module_anywhere:X")]
    )
    with pytest.raises(ValueError, match="model plug-in 'broken' .* is not available: cannot be imported"):
        raise found.unknown("model", "broken", ["mlp"])
    assert str(found.unknown("model", "other", ["mlp"])) == "unknown model 'other'; known: mlp"


def test_a_plugin_model_is_validated_and_its_failures_named(plugin_module, monkeypatch):
    found = plugins.discover(
        ModelDeclaration,
        plugins.MODELS_GROUP,
        [
            entry("mapped", f"{plugin_module}:AS_MAPPING"),
            entry("broken", f"{plugin_module}:BROKEN"),
            entry("wrong", f"{plugin_module}:WRONG_TYPE"),
        ],
    )
    monkeypatch.setattr(nets, "plugin_models", lambda: found)
    model = nets.build_model("mapped", input_shape=(6,), num_classes=3, seed=0, width=5)
    assert model(torch.zeros(2, 6)).shape == (2, 3)
    with pytest.raises(ParamError, match="width must be >= 1, got 0"):
        nets.build_model("mapped", input_shape=(6,), num_classes=3, width=0)
    with pytest.raises(PluginError, match=r"model plug-in 'broken' \(module .*\) failed: RuntimeError: boom"):
        nets.build_model("broken", input_shape=(6,), num_classes=3)
    with pytest.raises(PluginError, match="returned str, not a torch module"):
        nets.build_model("wrong", input_shape=(6,), num_classes=3)
    assert nets.model_names()[-3:] == ["broken", "mapped", "wrong"]


def test_a_plugin_data_set_must_return_dataset_splits(plugin_module, monkeypatch):
    found = plugins.discover(
        DatasetDeclaration,
        plugins.DATASETS_GROUP,
        [entry("fake", f"{plugin_module}:DATA", plugins.DATASETS_GROUP)],
    )
    monkeypatch.setattr(datasets, "plugin_datasets", lambda: found)
    assert "fake" in datasets.dataset_names()
    with pytest.raises(PluginError, match="returned str, not DatasetSplits"):
        datasets.load_dataset("fake")
    with pytest.raises(ParamError, match="size must be an integer"):
        datasets.load_dataset("fake", size="big")


# ----------------------------------------------------------------------- the installed example plug-in


def test_the_example_plugin_is_installed_beside_the_built_ins():
    assert nets.plugin_models().problems == ()
    assert datasets.plugin_datasets().problems == ()
    assert nets.model_names() == ["cnn", "ctr", "logreg", "mlp", "residual_mlp"]
    # "uploaded" (stored data sets) is registered by the training app when Django starts, as here.
    assert datasets.dataset_names() == ["digits", "recsys", "synthetic", "uploaded", "blobs"]
    declaration = nets.model_declaration("residual_mlp")
    assert declaration.origin == "fedfleet-example 0.1.0"
    assert declaration.to_json()["params"][0] == {
        "name": "width",
        "type": "int",
        "default": 64,
        "help": "width of every layer",
        "min": 1,
        "max": 2048,
    }
    assert nets.model_declaration("mlp").origin == plugins.BUILT_IN


def test_the_example_model_builds_from_a_spec_and_trains_like_a_built_in():
    params = nets.validate_model_params("residual_mlp", {"width": "16", "blocks": "1"}, from_text=True)
    assert params == {"width": 16, "blocks": 1, "activation": "relu"}
    spec = nets.model_spec_for("residual_mlp", input_shape=(1, 8, 8), num_classes=10, **params)
    weights = nets.initial_weights(spec, seed=3)
    again = nets.get_weights(nets.build_model_from_spec(spec, seed=3))
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    assert all(v.dtype == torch.float32 for v in weights.values())
    model = nets.build_model_from_spec(spec)
    assert dict(model.state_dict()).keys() == dict(model.named_parameters()).keys()  # no buffers
    assert (
        nets.spec_parameter_count(spec)
        == nets.count_parameters(model)
        == 64 * 16 + 16 + 2 * (16 * 16 + 16) + 16 * 10 + 10
    )
    with pytest.raises(ParamError, match="activation must be one of relu, tanh"):
        nets.build_model_from_spec({**spec, "activation": "gelu"})


def test_the_example_data_set_loads_with_natural_clients():
    params = datasets.validate_dataset_params("blobs", {"num_clients": 5, "samples_per_client": 40})
    splits = datasets.load_dataset("blobs", seed=2, **params)
    assert splits.num_classes == 4 and splits.feature_shape == (16,)
    assert len(splits.train) == 5 * 32 and len(splits.test) == 5 * 8
    parts = partition_dataset("natural", splits.train, 5, seed=0)
    assert [len(p) for p in parts] == [32] * 5
    again = datasets.load_dataset("blobs", seed=2, **params)
    assert torch.equal(splits.train.x, again.train.x)
    with pytest.raises(ParamError, match="num_clients must be >= 1, got 0"):
        datasets.load_dataset("blobs", num_clients=0)


def test_a_plugin_loader_shows_its_parameters_in_its_signature():
    # The job form reads a data set's parameters and defaults from its loader's keyword-only signature.
    signature = inspect.signature(datasets.DATASET_LOADERS["blobs"])
    defaults = {p.name: p.default for p in signature.parameters.values()}
    assert defaults == {"seed": 0, **datasets.dataset_declaration("blobs").defaults()}
    assert list(datasets.DATASET_LOADERS) == ["digits", "synthetic", "recsys", "uploaded", "blobs"]
    with pytest.raises(KeyError):
        datasets.DATASET_LOADERS["nope"]


# --------------------------------------------------------------------------- built-in declarations


def _signature_defaults(function):
    return {
        p.name: p.default
        for p in inspect.signature(function).parameters.values()
        if p.default is not inspect.Parameter.empty
    }


def test_built_in_model_defaults_are_todays_fixed_sizes():
    mlp = nets.validate_model_params("mlp", {})
    cnn = nets.validate_model_params("cnn", {})
    assert mlp == {"hidden": list(_signature_defaults(nets.MLP)["hidden"])} == {"hidden": [200, 200]}
    assert cnn == {"channels": [16, 32], "fc_width": 64}
    assert {
        k: list(v) if isinstance(v, tuple) else v for k, v in _signature_defaults(nets.DigitsCNN).items()
    } == cnn
    ctr = nets.validate_model_params("ctr", {})
    assert ctr == CTRModelConfig().to_json()
    assert nets.validate_model_params("logreg", {}) == {}


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_a_job_without_model_parameters_trains_the_same_model_as_before(name):
    spec = nets.model_spec_for(name, input_shape=(1, 8, 8), num_classes=10)
    with_defaults = {**spec, **nets.validate_model_params(name, {})}
    a, b = nets.initial_weights(spec, seed=5), nets.initial_weights(with_defaults, seed=5)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_cnn_parameter_names_are_unchanged_and_sizes_follow_the_parameters():
    default = nets.build_model("cnn", input_shape=(1, 8, 8), num_classes=10)
    assert {k: tuple(v.shape) for k, v in default.state_dict().items()} == {
        "features.0.weight": (16, 1, 3, 3),
        "features.0.bias": (16,),
        "features.2.weight": (32, 16, 3, 3),
        "features.2.bias": (32,),
        "classifier.0.weight": (64, 32 * 4 * 4),
        "classifier.0.bias": (64,),
        "classifier.2.weight": (10, 64),
        "classifier.2.bias": (10,),
    }
    small = nets.build_model("cnn", input_shape=(1, 8, 8), num_classes=10, channels=[4, 6, 8], fc_width=12)
    assert small(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert small.state_dict()["classifier.0.weight"].shape == (12, 8 * 4 * 4)
    with pytest.raises(ParamError, match="channels must have at most 4 items"):
        nets.validate_model_params("cnn", {"channels": [1, 2, 3, 4, 5]})


@pytest.mark.parametrize(
    ("name", "shape", "extra"),
    [
        ("logreg", (60,), {}),
        ("mlp", (1, 8, 8), {"hidden": [300, 20, 7]}),
        ("cnn", (1, 8, 8), {"channels": [8], "fc_width": 30}),
        ("ctr", (42,), {"num_items": 5000, "num_categories": 40, "emb_dim": 8}),
    ],
)
def test_the_parameter_count_of_a_spec_matches_the_built_model(name, shape, extra):
    spec = nets.model_spec_for(name, input_shape=shape, num_classes=2, **extra)
    assert nets.spec_parameter_count(spec) == nets.count_parameters(nets.build_model_from_spec(spec))


def test_a_large_spec_is_counted_without_allocating_it():
    spec = nets.model_spec_for("mlp", input_shape=(4096,), num_classes=10, hidden=[4096] * 8)
    # ~151M parameters: 600 MB if it were allocated; on the meta device it is shapes only.
    assert nets.spec_parameter_count(spec) == 4096 * 4096 * 8 + 4096 * 8 + 4096 * 10 + 10


def test_built_in_data_sets_declare_their_loader_parameters():
    digits = datasets.dataset_declaration("digits")
    assert [p.to_json() for p in digits.params] == [
        {"name": "test_fraction", "type": "float", "default": 0.2, "help": ""}
    ]
    synthetic = datasets.validate_dataset_params("synthetic", {"alpha": 0, "iid": True})
    assert synthetic == {"alpha": 0.0, "beta": 1.0, "iid": True, "num_devices": 30}
    with pytest.raises(ParamError, match=r"unknown parameter\(s\) gamma"):
        datasets.validate_dataset_params("digits", {"gamma": 1})
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        datasets.validate_dataset_params("mnist", {})


def test_natural_partition_is_one_client_per_group_in_group_order():
    groups = np.array([2, 0, 2, 1, 0, 2])
    assert [p.tolist() for p in natural(groups)] == [[1, 4], [3], [0, 2, 5]]
