"""Pure parts of the virtual phone: packets, keys, sandbox, shell parsing, profiles, availability, battery."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.adb_identity import AdbIdentity, fingerprint, load_or_create_identity
from devices.virtual import auth, packets
from devices.virtual.availability import (
    AlternatingGroups,
    Diurnal,
    MarkovOnOff,
    Trace,
    build_availability,
    parse_trace,
)
from devices.virtual.battery import STATUS_CHARGING, STATUS_DISCHARGING, Battery
from devices.virtual.lab import LabError, check_ports
from devices.virtual.profile import (
    AvailabilityProfile,
    BatteryProfile,
    ProfileError,
    build_profiles,
    load_profiles,
    profile_from_dict,
)
from devices.virtual.sandbox import Sandbox, SandboxError, normalize
from devices.virtual.shell import (
    ShellState,
    ShellSyntaxError,
    expand_variables,
    split_list,
    take_redirections,
)


# --- packets and keys ---------------------------------------------------------------------------------
def test_packet_round_trip_and_checksum() -> None:
    packet = packets.Packet(packets.Command.WRTE, 7, 9, b"hello")
    raw = packets.encode(packet, checksummed=True)
    header = packets.decode_header(raw[:24], max_payload=4096)
    assert (header.command, header.arg0, header.arg1, header.length) == (packets.Command.WRTE, 7, 9, 5)
    assert header.check == sum(b"hello") == packets.checksum(b"hello")
    big = os.urandom(5000)
    assert packets.checksum(big) == sum(big) & 0xFFFFFFFF  # the numpy path agrees with the definition


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=24, max_size=24))
def test_any_header_decodes_or_is_malformed(raw: bytes) -> None:
    try:
        header = packets.decode_header(raw, max_payload=packets.MAX_PAYLOAD)
    except packets.MalformedPacket:
        return
    assert header.length <= packets.MAX_PAYLOAD


def test_signature_verification(identity: AdbIdentity, stranger: AdbIdentity) -> None:
    from adb_shell.auth.sign_cryptography import CryptographySigner

    key = auth.parse_key_line(identity.public_key)
    token = auth.new_token()
    signature = CryptographySigner(str(identity.private_key_path)).Sign(token)
    assert auth.verify_signature(key, token, signature)
    assert not auth.verify_signature(key, auth.new_token(), signature)
    other = CryptographySigner(str(stranger.private_key_path)).Sign(token)
    assert not auth.verify_signature(key, token, other)
    assert not auth.verify_signature(key, token, b"\0" * 3)


def test_key_parsing_rejects_junk(identity: AdbIdentity) -> None:
    for junk in ("", "not-base64!", "QUFBQQ==", identity.public_key[:100]):
        with pytest.raises(auth.InvalidKey):
            auth.parse_key_line(junk)
    text = "# comment\n\ngarbage line\n" + identity.public_key + "\n"
    assert [k.line for k in auth.parse_keys_text(text)] == [identity.public_key]


def test_identity_files_modes_and_fingerprints(tmp_path: Path) -> None:
    key_path = tmp_path / "data" / "adb" / "adbkey"
    created = load_or_create_identity(key_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path.parent.stat().st_mode) == 0o700
    assert created.public_key_path.read_text().strip() == created.public_key
    assert (
        len(created.fingerprint_md5.split(":")) == 16
        and created.fingerprint_md5.upper() == created.fingerprint_md5
    )
    assert len(created.fingerprint_sha256.split(":")) == 32
    assert fingerprint(created.public_key) == created.fingerprint_md5
    assert load_or_create_identity(key_path) == created  # loaded, not regenerated
    os.chmod(key_path, 0o644)
    load_or_create_identity(key_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600  # too-open permissions are repaired


def test_platform_identity_uses_the_data_dir(settings, tmp_path: Path) -> None:
    from devices.adb_identity import platform_identity

    settings.FEDFLEET_DATA_DIR = tmp_path
    assert platform_identity().private_key_path == tmp_path / "adb" / "adbkey"


# --- sandbox ------------------------------------------------------------------------------------------
def test_sandbox_mapping(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path)
    sandbox.create_layout()
    assert sandbox.resolve("/data/local/tmp/a") == tmp_path.resolve() / "data/local/tmp/a"
    assert sandbox.resolve("/storage/emulated/0/x") == tmp_path.resolve() / "sdcard/x"
    assert sandbox.resolve("b", "/sdcard") == tmp_path.resolve() / "sdcard/b"
    assert normalize("../../x", "/data/local/tmp") == "/data/x"
    for path in ("/etc/passwd", "/data/local/tmp/../../../etc", "/data/x", "/proc/self/environ"):
        with pytest.raises(SandboxError) as caught:
            sandbox.resolve(path)
        assert caught.value.message("cat") == f"cat: {path}: Permission denied"
    assert sandbox.resolve("/data") == tmp_path.resolve() / "data"  # parents can be listed ...
    with pytest.raises(SandboxError):
        sandbox.resolve("/data", write=True)  # ... but not changed
    os.symlink("/", tmp_path / "sdcard" / "root")
    with pytest.raises(SandboxError):
        sandbox.resolve("/sdcard/root/etc/passwd")
    assert sandbox.map_argument("/sdcard/f", "/") == str(tmp_path.resolve() / "sdcard/f")
    assert sandbox.map_argument("--epochs", "/") == "--epochs"


# --- shell parsing ------------------------------------------------------------------------------------
def test_split_list_respects_quotes() -> None:
    segments = split_list("echo 'a;b' && echo \"c&&d\" ; false || echo e\\;f")
    assert [(s.connector, s.text.strip()) for s in segments] == [
        (";", "echo 'a;b'"),
        ("&&", 'echo "c&&d"'),
        (";", "false"),
        ("||", "echo e\\;f"),
    ]
    for bad in ("echo a | grep a", "& echo a", "echo a; & b", "echo 'open"):
        with pytest.raises(ShellSyntaxError):
            split_list(bad)


def test_an_ampersand_ends_a_background_command() -> None:
    segments = split_list("nohup a > log 2>&1 & echo $! > pid")
    assert [(s.text.strip(), s.background) for s in segments] == [
        ("nohup a > log 2>&1", True),
        ("echo $! > pid", False),
    ]
    assert [s.background for s in split_list("sleep 1 &")] == [True]
    assert expand_variables("echo $! ${!}", ShellState(last_job=4012)) == "echo 4012 4012"
    assert expand_variables("echo [$!]", ShellState()) == "echo []"


def test_variables_and_redirections() -> None:
    state = ShellState(status=3)
    assert expand_variables("echo $? ${?} '$?' $TMPDIR $NOPE", state) == "echo 3 3 '$?' /data/local/tmp "
    argv, redirect = take_redirections(["echo", "hi", ">>", "/sdcard/log", "2>/dev/null"])
    assert argv == ["echo", "hi"] and redirect.stdout == ("/sdcard/log", True) and redirect.stderr_null
    argv, redirect = take_redirections(["cmd", ">/sdcard/out", "2>&1"])
    assert argv == ["cmd"] and redirect.stdout == ("/sdcard/out", False) and not redirect.stderr_null


# --- profiles -----------------------------------------------------------------------------------------
def test_profiles_from_file_reuse_entries_with_distinct_serials(tmp_path: Path) -> None:
    (tmp_path / "trace.txt").write_text("0 on\n30 off\n")
    document = {
        "defaults": {"faults": {"bandwidth_bps": 1000000}},
        "phones": [
            {"model": "A", "speed_factor": 2},
            {"model": "B", "availability": {"kind": "trace", "trace_file": "trace.txt"}},
        ],
    }
    path = tmp_path / "profiles.json"
    path.write_text(json.dumps(document))
    profiles = load_profiles(path, 5)
    assert [p.model for p in profiles] == ["A", "B", "A", "B", "A"]
    assert len({p.serial for p in profiles}) == 5
    assert profiles[0].speed_factor == 2.0 and profiles[0].faults.bandwidth_bps == 1000000
    assert profiles[1].availability.trace_file == str(tmp_path / "trace.txt")
    assert len(build_profiles(8, [], {})) == 8  # the built-in catalogue


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"modle": "typo"}, "unknown key"),
        ({"cores": "eight"}, "expected int"),
        ({"battery": {"plugged": 1}}, "expected bool"),
        ({"speed_factor": 0}, "speed_factor"),
        ({"availability": {"kind": "sometimes"}}, "not one of"),
        ({"availability": {"kind": "alternating", "group": 2, "n_groups": 2}}, "group"),
        ({"faults": {"drop_transfer_p": 1.5}}, "probability"),
        ({"python": "python3 -u"}, "one word"),
    ],
)
def test_profile_errors_are_clear(entry: dict, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        profile_from_dict(entry)


def test_ports_outside_adb_scan_range() -> None:
    check_ports(15555, 20)
    for base in (5555, 5570, 5550):
        with pytest.raises(LabError, match="5555-5585"):
            check_ports(base, 10)


# --- availability -------------------------------------------------------------------------------------
def test_alternating_groups_follow_the_formula() -> None:
    groups = [AlternatingGroups(group=g, n_groups=3, period_s=10) for g in range(3)]
    for t in (0, 5, 10, 29.9, 30, 65):
        online = [g.online_at(t) for g in groups]
        assert online.count(True) == 1 and online.index(True) == int(t // 10) % 3


def test_markov_is_seeded_and_order_independent() -> None:
    times = [0.5 * i for i in range(2000)]
    forward = MarkovOnOff(20, 10, seed=7)
    backward = MarkovOnOff(20, 10, seed=7)
    assert [forward.online_at(t) for t in times] == [backward.online_at(t) for t in reversed(times)][::-1]
    share = sum(forward.online_at(t) for t in range(0, 200_000, 7)) / len(range(0, 200_000, 7))
    assert 0.55 < share < 0.78  # stationary share 20/(20+10)
    assert [MarkovOnOff(20, 10, seed=8).online_at(t) for t in times] != [forward.online_at(t) for t in times]


def test_diurnal_peaks_when_configured() -> None:
    model = Diurnal(period_s=1000, slot_s=1, min_p=0.0, max_p=1.0, peak_at=0.5, seed=3)
    assert model.probability(500) == pytest.approx(1.0) and model.probability(0) == pytest.approx(0.0)
    near_peak = sum(model.online_at(t) for t in range(450, 550)) / 100
    near_trough = sum(model.online_at(t) for t in range(0, 50)) / 50
    assert near_peak > 0.8 and near_trough < 0.2
    assert [model.online_at(t) for t in range(300)] == [
        Diurnal(1000, 1, 0.0, 1.0, 0.5, 3).online_at(t) for t in range(300)
    ]


def test_trace_replay_and_loop(tmp_path: Path) -> None:
    events = parse_trace("# start\n0 on\n10, off\n25 1\n")
    trace = Trace(events, loop_s=40)
    assert [trace.online_at(t) for t in (0, 9.9, 10, 24, 25, 39, 40, 51)] == [1, 1, 0, 0, 1, 1, 1, 0]
    with pytest.raises(ValueError):
        parse_trace("5 maybe\n")
    path = tmp_path / "t.txt"
    path.write_text("0 off\n")
    model = build_availability(AvailabilityProfile(kind="trace", trace_file=str(path)), seed=0)
    assert not model.online_at(100)


# --- battery ------------------------------------------------------------------------------------------
def test_battery_drains_while_training_and_charges_when_plugged() -> None:
    now = [0.0]
    battery = Battery(
        BatteryProfile(level=50, drain_idle_pct_per_min=1, drain_train_pct_per_min=10, charge_pct_per_min=5),
        clock=lambda: now[0],
    )
    now[0] = 60
    assert battery.state().level == 49 and battery.state().status == STATUS_DISCHARGING
    battery.training_started()
    now[0] = 120
    state = battery.state()
    assert state.level == 39 and state.temperature_tenths_c > 280
    battery.training_finished()
    battery.set_plugged(True)
    now[0] = 180
    assert battery.state().level == 44 and battery.state().status == STATUS_CHARGING
    now[0] = 10_000
    assert battery.state().level == 100
