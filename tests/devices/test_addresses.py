"""Address and serial validation: canonical spellings and a clear reason for every refusal."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.addresses import AddressError, normalise_address, parse_tcp_address, parse_usb_serial


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("192.168.1.20:5555", "192.168.1.20:5555"),
        ("  10.0.0.5:15555 ", "10.0.0.5:15555"),
        ("LOCALHOST:05555", "localhost:5555"),
        ("phone-7.lab.example.:5555", "phone-7.lab.example:5555"),
        ("[::1]:5555", "[::1]:5555"),
        ("[2001:DB8:0:0::1]:65535", "[2001:db8::1]:65535"),
        ("virtual-lab:15555", "virtual-lab:15555"),
    ],
)
def test_tcp_addresses_are_normalised(raw: str, canonical: str) -> None:
    assert normalise_address("tcp", raw) == canonical


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "Enter an address"),
        ("192.168.1.20", "port is missing"),
        ("192.168.1.20:", "port is missing"),
        (":5555", "host is missing"),
        ("192.168.1.20:0", "out of range"),
        ("192.168.1.20:65536", "out of range"),
        ("192.168.1.20:99999999999", "out of range"),
        ("192.168.1.20:55a5", "not a number"),
        ("192.168.1.20:5555; rm -rf /", "shell metacharacters (;)"),
        ("$(reboot):5555", "shell metacharacters ($ ( ))"),
        ("`id`:5555", "shell metacharacters (`)"),
        ("a|b:5555", "shell metacharacters (|)"),
        ("host name:5555", "spaces"),
        ("host\n:5555", "spaces"),
        ("300.1.2.3:5555", "not a valid IPv4"),
        ("-bad-.example:5555", "not a valid host name"),
        ("fe80::1:5555", "must be written in brackets"),
        ("[fe80::1:5555", "Unclosed"),
        ("[::1]5555", "port is missing after"),
        ("[zz::1]:5555", "not a valid IPv6"),
        ("h\u00e9te:5555", "printable ASCII"),
        ("a" * 300 + ":1", "at most"),
    ],
)
def test_bad_tcp_addresses_say_why(raw: str, reason: str) -> None:
    with pytest.raises(AddressError) as excinfo:
        parse_tcp_address(raw)
    assert reason in str(excinfo.value)


@pytest.mark.parametrize(
    "serial", ["R58M123ABC", "emulator-5554", "0123456789ABCDEF", "usb:1-1.2", "dev_1.a"]
)
def test_usb_serials(serial: str) -> None:
    assert parse_usb_serial(f" {serial} ") == serial


@pytest.mark.parametrize(
    ("raw", "reason"),
    [("", "Enter"), ("abc;def", "metacharacters"), ("a" * 65, "at most"), ("a/b", "only letters")],
)
def test_bad_usb_serials(raw: str, reason: str) -> None:
    with pytest.raises(AddressError, match=reason):
        parse_usb_serial(raw)


def test_unknown_transport() -> None:
    with pytest.raises(AddressError, match="Unknown transport"):
        normalise_address("bluetooth", "x")


@given(st.text(max_size=300))
def test_accepted_addresses_contain_no_shell_syntax(text: str) -> None:
    try:
        address = parse_tcp_address(text)
    except AddressError:
        return
    rendered = str(address)
    assert not any(ch in rendered for ch in ";&|$`<>()'\"\\ \n\t*?!{}~#")
    assert 1 <= address.port <= 65535
    assert parse_tcp_address(rendered) == address  # canonical form is stable
