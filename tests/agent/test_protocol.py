"""The resident agent's frames, pure: encoding, authentication, bounds, schemas, paths."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.agent import protocol as p

SECRET = p.secret_bytes("s3cret-for-tests-only-0123456789")


def pair(key: bytes = b"k" * 32) -> tuple[p.Session, p.Session]:
    """A client session and the agent session that reads it."""
    return p.Session(key, sending=p.CLIENT), p.Session(key, sending=p.AGENT)


def test_a_frame_round_trips_with_its_payload() -> None:
    client, agent = pair()
    data = p.encode_frame(client, {"type": "put", "id": 1, "path": "a/b", "size": 3}, b"xyz")
    header, payload, used = p.decode_frame(agent, data + b"trailing")
    assert header == {"type": "put", "id": 1, "path": "a/b", "size": 3}
    assert payload == b"xyz" and used == len(data)
    assert client.send_seq == agent.recv_seq == 1


def test_an_incomplete_frame_asks_for_more_without_consuming() -> None:
    client, agent = pair()
    data = p.encode_frame(client, {"type": "bye", "id": 1}, b"")
    for cut in (0, 5, p.PREFIX.size + 3, len(data) - 1):
        assert p.decode_frame(agent, data[:cut]) is None
    assert agent.recv_seq == 0
    assert p.decode_frame(agent, data) is not None


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_changed_byte_fails(data: st.DataObject) -> None:
    client, agent = pair()
    frame = bytearray(p.encode_frame(client, {"type": "put", "id": 7, "path": "f", "size": 4}, b"abcd"))
    position = data.draw(st.integers(0, len(frame) - 1))
    frame[position] ^= data.draw(st.integers(1, 255))
    with pytest.raises(p.ProtocolError):
        result = p.decode_frame(agent, bytes(frame))
        if result is None:  # a length byte grew: the frame now looks incomplete, and stays unusable
            raise p.ProtocolError("incomplete")


def test_wrong_key_replay_and_reflection_fail() -> None:
    client, agent = pair(b"a" * 32)
    frame = p.encode_frame(client, {"type": "bye", "id": 1})
    with pytest.raises(p.ProtocolError, match="authentication"):
        p.decode_frame(p.Session(b"b" * 32, sending=p.AGENT), frame)
    p.decode_frame(agent, frame)
    with pytest.raises(p.ProtocolError, match="authentication"):
        p.decode_frame(agent, frame)  # the same frame again: seq 0 is used up
    # the agent's own frame sent back to it (direction "A" where "C" is expected)
    echo = p.encode_frame(p.Session(b"a" * 32, sending=p.AGENT), {"type": "bye", "id": 1})
    with pytest.raises(p.ProtocolError, match="authentication"):
        p.decode_frame(p.Session(b"a" * 32, sending=p.AGENT), echo)


def test_session_keys_differ_per_nonce_pair() -> None:
    k1 = p.session_key(SECRET, b"1" * 16, b"2" * 16)
    assert k1 != p.session_key(SECRET, b"1" * 16, b"3" * 16) != p.hello_key(SECRET)
    assert k1 == p.session_key(SECRET, b"1" * 16, b"2" * 16)


@pytest.mark.parametrize(
    ("prefix", "limits", "reason"),
    [
        (struct.pack(">4sIQ", b"HTTP", 10, 0), p.Limits(), "magic"),
        (struct.pack(">4sIQ", p.MAGIC, 0, 0), p.Limits(), "header of 0"),
        (struct.pack(">4sIQ", p.MAGIC, p.MAX_HEADER_BYTES + 1, 0), p.Limits(), "header of"),
        (struct.pack(">4sIQ", p.MAGIC, 10, 2**63), p.Limits(), "payload"),
        (struct.pack(">4sIQ", p.MAGIC, 2000, 0), p.HELLO_LIMITS, "header of 2000"),
        (struct.pack(">4sIQ", p.MAGIC, 100, 1), p.HELLO_LIMITS, "payload of 1"),
    ],
)
def test_prefix_limits(prefix: bytes, limits: p.Limits, reason: str) -> None:
    with pytest.raises(p.ProtocolError, match=reason):
        p.parse_prefix(prefix, limits)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"[1]", "object"),
        (b'{"id": 1}', "type"),
        (b'{"type": 1}', "type"),
        (b"\xff\xfe", "JSON"),
        (b'{"type": "a", "type": "b"}', "duplicate"),
        (b'{"type": "a", "x": NaN}', "JSON"),
        (b'{"type": "a", "x": 1e999}', "finite"),
        (b'{"type": "a", "x": ' + b"[" * 10 + b"]" * 10 + b"}", "deeper"),
        (b'{"type": "a", "x": "' + b"y" * 5000 + b'"}', "string"),
        (b'{"type": "a", "x": [' + b",".join([b"1"] * 300) + b"]}", "list"),
        (b'{"type": "a", "x": 99999999999999999999}', "range"),
        (b'{"type": "a", "x": ' + b"[" * 100000 + b"]" * 100000 + b"}", "JSON|deeper"),
    ],
)
def test_headers_are_bounded(raw: bytes, reason: str) -> None:
    with pytest.raises(p.ProtocolError, match=reason):
        p.decode_header(raw)


@pytest.mark.parametrize(
    ("header", "payload", "reason"),
    [
        ({"type": "rm -rf"}, 0, "unknown"),
        ({"type": "bye"}, 0, "missing"),
        ({"type": "bye", "id": 1, "extra": 2}, 0, "unexpected"),
        ({"type": "bye", "id": True}, 0, "int"),
        ({"type": "bye", "id": -1}, 0, "between"),
        ({"type": "bye", "id": 1}, 5, "payload"),
        ({"type": "put", "id": 1, "path": "a", "size": 4}, 5, "payload"),
        ({"type": "get", "id": 1, "path": 3, "max_bytes": 4}, 0, "str"),
    ],
)
def test_requests_must_match_their_schema(header: dict, payload: int, reason: str) -> None:
    with pytest.raises(p.ProtocolError, match=reason):
        p.check_request(header, payload)


def test_a_valid_request_passes() -> None:
    header = {"type": "put", "id": 3, "path": "jobs/7/shard.safetensors", "size": 10}
    assert p.check_request(header, 10) == header


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/etc/passwd",
        "../x",
        "a/../b",
        "a//b",
        ".hidden",
        "a/.b",
        "a b",
        "a\\b",
        "x/" * 9 + "y",
        "é",
        "a/",
    ],
)
def test_paths_stay_under_the_work_dir(path: str) -> None:
    with pytest.raises(ValueError):
        p.check_relative_path(path)


def test_plain_relative_paths_pass() -> None:
    for path in ("config.json", "jobs/7/rounds/round-3.1/global.safetensors", "a-b_c.d"):
        assert p.check_relative_path(path) == path


@pytest.mark.parametrize("secret", ["short", "x" * 300, "with space in the secret", "ünïcode-secret-0123"])
def test_weak_or_odd_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ValueError):
        p.secret_bytes(secret)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_escape_protocol_error(data: bytes) -> None:
    _, agent = pair()
    try:
        p.decode_frame(agent, data, p.HELLO_LIMITS)
    except p.ProtocolError:
        pass


class ScriptedSocket:
    """A socket-like peer that hands out prepared bytes in small pieces, then times out or closes."""

    def __init__(self, data: bytes, *, piece: int = 7, then: str = "close") -> None:
        self._data = data
        self._piece = piece
        self._then = then
        self.sent = b""
        self.timeouts: list[float | None] = []

    def recv(self, size: int) -> bytes:
        if not self._data:
            if self._then == "timeout":
                raise TimeoutError("timed out")
            return b""
        chunk, self._data = self._data[: min(size, self._piece)], self._data[min(size, self._piece) :]
        return chunk

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def settimeout(self, seconds: float | None) -> None:
        self.timeouts.append(seconds)

    def close(self) -> None:
        pass


def test_frame_reader_streams_the_payload_and_checks_its_tag() -> None:
    client, agent = pair()
    payload = bytes(range(256)) * 9000  # more than one chunk
    frame = p.encode_frame(client, {"type": "put", "id": 1, "path": "f", "size": len(payload)}, payload)
    reader = p.FrameReader(ScriptedSocket(frame, piece=100_000), agent)
    head = reader.read_head(p.Limits())
    chunks: list[bytes] = []
    reader.read_payload(head, chunks.append)
    assert b"".join(chunks) == payload and len(chunks) > 1

    tampered = bytearray(p.encode_frame(client, {"type": "put", "id": 2, "path": "f", "size": 3}, b"abc"))
    tampered[-33] ^= 1  # the payload's last byte (the tag is the 32 after it)
    reader = p.FrameReader(ScriptedSocket(bytes(tampered)), agent)
    head = reader.read_head(p.Limits())
    with pytest.raises(p.ProtocolError, match="payload"):
        reader.read_payload(head, None)


def test_a_peer_closing_between_frames_is_told_apart_from_one_closing_inside_a_frame() -> None:
    client, agent = pair()
    with pytest.raises(p.PeerClosed) as between:
        p.FrameReader(ScriptedSocket(b""), agent).read_head(p.Limits())
    assert between.value.at_boundary
    frame = p.encode_frame(client, {"type": "bye", "id": 1})
    with pytest.raises(p.PeerClosed) as inside:
        p.FrameReader(ScriptedSocket(frame[:20]), agent).read_head(p.Limits())
    assert not inside.value.at_boundary


def hello_reply(client_nonce_hex: str, agent_nonce: bytes, **fields: object) -> bytes:
    session = p.Session(p.hello_key(SECRET), sending=p.AGENT)
    header = {"type": "hello", "client_nonce": client_nonce_hex, "nonce": agent_nonce.hex(), "protocol": 1}
    return p.encode_frame(session, {**header, **fields})


class EchoingAgent(ScriptedSocket):
    """Answers the client's hello with a correct reply, then plays `after` (frames under the session key)."""

    def __init__(self, after: list[dict] | None = None, *, then: str = "close") -> None:
        super().__init__(b"", then=then)
        self._after = after or []

    def sendall(self, data: bytes) -> None:
        super().sendall(data)
        if len(self.sent) == len(data):  # the hello
            reader = p.FrameReader(ScriptedSocket(data), p.Session(p.hello_key(SECRET), sending=p.AGENT))
            header, _ = reader.read_frame(p.HELLO_LIMITS)
            agent_nonce = b"\x01" * 16
            replies = hello_reply(
                header["nonce"], agent_nonce, agent_version="1.0.0", sha256="ab", busy=False
            )
            session = p.Session(
                p.session_key(SECRET, bytes.fromhex(header["nonce"]), agent_nonce), sending=p.AGENT
            )
            session.send_seq = 1
            for frame in self._after:
                replies += p.encode_frame(session, frame)
            self._data = replies
            self.session = session  # for frames a test sends later


