"""The state directory: every file the appliance keeps, in one place (see DESIGN.md)."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StateDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "appliance.toml"

    @property
    def db(self) -> Path:
        return self.root / "appliance.db"

    @property
    def token_file(self) -> Path:
        return self.root / "token"

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def processing(self) -> Path:
        """Files claimed from the inbox and being ingested; re-processed after a crash."""
        return self.root / "processing"

    @property
    def archive(self) -> Path:
        return self.root / "archive"

    @property
    def rejected(self) -> Path:
        return self.root / "rejected"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def create(self) -> None:
        """Make the layout (idempotent) and the admin token on first start."""
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in (self.inbox, self.processing, self.archive, self.rejected, self.datasets,
                    self.models):
            sub.mkdir(exist_ok=True)
        self.ensure_token()

    def ensure_token(self) -> str:
        """Return the admin token, creating it (256 bits, mode 0600) when absent."""
        return _ensure_secret(self.token_file)

    @property
    def predict_token_file(self) -> Path:
        """The token predict clients send when ``server.predict_token_required``."""
        return self.root / "predict_token"

    def ensure_predict_token(self) -> str:
        """Return the predict token, creating it (256 bits, mode 0600) when absent."""
        return _ensure_secret(self.predict_token_file)

    @property
    def read_token_file(self) -> Path:
        """The token readers (the console, scripts, Prometheus) send when the API listens
        beyond loopback (or ``server.read_token_required``)."""
        return self.root / "read_token"

    def ensure_read_token(self) -> str:
        """Return the read token, creating it (256 bits, mode 0600) when absent."""
        return _ensure_secret(self.read_token_file)

    def pipeline_dir(self, area: Path, pipeline: str) -> Path:
        path = area / pipeline
        path.mkdir(parents=True, exist_ok=True)
        return path


def _ensure_secret(path: Path) -> str:
    """The token in ``path``, or a new one (256 bits, URL-safe) when absent.

    A new token is written whole before its name exists: into a hidden temporary file made
    with mode 0600 from the start (O_EXCL: never readable by others, not even for a
    moment), fsynced, then linked to its name (``link`` is atomic and never replaces a
    file), and the folder fsynced: after a power cut the token is either absent (and made
    again) or whole. Two first starts racing both end with the token of the one that
    linked first; neither crashes, neither reads a half-written file."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path, follow_symlinks=False)
        except FileExistsError:
            pass  # another start made it first: its token is the one
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            _replace_once(tmp, path)  # no hard links on this file system (FAT)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)
    return path.read_text().strip()


def _replace_once(tmp: Path, path: Path) -> None:
    """Where ``link`` is not supported: rename into place unless a token is there by now
    (a race between two first starts on such a file system may then keep the later one)."""
    if not path.exists():
        os.replace(tmp, path)


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (a file created, renamed or removed in it) durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
