"""Exec mode's cancel: the platform drops the cancel flag into the round dir; the per-round agent stops after
its current step, writes no update, and says it was cancelled."""

import io
import json
import threading
import time

from training.agent import cli
from training.agent.round_config import CANCEL_FILE, OUTPUT_FILES


def test_a_cancel_flag_stops_a_running_train_within_a_second(phone, monkeypatch):
    monkeypatch.setattr(cli, "default_work_dir", lambda: phone.work_dir)
    phone.config.update(epochs=200)  # minutes of training at this slowdown if nothing stops it
    phone.write_config()
    out = io.StringIO()
    rc: list[int] = []
    agent = threading.Thread(
        target=lambda: rc.append(
            cli.main(["train", str(phone.round_dir)], stdout=out, environ={"FEDFLEET_SLOWDOWN": "20"})
        )
    )
    agent.start()
    deadline = time.monotonic() + 60
    while '"progress"' not in out.getvalue():  # training is under way
        assert time.monotonic() < deadline, out.getvalue()
        agent.join(0.05)
    (phone.round_dir / CANCEL_FILE).touch()
    flagged = time.monotonic()
    agent.join(10)
    stopped_after = time.monotonic() - flagged
    assert not agent.is_alive()
    assert stopped_after < 1.0
    assert rc == [1]
    last = json.loads(out.getvalue().splitlines()[-1])
    assert last["event"] == "error" and "cancelled" in last["message"]
    assert not any((phone.round_dir / name).exists() for name in OUTPUT_FILES)


def test_without_a_flag_the_watcher_changes_nothing(phone, monkeypatch):
    monkeypatch.setattr(cli, "default_work_dir", lambda: phone.work_dir)
    out = io.StringIO()
    assert cli.main(["train", str(phone.round_dir)], stdout=out, environ={}) == 0
    assert json.loads(out.getvalue().splitlines()[-1])["event"] == "done"
