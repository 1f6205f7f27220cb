import hashlib
import zipfile

from training.agent.build import PYZ_NAME, build_agent_pyz


def test_build_is_reproducible(tmp_path, agent_build):
    again = build_agent_pyz(tmp_path)
    assert again.path == tmp_path / PYZ_NAME
    assert again.sha256 == agent_build.sha256
    assert again.path.read_bytes() == agent_build.path.read_bytes()
    assert hashlib.sha256(again.path.read_bytes()).hexdigest() == again.sha256


def test_archive_is_a_zipapp_of_the_agent_and_fl_core(agent_build):
    data = agent_build.path.read_bytes()
    assert data.startswith(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(agent_build.path) as archive:
        names = archive.namelist()
        infos = archive.infolist()
        init = archive.read("training/__init__.py")
    assert names == sorted(names) == list(agent_build.files)
    assert {"__main__.py", "training/agent/cli.py", "training/fl/client.py", "training/fl/wire.py"} <= set(
        names
    )
    assert not [n for n in names if "__pycache__" in n or not n.endswith(".py")]
    assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in infos)
    assert b"django" not in init.lower()


def test_changing_the_code_changes_the_hash(tmp_path, agent_build):
    root = tmp_path / "src"
    for package in ("training/agent", "training/fl"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    first = build_agent_pyz(tmp_path / "a", root=root)
    (root / "training/fl/__init__.py").write_text("# changed\n")
    second = build_agent_pyz(tmp_path / "b", root=root)
    assert first.sha256 != second.sha256 != agent_build.sha256
