"""The platform's one seam to ADB. Nothing else in the project imports adb_shell.

CONTRACT (implemented by the virtual-phone issue; callers code against exactly this):

    class AdbError(Exception)                  # base; .message is human-readable
    class DeviceOffline(AdbError)              # refused / reset / unreachable / connection lost
    class DeviceUnauthorized(AdbError)         # phone rejected our key (or waits for a person to accept)
    class DeviceTimeout(AdbError)              # phone connected but did not answer in time
    class TransferFailed(AdbError)             # push/pull broke or remote file missing
    class CommandFailed(AdbError)              # shell command exited non-zero (.exit_code, .output)

    @dataclass(frozen=True)
    class Target:                              # where a phone is
        transport: Literal["tcp", "usb"]
        address: str                           # "host:port" for tcp, serial for usb

    def connect(target: Target, *, timeout_s: float = 5.0) -> AdbConnection
        # uses the platform identity (devices/adb_identity.py); TCP_NODELAY on.

    class AdbConnection:                       # context manager; close() is idempotent
        def shell(self, command: str, *, timeout_s: float = 30.0) -> str
        def run(self, command: str, *, timeout_s: float = 30.0) -> str
            # like shell() but checks the exit status (via an `; echo <marker>$?` suffix) and raises
            # CommandFailed on non-zero
        def stream_lines(self, command: str, *, timeout_s: float) -> Iterator[str]
            # complete lines as the phone produces them (no trailing newline)
        def push(self, local: Path, remote: str, *, progress: Callable[[int, int], None] | None = None,
                 timeout_s: float = 120.0) -> int          # bytes sent; progress(done, total)
        def pull(self, remote: str, local: Path, *, progress=None, timeout_s: float = 120.0) -> int
        def stat(self, remote: str) -> RemoteStat | None   # None when missing

    def quote(arg: str) -> str                  # shlex.quote: every argument put into a command uses it

Every adb_shell / socket exception is mapped to one of the types above; callers never see a raw one.
"""
