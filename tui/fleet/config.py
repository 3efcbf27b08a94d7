"""The fleet file: a TOML list of boxes.

```toml
[[box]]
name = "line-1"
url = "http://10.0.4.11:8080"
token_file = "tokens/line-1.read_token"     # or token = "..."
admin_token_file = "tokens/line-1.token"    # optional: actions from the box's screens
```

``token`` / ``token_file``: what reads send (the box's ``read_token`` is enough; its
predict or admin token read too). ``admin_token`` / ``admin_token_file``: sent with
actions (promote, retrain, release, discard) from that box's own screens, and with reads
when there is no ``token``; without it the box's screens are read-only. Either is sent
only to a box that first proved it holds it
(``GET /v1/identity``). A relative ``*_file`` is read from the fleet file's folder; a token
file, and a fleet file that holds a token itself, must not be readable by group or others
(``chmod 600``), as ssh asks of its keys.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

KEYS = {"name", "url", "token", "token_file", "admin_token", "admin_token_file"}


class FleetFileError(Exception):
    """The fleet file can't be used; the message names the file, the box and the field."""


@dataclass(frozen=True)
class FleetBox:
    name: str
    url: str
    token: str | None = None  # sent with reads
    admin_token: str | None = None  # sent only with actions, from the box's own screens


def _private(path: Path, what: str) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise FleetFileError(
            f"{path}: {what} is readable by others (mode {stat.S_IMODE(mode):o}); make it "
            f"private with `chmod 600 {path}`")


def _token(entry: dict[str, object], key: str, where: str, base: Path,
           inline: list[str]) -> str | None:
    value, file = entry.get(key), entry.get(f"{key}_file")
    if value is not None and file is not None:
        raise FleetFileError(f"{where}: give `{key}` or `{key}_file`, not both")
    if value is not None:
        if not isinstance(value, str) or not value.strip():
            raise FleetFileError(f"{where}: `{key}` must be a non-empty string")
        inline.append(key)
        return value.strip()
    if file is None:
        return None
    if not isinstance(file, str) or not file:
        raise FleetFileError(f"{where}: `{key}_file` must be a path")
    path = Path(file).expanduser()
    path = path if path.is_absolute() else base / path
    try:
        _private(path, f"the {key.replace('_', ' ')} file")
        text = path.read_text().strip()
    except OSError as exc:
        raise FleetFileError(f"{where}: `{key}_file` {path} can't be read "
                             f"({exc.strerror or exc}); check the path") from exc
    if not text:
        raise FleetFileError(f"{where}: `{key}_file` {path} is empty; copy the box's "
                             f"token into it")
    return text


def parse_fleet(text: str, source: Path) -> list[FleetBox]:
    """The boxes of a fleet file's text; ``source`` names it in errors and is where
    relative token files are read from."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FleetFileError(f"{source}: not valid TOML ({exc})") from exc
    extra = sorted(set(doc) - {"box"})
    if extra:
        raise FleetFileError(f"{source}: unknown top-level key(s) {', '.join(extra)}; a fleet "
                             "file holds only [[box]] entries")
    entries = doc.get("box")
    if not isinstance(entries, list) or not entries:
        raise FleetFileError(f"{source}: no boxes; add one [[box]] entry per box with "
                             "name = \"...\" and url = \"http://host:port\"")
    boxes: list[FleetBox] = []
    inline: list[str] = []
    for i, entry in enumerate(entries, start=1):
        where = f"{source}, box {i}"
        if not isinstance(entry, dict):
            raise FleetFileError(f"{where}: must be a [[box]] table")
        unknown = sorted(set(entry) - KEYS)
        if unknown:
            raise FleetFileError(f"{where}: unknown key(s) {', '.join(unknown)}; a box has "
                                 f"{', '.join(sorted(KEYS))}")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise FleetFileError(f"{where}: `name` is missing or empty")
        where = f"{source}, box {i} ({name})"
        if any(b.name == name for b in boxes):
            raise FleetFileError(f"{where}: a box named {name!r} is listed twice; names "
                                 "must be unique")
        url = entry.get("url")
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise FleetFileError(f"{where}: `url` must be http://host:port or "
                                 f"https://host:port, not {url!r}")
        boxes.append(FleetBox(name=name, url=url.rstrip("/"),
                              token=_token(entry, "token", where, source.parent, inline),
                              admin_token=_token(entry, "admin_token", where, source.parent,
                                                 inline)))
    if inline:
        _private(source, "the fleet file, which holds tokens,")
    return boxes


def load_fleet(path: str | os.PathLike[str]) -> list[FleetBox]:
    source = Path(path).expanduser()
    try:
        text = source.read_text()
    except OSError as exc:
        raise FleetFileError(f"{source}: can't read the fleet file "
                             f"({exc.strerror or exc})") from exc
    return parse_fleet(text, source)
