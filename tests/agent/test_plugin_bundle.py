"""Plug-in models travel to the phones inside agent.pyz: the example plug-in's pure-Python package and a
minimal dist-info, found by importlib.metadata inside the archive. Proven in an interpreter that cannot
see the plug-in installed on this machine: the bundled agent trains the plug-in's model there, an agent
built without it cannot."""

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import torch

from training.agent import build
from training.agent.build import PluginBundle, PluginBundleError, build_agent_pyz
from training.fl import nets, wire

EXAMPLE = "fedfleet-example 0.1.0"
SPEC = nets.model_spec_for("residual_mlp", input_shape=(1, 8, 8), num_classes=10, width=16, blocks=1)


@pytest.fixture(scope="module")
def plain_build(tmp_path_factory):
    return build_agent_pyz(tmp_path_factory.mktemp("plain"), plugins=())


def test_the_installed_example_plugin_is_bundled(agent_build, plain_build):
    assert agent_build.plugins == (EXAMPLE,) and agent_build.skipped_plugins == ()
    names = set(agent_build.files)
    assert {
        "fedfleet_example/__init__.py",
        "fedfleet_example/models.py",
        "fedfleet_example/models.pyc",
        "fedfleet_example/datasets.py",
        "fedfleet_example-0.1.0.dist-info/METADATA",
        "fedfleet_example-0.1.0.dist-info/entry_points.txt",
    } <= names
    with zipfile.ZipFile(agent_build.path) as archive:
        entry_points = archive.read("fedfleet_example-0.1.0.dist-info/entry_points.txt").decode()
        source = archive.read("fedfleet_example/models.py")
    # Only the model entry points: phones build models, they never load data sets.
    assert entry_points == "[fedfleet.models]\nresidual_mlp = fedfleet_example.models:RESIDUAL_MLP\n"
    import fedfleet_example.models as installed

    assert source == Path(installed.__file__).read_bytes()
    assert plain_build.plugins == () and not [n for n in plain_build.files if "fedfleet_example" in n]
    # The plug-in changes the agent, so phones get the new one.
    assert agent_build.sha256 != plain_build.sha256 and agent_build.size > plain_build.size


def test_a_build_with_plugins_is_reproducible(tmp_path, agent_build):
    again = build_agent_pyz(tmp_path)
    assert again.sha256 == agent_build.sha256 and again.plugins == (EXAMPLE,)


def isolated_env() -> dict[str, str]:
    """An interpreter started with -S sees this virtualenv's packages (torch) through PYTHONPATH but
    processes no .pth file — so the editable install's import hook for fedfleet_example is not there,
    and the plug-in's code can only come from the archive."""
    return {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}


def phone_round(work: Path, agent: Path) -> Path:
    work.mkdir(parents=True)
    (work / "agent.pyz").write_bytes(agent.read_bytes())
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(30, 1, 8, 8, generator=generator), torch.randint(0, 10, (30,), generator=generator)
    wire.save_tensors(work / "jobs" / "1" / "shard.safetensors", {"x": x, "y": y})
    round_dir = work / "rounds" / "1"
    wire.save_tensors(round_dir / "global.safetensors", nets.initial_weights(SPEC, seed=1))
    config = {
        "algorithm": "fedavg",
        "model": SPEC,
        "lr": 0.1,
        "epochs": 1,
        "batch_size": 10,
        "seed": 1,
        "shard": "jobs/1/shard.safetensors",
        "state_dir": "jobs/1/state",
        "round": 1,
        "client_id": "phone-a",
    }
    (round_dir / "config.json").write_text(json.dumps(config))
    return round_dir


def run_isolated(work: Path, round_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-S", str(work / "agent.pyz"), "train", str(round_dir)],
        capture_output=True,
        text=True,
        env=isolated_env(),
        timeout=120,
        cwd=work,
    )


def test_the_isolated_interpreter_cannot_import_the_installed_plugin():
    probe = subprocess.run(
        [sys.executable, "-S", "-c", "import fedfleet_example"],
        capture_output=True,
        text=True,
        env=isolated_env(),
        timeout=60,
    )
    assert probe.returncode == 1 and "No module named 'fedfleet_example'" in probe.stderr