def test_client_hello_then_train_relays_events_in_order() -> None:
    after = [
        {"type": "event", "id": 1, "event": {"event": "progress", "step": 1}},
        {"type": "event", "id": 1, "event": {"event": "progress", "step": 2}},
        {"type": "done", "id": 1, "event": {"event": "done", "samples": 4}},
    ]
    client = p.AgentClient(EchoingAgent(after), SECRET.decode())
    hello = client.hello()
    assert hello.agent_version == "1.0.0" and hello.sha256 == "ab" and hello.busy is False
    seen: list[dict] = []
    done = client.train("jobs/1/rounds/round-1.0", on_event=seen.append)
    assert [e["step"] for e in seen] == [1, 2] and done == {"event": "done", "samples": 4}


def test_client_turns_an_error_answer_into_a_typed_failure() -> None:
    after = [{"type": "error", "id": 1, "code": "cancelled", "message": "cancelled after 3 steps"}]
    client = p.AgentClient(EchoingAgent(after), SECRET.decode())
    client.hello()
    with pytest.raises(p.AgentCancelled, match="after 3 steps"):
        client.train("r")


def test_client_reports_a_silent_close_after_hello_as_refused() -> None:
    client = p.AgentClient(ScriptedSocket(b""), SECRET.decode())
    with pytest.raises(p.AgentRefused, match="secret"):
        client.hello()


