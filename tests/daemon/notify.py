"""A stand-in for systemd's end of sd_notify: a real AF_UNIX datagram socket that records
every message the daemon sends, with the time it arrived."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from pathlib import Path


class NotifyListener:
    def __init__(self, folder: Path) -> None:
        path = folder / "notify.sock"
        if len(os.fsencode(path)) > 100:  # sun_path is 108 bytes; pytest paths can be long
            path = Path(tempfile.mkdtemp(prefix="sd-")) / "notify.sock"
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._closed = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.messages.append((time.monotonic(), data.decode()))
                self._cond.notify_all()

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "NOTIFY_SOCKET": str(self.path), **extra}

    def texts(self) -> list[str]:
        with self._cond:
            return [m for _, m in self.messages]

    def with_key(self, line: str) -> list[tuple[float, str]]:
        """Messages with a line that equals ``line`` or starts with ``line`` (for ``KEY=``)."""
        with self._cond:
            return [(t, m) for t, m in self.messages
                    if any(x == line or (line.endswith("=") and x.startswith(line))
                           for x in m.split("\n"))]

    def wait_for(self, line: str, timeout: float = 30.0, count: int = 1) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self.with_key(line)
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no {line!r} (x{count}) within {timeout}s; got {self.texts()}")
                self._cond.wait(left)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        self.sock.close()
        self.path.unlink(missing_ok=True)
