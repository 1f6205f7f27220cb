"""`--misbehave K --behaviour SPEC` for the virtual lab: a seeded choice of K phones, the behaviour in their
profiles and in their agent's environment (nowhere the platform looks), and the operator's record."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from devices.adb_identity import AdbIdentity
from devices.virtual import misbehaviour
from devices.virtual.cli import add_lab_arguments, config_from_args
from devices.virtual.lab import LabConfig, LabThread
from devices.virtual.misbehaviour import (
    Misbehaviour,
    MisbehaviourError,
    apply_misbehaviour,
    check_behaviour_spec,
    chosen_indices,
)
from devices.virtual.profile import build_profiles
from tests.virtual.conftest import connect, free_base_port, identity, keys_file  # noqa: F401 - fixtures
from training.fl.misbehaviour import BEHAVIOUR_NAMES, parse_behaviour


def parse(argv: list[str]) -> LabConfig:
    parser = argparse.ArgumentParser()
    add_lab_arguments(parser)
    return config_from_args(parser.parse_args(argv), default_keys=None, data_dir=Path("/nonexistent"))


def test_the_lab_knows_the_agents_behaviours() -> None:
    assert misbehaviour.BEHAVIOUR_NAMES == BEHAVIOUR_NAMES


def test_command_line_reaches_the_lab_config() -> None:
    config = parse(["--phones", "20", "--misbehave", "3", "--behaviour", "label_flip:mapping=shift"])
    assert config.misbehaviour == Misbehaviour(count=3, behaviour="label_flip:mapping=shift")
    assert parse(["--phones", "5"]).misbehaviour is None
    assert parse(["--misbehave", "1"]).misbehaviour == Misbehaviour(1, "label_flip")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("flip", "unknown behaviour 'flip'"),
        ("label_flip:mapping", "expected key=value"),
        ("backdoor:target=0+boost", "unknown behaviour 'boost'"),
        ("  ", "empty"),
    ],
)
def test_bad_specs_are_refused(spec: str, message: str) -> None:
    with pytest.raises(MisbehaviourError, match=message):
        check_behaviour_spec(spec)


def test_good_specs_also_parse_in_the_agent() -> None:
    for spec in ("label_flip", "backdoor:target=0,fraction=0.5+model_replacement:gamma=10", "noise:std=0.5"):
        assert check_behaviour_spec(spec) == spec
        assert not parse_behaviour(spec).is_honest


def test_the_choice_is_seeded_and_the_others_keep_their_profiles() -> None:
    assert chosen_indices(20, 3, seed=7) == chosen_indices(20, 3, seed=7)
    assert chosen_indices(20, 3, seed=7) != chosen_indices(20, 3, seed=8)
    assert len(set(chosen_indices(20, 3, seed=7))) == 3
    with pytest.raises(MisbehaviourError, match="more than the lab's 2 phones"):
        chosen_indices(2, 3, seed=0)
    profiles = build_profiles(6, [], {})
    changed = apply_misbehaviour(profiles, Misbehaviour(2, "free_rider"), seed=1)
    bad = [i for i, p in enumerate(changed) if p.behaviour != "honest"]
    assert bad == chosen_indices(6, 2, seed=1)
    assert all(changed[i] == profiles[i] for i in range(6) if i not in bad)


ENV_SCRIPT = "import os\nprint('behaviour=' + os.environ.get('FEDFLEET_BEHAVIOUR', ''))\n"


def test_only_the_chosen_phones_agents_see_the_behaviour(
    tmp_path: Path,
    identity: AdbIdentity,  # noqa: F811
    keys_file: Path,  # noqa: F811
) -> None:
    script = tmp_path / "env.py"
    script.write_text(ENV_SCRIPT)
    config = LabConfig(
        lab_dir=tmp_path / "lab",
        phones=4,
        base_port=free_base_port(4),
        keys_file=keys_file,
        seed=3,
        use_zygote=False,
        misbehaviour=Misbehaviour(1, "label_flip:mapping=shift"),
    )
    with LabThread(config) as lab:
        seen = {}
        for endpoint in lab.endpoints:
            with connect(endpoint, identity) as conn:
                conn.push(script, "/data/local/tmp/env.py")
                seen[endpoint.serial] = conn.shell("python3 /data/local/tmp/env.py").strip()
                # What the platform reads from a phone says nothing about it.
                assert "label_flip" not in conn.shell("getprop")
    chosen = [f"vphone-{i + 1:02d}" for i in chosen_indices(4, 1, seed=3)]
    assert {s for s, out in seen.items() if out == "behaviour=label_flip:mapping=shift"} == set(chosen)
    assert all(out == "behaviour=honest" for s, out in seen.items() if s not in chosen)
    record = json.loads((tmp_path / "lab" / "misbehaving.json").read_text())
    assert record == dict.fromkeys(chosen, "label_flip:mapping=shift")


def test_manage_py_virtual_lab_takes_the_same_options() -> None:
    from devices.management.commands.virtual_lab import Command  # noqa: PLC0415

    parser = Command().create_parser("manage.py", "virtual_lab")
    options = parser.parse_args(["--misbehave", "2", "--behaviour", "noise:std=0.5"])
    assert (options.misbehave, options.behaviour) == (2, "noise:std=0.5")
