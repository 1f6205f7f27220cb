import hashlib
import importlib.util
import os
import subprocess
import sys
import zipfile

from training.agent.build import PYZ_NAME, build_agent_pyz, compiled, pyz_bytes

IMPORT_AND_SHOW_CODE_FILE = (
    "import sys; sys.path.insert(0, sys.argv[1]); import training.fl.wire as w; "
    "print(w.dumps_tensors.__code__.co_filename)"
)


def _code_file_of_wire_module(pyz):
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_AND_SHOW_CODE_FILE, str(pyz)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


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
    # Code and bytecode only — and the minimal dist-info of each bundled plug-in (test_plugin_bundle.py).
    assert not [
        n for n in names if "__pycache__" in n or not n.endswith((".py", ".pyc")) and ".dist-info/" not in n
    ]
    sources = [n for n in names if n.endswith(".py")]
    assert sorted(n for n in names if n.endswith(".pyc")) == sorted(n + "c" for n in sources)
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


def test_modules_load_from_the_precompiled_bytecode(agent_build):
    # zipimport compiling the source would name the code after the archive's absolute path; the pyc
    # built into the archive names it "agent.pyz/<entry>".
    assert _code_file_of_wire_module(agent_build.path) == "agent.pyz/training/fl/wire.py"


def test_bytecode_of_another_python_falls_back_to_the_source(tmp_path, agent_build):
    with zipfile.ZipFile(agent_build.path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    foreign = {n: (b"\x00\x00\r\n" + d[4:] if n.endswith(".pyc") else d) for n, d in files.items()}
    assert foreign["training/fl/wire.pyc"][:4] != importlib.util.MAGIC_NUMBER
    pyz = tmp_path / PYZ_NAME
    pyz.write_bytes(pyz_bytes(foreign))
    assert _code_file_of_wire_module(pyz) == str(pyz / "training/fl/wire.py")
    version = subprocess.run([sys.executable, str(pyz), "version"], capture_output=True, text=True)
    assert version.returncode == 0, version.stderr


def test_the_build_is_the_same_in_another_process(agent_build):
    # Workers on different hosts build their own agent.pyz; equal bytes mean a phone is not re-sent the
    # agent because another worker served it (bytecode could depend on hash seeds or interning).
    script = "import sys; from training.agent.build import build_agent_pyz; print(build_agent_pyz(sys.argv[1]).sha256)"
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", script, str(agent_build.path.parent / f"again-{seed}")],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        assert out.stdout.strip() == agent_build.sha256


def test_bytecode_does_not_depend_on_what_the_process_interned_before():
    # A one-character string is a shared singleton; whether it is interned is process history, and
    # marshal writes that down. chr(7) is interned by nothing else here.
    source = b'BELL = "\\x07"\n'
    before = compiled("m.py", source)
    sys.intern(chr(7))
    assert compiled("m.py", source) == before