def test_client_rejects_a_forged_or_unechoed_hello() -> None:
    forged = p.encode_frame(
        p.Session(p.hello_key(b"another-secret-000000"), sending=p.AGENT),
        {"type": "hello", "client_nonce": "00" * 16, "nonce": "11" * 16},
    )
    with pytest.raises(p.AgentProtocolViolation):
        p.AgentClient(ScriptedSocket(forged), SECRET.decode()).hello()
    stale = hello_reply("00" * 16, b"\x02" * 16)  # a recorded reply to someone else's hello
    with pytest.raises(p.AgentProtocolViolation, match="nonce"):
        p.AgentClient(ScriptedSocket(stale), SECRET.decode()).hello()


def test_waiting_for_a_frame_can_time_out_and_resume() -> None:
    """A poll timeout between frames loses nothing: the client polls should_cancel and reads on."""
    agent = EchoingAgent(then="timeout")
    client = p.AgentClient(agent, SECRET.decode(), timeout_s=5)
    client.hello()
    done_bytes = p.encode_frame(agent.session, {"type": "done", "id": 1, "event": {"event": "done"}})
    polls = []  # the done frame arrives only after some polls

    def should_cancel() -> bool:
        polls.append(1)
        if len(polls) == 3:
            agent._data = done_bytes
        return False

    assert client.train("r", should_cancel=should_cancel, poll_s=0.01) == {"event": "done"}
    assert len(polls) >= 3


def test_request_ids_and_json_are_what_the_agent_expects() -> None:
    agent = EchoingAgent([{"type": "ok", "id": 1, "cancelled": False}])
    client = p.AgentClient(agent, SECRET.decode())
    client.hello()
    hello_len = len(agent.sent)
    assert client.cancel() is False
    session = p.Session(p.hello_key(SECRET), sending=p.AGENT)
    sent = agent.sent
    header, _, used = p.decode_frame(session, sent)
    assert used == hello_len and header["type"] == "hello" and json.dumps(header)