def test_the_agent_trains_a_plugin_model_from_the_code_it_carries(tmp_path, agent_build):
    work = tmp_path / "phone"
    round_dir = phone_round(work, agent_build.path)
    out = run_isolated(work, round_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    done = json.loads(out.stdout.splitlines()[-1])
    assert done["event"] == "done" and done["samples"] == 30
    update = wire.load_tensors(round_dir / done["update_file"], max_bytes=1 << 20)
    assert set(update) == set(nets.initial_weights(SPEC, seed=1))


def test_an_agent_without_the_plugin_says_why_it_cannot_build_the_model(tmp_path, plain_build):
    work = tmp_path / "phone"
    round_dir = phone_round(work, plain_build.path)
    out = run_isolated(work, round_dir)
    assert out.returncode == 1
    error = json.loads(out.stdout.splitlines()[-1])
    assert error["event"] == "error"
    assert (
        "model plug-in 'residual_mlp' (fedfleet-example 0.1.0) is not available: cannot be imported: "
        "ModuleNotFoundError: No module named 'fedfleet_example'"
    ) in error["message"]


# ------------------------------------------------------------------------------ what cannot be bundled


@pytest.fixture
def fake_packages(tmp_path, monkeypatch):
    """Importable (findable) packages: a pure one, one with a compiled extension, a single module."""
    for name in ("pure_plugin_pkg", "native_plugin_pkg"):
        (tmp_path / name / "sub").mkdir(parents=True)
        (tmp_path / name / "__init__.py").write_text("")
        (tmp_path / name / "sub" / "__init__.py").write_text("X = 1\n")
        (tmp_path / name / "notes.txt").write_text("not code")
    (tmp_path / "native_plugin_pkg" / "fast.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    (tmp_path / "single_plugin_module.py").write_text("BUILD = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def bundle(*packages: str) -> PluginBundle:
    return PluginBundle("fake-plugin", "1.0", packages, (("fake", f"{packages[0]}:BUILD"),))


def test_a_pure_python_plugin_bundles_its_py_files_only(fake_packages):
    files = build.plugin_sources(bundle("pure_plugin_pkg", "single_plugin_module"))
    assert sorted(files) == [
        "fake_plugin-1.0.dist-info/METADATA",
        "fake_plugin-1.0.dist-info/entry_points.txt",
        "pure_plugin_pkg/__init__.py",
        "pure_plugin_pkg/sub/__init__.py",
        "single_plugin_module.py",
    ]
    assert (
        files["fake_plugin-1.0.dist-info/METADATA"]
        == b"Metadata-Version: 2.1\nName: fake-plugin\nVersion: 1.0\n"
    )


@pytest.mark.parametrize(
    ("packages", "message"),
    [
        (("native_plugin_pkg",), "native_plugin_pkg/fast.cpython-311-x86_64-linux-gnu.so is compiled code"),
        (("training",), "its package 'training' would replace the agent's own"),
        (("no_such_plugin_package",), "'no_such_plugin_package' must be a regular package or module"),
    ],
)
def test_a_plugin_that_cannot_travel_is_refused_when_named(tmp_path, fake_packages, packages, message):
    with pytest.raises(PluginBundleError, match=message):
        build_agent_pyz(tmp_path / "out", plugins=[bundle(*packages)])


def test_an_installed_plugin_that_cannot_travel_is_skipped_with_its_reason(
    tmp_path, fake_packages, monkeypatch
):
    monkeypatch.setattr(
        build, "installed_model_plugins", lambda: [bundle("native_plugin_pkg"), bundle("pure_plugin_pkg")]
    )
    result = build_agent_pyz(tmp_path / "out")
    assert result.plugins == ("fake-plugin 1.0",)
    assert len(result.skipped_plugins) == 1 and "is compiled code" in result.skipped_plugins[0]
    assert "pure_plugin_pkg/sub/__init__.pyc" in result.files
    assert not [n for n in result.files if n.startswith("native_plugin_pkg")]
