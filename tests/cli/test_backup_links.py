"""``appliance backup`` copies links as links, never what they point at, and leaves out
FIFOs, sockets and devices (issue 19.4): a refused symlink in rejected/ must not bring its
target into the backup, nor after a restore to the service's user."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from click.testing import CliRunner

from appliance.cli import cli
from appliance.core import StateDir
from appliance.store import Store

SECRET = b"root:$6$secret-hash:19000:0:99999:7:::\n"


def state_with_links(tmp_path: Path) -> tuple[StateDir, Path]:
    state = StateDir(tmp_path / "state")
    state.create()
    Store.open(state.db).close()
    outside = tmp_path / "outside"
    outside.mkdir()
    shadow = outside / "shadow"
    shadow.write_bytes(SECRET)
    shadow.chmod(0o600)
    (outside / "secrets").mkdir()
    (outside / "secrets/key").write_bytes(SECRET)
    rejected = state.rejected / "p"
    rejected.mkdir(parents=True)
    (rejected / "link.csv").symlink_to(shadow)                 # a refused symlink drop
    (rejected / "link.csv.reason.json").write_text('{"code": "not_a_regular_file"}')
    (rejected / "folder.csv").symlink_to(outside / "secrets")  # a link to a folder
    os.mkfifo(rejected / "pipe.csv")                           # a refused FIFO
    with socket.socket(socket.AF_UNIX) as s:                   # a socket
        s.bind(str(rejected / "sock.csv"))
    (state.archive / "p").mkdir(parents=True)
    (state.archive / "p/data.csv").write_bytes(b"a,b\n1,2\n")
    (state.root / "notes.txt").symlink_to(shadow)              # links at the top, too
    (state.root / "models").rmdir()
    (state.root / "models").symlink_to(outside / "secrets")
    return state, shadow


def every_byte(root: Path) -> bytes:
    out = b""
    for dirpath, _, files in os.walk(root):  # never follows links
        for name in files:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                out += path.read_bytes()
    return out


def test_backup_copies_links_as_links_and_skips_special_files(tmp_path):
    state, shadow = state_with_links(tmp_path)
    dest = tmp_path / "backup"
    result = CliRunner().invoke(cli, ["backup", str(dest), "--state-dir", str(state.root)])
    assert result.exit_code == 0, result.output
    assert SECRET not in every_byte(dest)
    link = dest / "rejected/p/link.csv"
    assert link.is_symlink() and os.readlink(link) == str(shadow)
    assert (dest / "rejected/p/folder.csv").is_symlink()
    assert (dest / "notes.txt").is_symlink() and (dest / "models").is_symlink()
    assert not (dest / "rejected/p/pipe.csv").exists()
    assert not (dest / "rejected/p/sock.csv").exists()
    assert (dest / "rejected/p/link.csv.reason.json").exists()
    assert (dest / "archive/p/data.csv").read_bytes() == b"a,b\n1,2\n"
    assert "2 special file(s) left out" in result.output
    assert "rejected/p/pipe.csv" in result.output
    assert "vanished" not in result.output and "moved while copying" not in result.output
