"""The token files (issue 19.19): written whole and durably (file and folder fsynced, the
name appearing only once the token is in it), and two first starts racing both end with
the same token, without a crash."""

from __future__ import annotations

import multiprocessing
import os
import stat
import threading
from pathlib import Path

import pytest

from appliance.core import StateDir
from appliance.core import statedir as statedir_module


def _first_start(root: str, barrier, out) -> None:
    barrier.wait()
    try:
        out.put(("ok", StateDir(Path(root)).ensure_token()))
    except Exception as exc:  # a crash of the start is what the test looks for
        out.put(("error", repr(exc)))


@pytest.mark.parametrize("round_", range(6))
def test_first_starts_racing_end_with_one_token(tmp_path, round_):
    """Processes, as two `appliance run` would be: all start at the barrier."""
    root = tmp_path / "state"
    root.mkdir()
    ctx = multiprocessing.get_context("fork")
    n = 6
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_first_start, args=(str(root), barrier, out))
             for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert [kind for kind, _ in results] == ["ok"] * n, results
    tokens = {token for _, token in results}
    assert len(tokens) == 1 and len(tokens.pop()) >= 43
    assert (root / "token").read_text().strip() == results[0][1]
    assert sorted(p.name for p in root.iterdir()) == ["token"]  # no temporary left


def test_threads_racing_never_read_a_half_written_token(tmp_path):
    for i in range(30):
        root = tmp_path / f"s{i}"
        root.mkdir()
        state = StateDir(root)
        barrier = threading.Barrier(8)
        seen: list[object] = []

        def start(state=state, barrier=barrier, seen=seen) -> None:
            barrier.wait()
            try:
                seen.append(state.ensure_predict_token())
            except Exception as exc:
                seen.append(exc)

        threads = [threading.Thread(target=start) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(isinstance(s, str) for s in seen), seen
        assert len(set(seen)) == 1 and seen[0], seen


def test_the_token_is_fsynced_with_its_folder_before_it_is_named(tmp_path, monkeypatch):
    """What a power cut needs: the token's bytes on disk before its name is, and the name
    in the folder on disk before the start goes on."""
    root = tmp_path / "state"
    root.mkdir()
    token_path = root / "token"
    synced: list[tuple[str, bool]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        synced.append((target, token_path.exists()))
        real_fsync(fd)

    monkeypatch.setattr(statedir_module.os, "fsync", fsync)
    token = StateDir(root).ensure_token()
    assert token_path.read_text() == token + "\n"
    files = [(t, named) for t, named in synced if t != str(root)]
    folders = [(t, named) for t, named in synced if t == str(root)]
    # The file's data was synced while the final name did not exist yet...
    assert files and not files[0][1], synced
    # ...and the folder after the name appeared.
    assert folders and folders[-1][1], synced
    mode = stat.S_IMODE(token_path.stat().st_mode)
    assert mode == 0o600
    assert sorted(p.name for p in root.iterdir()) == ["token"]
    synced.clear()
    assert StateDir(root).ensure_token() == token and synced == []  # read, never rewritten


def test_a_file_system_without_hard_links_still_gets_a_whole_token(tmp_path, monkeypatch):
    """FAT (a USB stick as the state dir) has no hard links: rename into place instead."""
    import errno

    def no_links(*_a, **_k):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(statedir_module.os, "link", no_links)
    state = StateDir(tmp_path)
    token = state.ensure_token()
    assert state.token_file.read_text() == token + "\n" and len(token) >= 43
    assert stat.S_IMODE(state.token_file.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token"]
    assert state.ensure_token() == token
