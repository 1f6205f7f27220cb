"""The zygote process: imports torch, numpy and safetensors once, then forks one child per agent command.

Run as a script (`python zygote_server.py <control fd>`), stdlib only at import time. The lab sends each
request as one SOCK_SEQPACKET message on the inherited control socket: a JSON object
{"program", "args", "cwd", "env"} with two descriptors attached, a status socket and the write end of the
output pipe. The zygote forks; the child becomes the program (runpy) with stdout and stderr on the pipe;
the zygote writes `{"pid": N}` and later `{"exit": status}` as lines on the status socket. If the status
socket closes early (the lab gave up on the command), the child's process group is killed. When the
control socket closes (the lab is gone), every child is killed and the zygote exits.

No torch operation runs here before a fork: only imports, so no thread pool exists to be forked broken.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import random
import runpy
import selectors
import signal
import socket
import sys
import threading
import traceback
import zipfile
from pathlib import Path
from typing import Any

PRELOAD = ("numpy", "torch", "safetensors", "safetensors.torch")
MAX_REQUEST = 1 << 20


def preload() -> list[str]:
    loaded = []
    for name in PRELOAD:
        try:
            __import__(name)
            loaded.append(name)
        except Exception:  # noqa: S112 - a missing optional module only costs start-up time later
            continue
    return loaded


def exit_status(wait_status: int) -> int:
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


class Zygote:
    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.selector = selectors.DefaultSelector()
        self.children: dict[int, socket.socket] = {}  # pid -> status socket
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)

    def serve(self) -> None:
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wake_w)
        self.selector.register(self.control, selectors.EVENT_READ, "control")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        while True:
            for key, _ in self.selector.select():
                if key.data == "control":
                    if not self._on_request():
                        self._shutdown()
                        return
                elif key.data == "wake":
                    os.read(self.wake_r, 4096)
                    self._reap()
                else:
                    self._on_status_closed(key.data)

    def _on_request(self) -> bool:
        try:
            message, fds, _, _ = socket.recv_fds(self.control, MAX_REQUEST, 2)
        except InterruptedError:
            return True
        if not message:
            return False
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            return True
        status = socket.socket(fileno=fds[0])
        output_fd = fds[1]
        try:
            request = json.loads(message)
        except ValueError:
            status.close()
            os.close(output_fd)
            return True
        pid = os.fork()
        if pid == 0:
            self._become_child(request, output_fd, status)
        os.close(output_fd)
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass  # the child did it first
        self.children[pid] = status
        self.selector.register(status, selectors.EVENT_READ, pid)
        self._send(status, {"pid": pid})
        return True

    def _send(self, status: socket.socket, message: dict[str, int]) -> None:
        try:
            status.sendall(json.dumps(message).encode() + b"\n")
        except OSError:
            pass

    def _reap(self) -> None:
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            status = self.children.pop(pid, None)
            if status is not None:
                self.selector.unregister(status)
                self._send(status, {"exit": exit_status(wait_status)})
                status.close()

    def _on_status_closed(self, pid: int) -> None:
        status = self.children.get(pid)
        if status is None:
            return
        try:
            still_open = status.recv(1, socket.MSG_PEEK) != b""
        except OSError:
            still_open = False
        if not still_open:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            # Forget the child here: _reap() still collects its exit (nobody is told), and must not
            # unregister the socket a second time — that KeyError used to kill the zygote, and with it
            # every agent running on the lab.
            del self.children[pid]
            self.selector.unregister(status)
            status.close()

    def _shutdown(self) -> None:
        for pid in list(self.children):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass

    # --- in the forked child ----------------------------------------------------------------------
    def _become_child(self, request: dict[str, Any], output_fd: int, status: socket.socket) -> None:
        code = 1
        try:
            os.setpgid(0, 0)
            self._drop_zygote_state(status)
            _redirect_stdio(output_fd)
            code = run_program(request)
        except BaseException:  # noqa: BLE001 - the child must always reach os._exit
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # noqa: S110 - the pipe may be gone
                    pass
            os._exit(code & 0xFF)

    def _drop_zygote_state(self, status: socket.socket) -> None:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # what a fresh interpreter has
        self.selector.close()
        self.control.close()
        status.close()
        for other in self.children.values():
            other.close()
        os.close(self.wake_r)
        os.close(self.wake_w)
        atexit._clear()  # the zygote's exit handlers are not the program's


def _redirect_stdio(output_fd: int) -> None:
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(output_fd, 1)
    os.dup2(output_fd, 2)
    os.close(output_fd)
    # Unbuffered, like the plain path's PYTHONUNBUFFERED=1: each print reaches the host at once.
    stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    out = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", write_through=True)
    err = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", write_through=True
    )
    for name, stream in (("stdin", stdin), ("stdout", out), ("stderr", err)):
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _fresh_seeds() -> None:
    """Forked children would otherwise share the zygote's RNG states and draw the same numbers."""
    random.seed()
    if "numpy" in sys.modules:
        import numpy

        numpy.random.seed(int.from_bytes(os.urandom(4), "little"))
    if "torch" in sys.modules:
        import torch

        torch.manual_seed(int.from_bytes(os.urandom(8), "little") & (2**63 - 1))
        torch.set_num_threads(1)


def run_program(request: dict[str, Any]) -> int:
    program = str(request["program"])
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in request["env"].items()})
    sys.argv = [program, *map(str, request["args"])]
    # `python prog.py` puts the script's directory first on sys.path; for a zip app run_path puts the
    # archive there itself.
    if not zipfile.is_zipfile(program):
        sys.path.insert(0, str(Path(program).resolve().parent))
    _fresh_seeds()
    try:
        runpy.run_path(program, run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = _system_exit_code(exc.code)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001 - an uncaught exception prints its traceback and exits 1
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    threading._shutdown()  # type: ignore[attr-defined]  # wait for non-daemon threads, as at exit
    return code


def _system_exit_code(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    print(value, file=sys.stderr)
    return 1


def main() -> None:
    # Script mode put this file's directory first on sys.path; its modules (profile, shell, sync...)
    # must not shadow standard or third-party ones, nor be visible to the programs we run.
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p and str(Path(p).resolve()) != here]
    control = socket.socket(fileno=int(sys.argv[1]))
    loaded = preload()
    print("READY " + ",".join(loaded), flush=True)
    Zygote(control).serve()


if __name__ == "__main__":
    main()
