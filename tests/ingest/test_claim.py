"""The claim of a dropped file trusts nothing the dropper can change: a pipeline folder
swapped for a symlink after its file was noticed is not followed (issue 19.3), and a
hard-linked file is copied when claimed, so the dropper's other link can't change what is
ingested and archived (issue 19.18)."""

from __future__ import annotations

import os
from pathlib import Path

from appliance.ingest import InboxWatcher
from tests.conftest import wait_for
from tests.ingest.ingest_files import good_csv
from tests.ingest.test_ingest_daemon import configure, finals, ingestions, settled
from tests.ingest.test_ingest_files import Harness


def watcher_of(h: Harness) -> tuple[InboxWatcher, list[Path]]:
    """The real watcher on the harness's state dir, its threads not started: the test
    calls the steps itself, to put its move between noticing a file and claiming it."""
    taken: list[Path] = []
    watcher = InboxWatcher(h.state, h.settings.ingest, lambda p, _: taken.append(p),
                           events=h.events)
    return watcher, taken


def test_a_pipeline_folder_swapped_for_a_link_after_notice_is_not_followed(h, tmp_path):
    watcher, taken = watcher_of(h)
    folder = h.state.pipeline_dir(h.state.inbox, "p")
    (folder / "token").write_bytes(b"dropped\n")  # an odd name, refused later as a format
    watcher.note(folder / "token", renamed=True)
    # Now the dropper swaps the folder for a link to the state directory itself, where the
    # admin token (or the database, or another pipeline's data) lies under that name.
    real_token = h.state.token_file.read_bytes()
    folder.rename(tmp_path / "away")
    folder.symlink_to(h.state.root)
    watcher._check_pending()
    assert h.state.token_file.read_bytes() == real_token
    assert taken == []
    assert list(h.state.processing.rglob("*")) in ([], [h.state.processing / "p"])
    # Put back as a real folder, its files are taken as ever.
    folder.unlink()
    (tmp_path / "away").rename(folder)
    (folder / "good.csv").write_bytes(good_csv())
    watcher.note(folder / "good.csv", renamed=True)
    watcher._check_pending()
    assert [p.name.split("__", 1)[1] for p in taken] == ["good.csv"]


def test_a_hard_linked_file_is_copied_when_claimed(h, tmp_path):
    watcher, taken = watcher_of(h)
    mine = tmp_path / "mine.csv"
    mine.write_bytes(good_csv(20))
    folder = h.state.pipeline_dir(h.state.inbox, "p")
    os.link(mine, folder / "data.csv")
    watcher.note(folder / "data.csv", renamed=True)
    watcher._check_pending()
    assert len(taken) == 1
    claimed = taken[0]
    assert claimed.stat().st_nlink == 1 and mine.stat().st_nlink == 1
    assert claimed.stat().st_ino != mine.stat().st_ino
    with open(mine, "r+b") as f:  # the dropper writes through its own link
        f.write(b"changed")
    assert claimed.read_bytes() == good_csv(20)
    assert not (folder / "data.csv").exists()
    assert [p.name for p in claimed.parent.iterdir()] == [claimed.name]  # no temp left


def test_a_claim_that_crashed_before_its_copy_is_copied_at_recovery(h, tmp_path):
    """A crash between the rename and the copy leaves a hard-linked file claimed: the
    recovery at the next start copies it before it is ingested."""
    watcher, taken = watcher_of(h)
    mine = tmp_path / "mine.csv"
    mine.write_bytes(good_csv(20))
    claimed = h.state.pipeline_dir(h.state.processing, "p") / "1__data.csv"
    os.link(mine, claimed)
    (claimed.parent / ".copy-1__data.csv").write_bytes(b"half")
    watcher.recover()
    assert taken == [claimed]
    assert claimed.stat().st_nlink == 1 and mine.stat().st_nlink == 1
    assert [p.name for p in claimed.parent.iterdir()] == ["1__data.csv"]


def test_hard_linked_drops_are_archived_as_they_were(state_root, start_daemon, tmp_path):
    """Through the daemon: a file linked from outside is archived as it was dropped, and
    two names of one file are both taken, the second as a duplicate."""
    configure(state_root)
    daemon = start_daemon(state_root)
    folder = state_root / "inbox/p"
    folder.mkdir(parents=True, exist_ok=True)
    mine = tmp_path / "mine.csv"
    mine.write_bytes(good_csv(30))
    os.link(mine, folder / ".linked.part")
    os.rename(folder / ".linked.part", folder / "linked.csv")
    wait_for(lambda: settled(state_root, 1), timeout=30, what="the hard-linked file")
    archived = state_root / "archive/p/linked.csv"
    assert archived.stat().st_nlink == 1 and mine.stat().st_nlink == 1
    with open(mine, "r+b") as f:  # the dropper writes through its own link
        f.write(b"changed")
    assert archived.read_bytes() == good_csv(30)

    other = tmp_path / "other.csv"
    other.write_bytes(good_csv(40))
    os.link(other, folder / ".a.part")
    os.link(other, folder / ".b.part")
    os.rename(folder / ".a.part", folder / "a.csv")
    os.rename(folder / ".b.part", folder / "b.csv")
    wait_for(lambda: settled(state_root, 3), timeout=30, what="both names")
    assert sorted(finals(state_root)["archive"]) == ["a.csv", "b.csv", "linked.csv"]
    statuses = {i["file_name"]: i["status"] for i in ingestions(daemon)}
    assert statuses["linked.csv"] == "accepted"
    assert sorted([statuses["a.csv"], statuses["b.csv"]]) == ["accepted", "duplicate"]
    assert other.stat().st_nlink == 1
