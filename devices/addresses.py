"""Where a phone is: validation and normalisation of `host:port` (TCP) and adb serials (USB).

Addresses end up in ADB connections and in log lines, never in a shell, but they are still checked
strictly: a clear error for each mistake a person makes (missing port, port out of range, a pasted
`adb connect 10.0.0.5:5555; rm -rf`), and one canonical spelling per phone so that uniqueness holds
(`LOCALHOST:05555` and `localhost:5555` are the same phone).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

TRANSPORT_TCP = "tcp"
TRANSPORT_USB = "usb"

MAX_ADDRESS_LENGTH = 255
MAX_SERIAL_LENGTH = 64
# Characters a POSIX shell treats specially; none of them occurs in a host name, IP literal or serial.
SHELL_METACHARACTERS = frozenset(";&|$`<>()'\"\\*?!{}~#^%=,")
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_SERIAL = re.compile(r"^[A-Za-z0-9._:-]+$")
_DIGITS = re.compile(r"^[0-9]+$")


class AddressError(ValueError):
    """A human-readable reason why an address or serial was refused."""


@dataclass(frozen=True)
class TcpAddress:
    host: str  # lower-case name, dotted IPv4, or IPv6 without brackets
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _refuse_unsafe_characters(text: str) -> None:
    found = sorted({ch for ch in text if ch in SHELL_METACHARACTERS})
    if found:
        raise AddressError(f"Must not contain shell metacharacters ({' '.join(found)}).")
    if any(ch.isspace() for ch in text):
        raise AddressError("Must not contain spaces or line breaks.")
    if not text.isascii() or not text.isprintable():
        raise AddressError("Must contain only printable ASCII characters.")


def _parse_port(text: str) -> int:
    if not text:
        raise AddressError("The port is missing: write host:port, e.g. 192.168.1.20:5555.")
    if not _DIGITS.match(text):
        raise AddressError(f"The port {text!r} is not a number.")
    port = int(text)
    if not 1 <= port <= 65535:
        raise AddressError(f"The port {port} is out of range (1-65535).")
    return port


def _normalise_host(text: str) -> str:
    if not text:
        raise AddressError("The host is missing: write host:port, e.g. 192.168.1.20:5555.")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    host = text.lower().rstrip(".")
    if len(host) > 253:
        raise AddressError("The host name is too long.")
    labels = host.split(".")
    if all(_DIGITS.match(label) for label in labels):
        raise AddressError(f"{text!r} is not a valid IPv4 address.")
    for label in labels:
        if not _HOST_LABEL.match(label):
            raise AddressError(f"{text!r} is not a valid host name.")
    return host


def parse_tcp_address(raw: str) -> TcpAddress:
    """Parse `host:port`, `[ipv6]:port`; raise AddressError with the reason otherwise."""
    text = raw.strip()
    if not text:
        raise AddressError("Enter an address.")
    if len(text) > MAX_ADDRESS_LENGTH:
        raise AddressError(f"Must be at most {MAX_ADDRESS_LENGTH} characters.")
    _refuse_unsafe_characters(text)
    if text.startswith("["):
        closing = text.find("]")
        if closing < 0:
            raise AddressError("Unclosed '[': an IPv6 address is written [addr]:port.")
        host_text, rest = text[1:closing], text[closing + 1 :]
        if not rest.startswith(":"):
            raise AddressError("The port is missing after ']': write [addr]:port.")
        try:
            host = str(ipaddress.IPv6Address(host_text))
        except ValueError:
            raise AddressError(f"{host_text!r} is not a valid IPv6 address.") from None
        return TcpAddress(host, _parse_port(rest[1:]))
    if "[" in text or "]" in text:
        raise AddressError("Brackets are only used around an IPv6 address: [addr]:port.")
    if text.count(":") > 1:
        raise AddressError("An IPv6 address must be written in brackets: [addr]:port.")
    host_text, sep, port_text = text.rpartition(":")
    if not sep:
        raise AddressError("The port is missing: write host:port, e.g. 192.168.1.20:5555.")
    return TcpAddress(_normalise_host(host_text), _parse_port(port_text))


def parse_usb_serial(raw: str) -> str:
    """An adb serial as `adb devices` prints it (letters, digits, . _ : -)."""
    text = raw.strip()
    if not text:
        raise AddressError("Enter an address.")
    if len(text) > MAX_SERIAL_LENGTH:
        raise AddressError(f"A serial is at most {MAX_SERIAL_LENGTH} characters.")
    _refuse_unsafe_characters(text)
    if not _SERIAL.match(text):
        raise AddressError("A serial may contain only letters, digits and . _ : -")
    return text


def normalise_address(transport: str, raw: str) -> str:
    """The canonical spelling of a phone's address for `transport`; AddressError if it is not valid."""
    if transport == TRANSPORT_TCP:
        return str(parse_tcp_address(raw))
    if transport == TRANSPORT_USB:
        return parse_usb_serial(raw)
    raise AddressError(f"Unknown transport {transport!r} (tcp or usb).")
