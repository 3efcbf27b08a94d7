"""The state directory: every file the appliance keeps, in one place (see DESIGN.md)."""

from __future__ import annotations

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
    """The token in ``path``, or a new one (256 bits, URL-safe) written with mode 0600 from
    the start (O_EXCL: never readable by others, not even for a moment)."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token
