"""Reliability with real processes (issue 9): kill -9 at random moments while the daemon
ingests, trains and serves; nothing lost, doubled, half-written or left unanswered."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
import polars as pl
import pytest

from appliance.core import StateDir
from appliance.models import Registry
from appliance.store import Store
from tests.conftest import FAST_CONFIG, SAMPLES, DaemonProcess, copy_state, drop, wait_for

CRASH_CONFIG = FAST_CONFIG.replace("settle_seconds = 0.2", "settle_seconds = 0.05").replace(
    "rescan_seconds = 1.0", "rescan_seconds = 0.5")

PIPE = "machines"


def integrity_ok(root: Path) -> None:
    db = sqlite3.connect(f"file:{root / 'appliance.db'}?mode=ro", uri=True, timeout=10)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        db.close()


def placed(root: Path) -> dict[str, list[str]]:
    """Every dropped file's name -> the areas it is in (reason files apart)."""
    out: dict[str, list[str]] = {}
    for area in ("inbox", "processing", "archive", "rejected"):
        folder = root / area / PIPE
        if not folder.exists():
            continue
        for p in folder.iterdir():
            if p.name.endswith(".reason.json") or p.name.startswith("."):
                continue
            out.setdefault(p.name, []).append(area)
    return out


def stray_tmp(root: Path) -> list[Path]:
    # os.walk, not rglob: a running daemon removes its temp folders while they are listed.
    return [Path(d) / n for area in ("models", "datasets")
            for d, dirs, files in os.walk(root / area)
            for n in dirs + files if n.startswith(".tmp-")]


def models_intact(root: Path) -> list[int]:
    """Every registered model's files match their hashes and load; returns the versions."""
    store = Store.open(root / "appliance.db")
    try:
        registry = Registry(StateDir(root), store)
        versions = sorted(store.model_versions(PIPE))
        for v in versions:
            registry.load(PIPE, v)  # raises on a missing, damaged or unusable model
        production = store.production_model(PIPE)
        return [production.version] if production else []
    finally:
        store.close()


def crash_files(rng: random.Random) -> list[tuple[str, bytes]]:
    """Good files (distinct rows, so none is a duplicate), bad ones, and a big one."""
    data = pl.concat([pl.read_csv(SAMPLES / "machines_01.csv"),
                      pl.read_csv(SAMPLES / "machines_02.csv")])
    files: list[tuple[str, bytes]] = []
    start = 0
    for i in range(22):
        if i == 5:
            files.append((f"big{i}.csv", data.slice(start, 2500).write_csv().encode()))
            start += 2500
        elif i % 4 == 3:
            bad = [b"reading_id,timestamp\n1,2\n3,4,5\n", b"\xff\xfe\x00garbage\n",
                   (SAMPLES / "machines_broken.csv").read_bytes() + str(i).encode()]
            files.append((f"bad{i}.csv", rng.choice(bad)))
        else:
            files.append((f"good{i}.csv", data.slice(start, 80).write_csv().encode()))
            start += 80
    return files


class PredictClient(threading.Thread):
    """Predicts in a loop against whichever daemon is current; counts server errors."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.url: str | None = None
        self.done = threading.Event()
        self.statuses: list[int] = []
        rows = pl.read_csv(SAMPLES / "machines_02.csv", n_rows=3).drop("failed_within_24h")
        self.body = {"rows": rows.to_dicts()}

    def run(self) -> None:
        with httpx.Client(timeout=5) as http:
            while not self.done.is_set():
                url = self.url
                if url is None:
                    time.sleep(0.02)
                    continue
                try:
                    r = http.post(f"{url}/v1/pipelines/{PIPE}/predict", json=self.body)
                    self.statuses.append(r.status_code)
                except httpx.HTTPError:
                    time.sleep(0.02)  # killed under us: the next daemon comes


@pytest.mark.timeout(150)
def test_kill_9_at_random_moments_while_ingesting_training_and_serving(state_root):
    (state_root / "appliance.toml").write_text(CRASH_CONFIG)
    seed = int(os.environ.get("APPLIANCE_CRASH_SEED", "0")) or random.randrange(1 << 30)
    rng = random.Random(seed)
    files = crash_files(rng)
    client = PredictClient()
    client.start()
    dropped: list[str] = []
    daemon = DaemonProcess(state_root, [])
    try:
        rounds = 20
        for n in range(rounds):
            client.url = daemon.url
            for _ in range(rng.choice((0, 1, 1, 2))):
                if len(dropped) < len(files):
                    name, content = files[len(dropped)]
                    src = state_root.parent / f"src-{name}"
                    src.write_bytes(content)
                    drop(state_root, PIPE, src, name)
                    dropped.append(name)
            time.sleep(rng.uniform(0.0, 1.2))
            client.url = None
            daemon.stop(signal.SIGKILL)
            daemon = DaemonProcess(state_root, [])
            what = f"round {n} (seed {seed})"
            integrity_ok(state_root)
            # The new daemon moves files while the areas are listed one after the other, so
            # one listing can see a file twice or not at all: a real loss or double persists.
            def once_each() -> bool:
                where = placed(state_root)
                return sorted(where) == sorted(dropped) and all(
                    len(a) == 1 for a in where.values())

            if not once_each():
                wait_for(once_each, timeout=5, every=0.05,
                         what=f"each file in one place, {what}: {placed(state_root)}")
            # A temp file of the new daemon's own work in flight (a recovered file being
            # stored again) goes away; one left by the killed daemon stays.
            if stray_tmp(state_root):
                wait_for(lambda: stray_tmp(state_root) == [], timeout=5, every=0.05,
                         what=f"no stray temp file, {what}: {stray_tmp(state_root)}")
            production = models_intact(state_root)
            assert daemon.get("/health").status_code == 200, what
            if production:
                ready = daemon.get("/ready")
                assert ready.status_code == 200, (what, ready.text)
                assert ready.json()["models"][PIPE] == production[0], what
        # The rest of the files, then let it all settle with no more kills.
        client.url = daemon.url
        for name, content in files[len(dropped):]:
            src = state_root.parent / f"src-{name}"
            src.write_bytes(content)
            drop(state_root, PIPE, src, name)
            dropped.append(name)

        def settled() -> bool:
            where = placed(state_root)
            return sorted(where) == sorted(dropped) and all(
                a in (["archive"], ["rejected"]) for a in where.values())

        wait_for(settled, timeout=40, what=f"every file placed (seed {seed})")
        for name, areas in placed(state_root).items():
            if areas == ["rejected"]:
                assert (state_root / "rejected" / PIPE / f"{name}.reason.json").exists(), name
            else:
                assert name.startswith(("good", "big")), (name, seed)
        for name in dropped:
            if name.startswith(("good", "big")):
                assert (state_root / "archive" / PIPE / name).exists(), (name, seed)
        daemon.wait_ready_model(PIPE, 1, timeout=40)
        integrity_ok(state_root)
        models_intact(state_root)
    finally:
        client.done.set()
        client.url = None
        daemon.stop(signal.SIGKILL)
    client.join(10)
    assert 500 not in client.statuses, f"seed {seed}"
    assert any(s == 200 for s in client.statuses), "the client never got a prediction"


# --- a full disk ----------------------------------------------------------------------------

def mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {result.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mount_tmpfs(mnt, "40m")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(path: Path, leave_bytes: int) -> None:
    """Grow ``path`` until the disk has about ``leave_bytes`` free (0: until it is full)."""
    with open(path, "ab") as f:
        while True:
            free = shutil.disk_usage(path.parent).free
            if free <= leave_bytes:
                break
            try:
                f.write(b"\0" * min(1 << 20, max(4096, free - leave_bytes)))
                f.flush()
            except OSError:
                break
        with contextlib.suppress(OSError):
            os.fsync(f.fileno())


def events_of(daemon: DaemonProcess, kind: str) -> list[dict]:
    return [e for e in daemon.get("/v1/events", params={"limit": 500}).json()["events"]
            if e["kind"] == kind]


@pytest.mark.timeout(120)
def test_a_full_disk_stops_ingestion_and_training_but_not_serving(small_disk, tmp_path):
    root = small_disk / "state"
    root.mkdir()
    config = FAST_CONFIG.replace("[ingest]\n", "[ingest]\nmin_free_mb = 8\n")
    (root / "appliance.toml").write_text(config + "\n[jobs]\nretry_attempts = 0\n")
    daemon = DaemonProcess(root, [], log_dir=tmp_path)  # the journal is on another disk
    try:
        drop(root, PIPE, SAMPLES / "machines_01.csv")
        daemon.wait_ready_model(PIPE, 1)
        rows = {"rows": pl.read_csv(SAMPLES / "machines_02.csv", n_rows=3)
                .drop("failed_within_24h").to_dicts()}
        before = daemon.post(f"/v1/pipelines/{PIPE}/predict", json=rows).json()["predictions"]
        filler = small_disk / "filler.bin"
        fill(filler, 3 << 20)  # below ingest.min_free_mb

        # Training refuses with a clear failed job and event; nothing is registered.
        assert daemon.post(f"/v1/pipelines/{PIPE}/retrain", admin=True).status_code == 202
        failed = wait_for(lambda: events_of(daemon, "training_failed"), timeout=20,
                          what="the refused training")
        assert "min_free_mb" in failed[0]["message"], failed
        jobs = daemon.get(f"/v1/pipelines/{PIPE}/jobs").json()["history"]
        assert jobs[0]["status"] == "failed" and "disk" in jobs[0]["error"], jobs[0]

        # Truly full (the floor set to 0 live): a retrain fails and registers nothing.
        def set_floor(mb: int) -> None:
            seen = daemon.log().count("config_reloaded")
            (root / "appliance.toml").write_text(
                config.replace("min_free_mb = 8", f"min_free_mb = {mb}")
                + "\n[jobs]\nretry_attempts = 0\n")
            daemon.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: daemon.log().count("config_reloaded") > seen, timeout=10,
                     what="the reload")

        set_floor(0)
        fill(filler, 0)
        daemon.post(f"/v1/pipelines/{PIPE}/retrain", admin=True)
        time.sleep(2)
        wait_for(lambda: daemon.get(f"/v1/pipelines/{PIPE}/jobs").json()["history"][0]
                 ["status"] != "running", timeout=20, what="the training to end")
        assert stray_tmp(root) == []
        assert not any(p.name.isdigit() and p.name != "1" for p in (root / "models" / PIPE)
                       .iterdir())
        r = daemon.post(f"/v1/pipelines/{PIPE}/predict", json=rows)
        assert r.status_code == 200 and r.json()["predictions"] == before
        assert daemon.get("/health").status_code == 200

        # Ingestion holds new files in the inbox, and says so.
        set_floor(8)
        os.truncate(filler, filler.stat().st_size - (3 << 20))  # room to drop, not to take
        drop(root, PIPE, SAMPLES / "machines_02.csv")
        wait_for(lambda: events_of(daemon, "waiting_for_space"), timeout=10,
                 what="the waiting event")
        assert (root / "inbox" / PIPE / "machines_02.csv").exists()
        # Serving goes on, with the same model.
        r = daemon.post(f"/v1/pipelines/{PIPE}/predict", json=rows)
        assert r.status_code == 200 and r.json()["predictions"] == before
        assert daemon.get("/ready").status_code == 200

        # Space is freed: the waiting file is taken, a retrain follows and succeeds.
        last_job = daemon.get(f"/v1/pipelines/{PIPE}/jobs").json()["history"][0]["id"]
        filler.unlink()
        wait_for(lambda: (root / "archive" / PIPE / "machines_02.csv").exists(), timeout=20,
                 what="the waiting file, once space is back")

        def retrained() -> bool:  # a job after the freeing, not the first one (also new_data)
            jobs = daemon.get(f"/v1/pipelines/{PIPE}/jobs").json()["history"]
            return any(j["status"] == "succeeded" and j["trigger"] == "new_data"
                       and j["id"] > last_job for j in jobs)

        wait_for(retrained, timeout=40, what="a retrain once space is back")
        assert daemon.post(f"/v1/pipelines/{PIPE}/retrain", admin=True).status_code == 202
        assert stray_tmp(root) == []
        integrity_ok(root)
        models_intact(root)
        assert daemon.proc.poll() is None
    except BaseException:
        print(daemon.log()[-6000:])
        raise
    finally:
        daemon.stop()


# --- a refused request changes nothing ------------------------------------------------------

STATE_QUERIES = {
    "models": "SELECT pipeline, version, stage, decision FROM models ORDER BY 1, 2",
    "jobs": "SELECT id, status FROM jobs ORDER BY id",
    "events": "SELECT count(*) FROM events",
    "datasets": "SELECT count(*) FROM datasets",
    "ingestions": "SELECT count(*) FROM ingestions",
    "feedback": "SELECT count(*) FROM feedback",
    "predictions": "SELECT count(*) FROM predictions",
    "pipelines": "SELECT name FROM pipelines ORDER BY 1",
}


def db_state(root: Path) -> dict[str, list[tuple]]:
    db = sqlite3.connect(f"file:{root / 'appliance.db'}?mode=ro", uri=True, timeout=10)
    try:
        return {k: db.execute(q).fetchall() for k, q in STATE_QUERIES.items()}
    finally:
        db.close()


def test_refused_requests_leave_the_state_unchanged(trained_template, tmp_path, start_daemon):
    root = copy_state(trained_template, tmp_path / "state")
    daemon = start_daemon(root)
    daemon.wait_ready_model(PIPE, 1)
    rows = pl.read_csv(SAMPLES / "machines_02.csv", n_rows=2).drop("failed_within_24h")
    served = daemon.post(f"/v1/pipelines/{PIPE}/predict", json={"rows": rows.to_dicts()})
    assert served.status_code == 200  # a valid request, for contrast: it is served
    time.sleep(0.5)  # the prediction log flushes
    before = db_state(root)
    bad = {"Authorization": "Bearer not-the-token"}
    good = {"Authorization": f"Bearer {daemon.token}"}
    refused = [
        ("promote, wrong token", f"/v1/pipelines/{PIPE}/models/1/promote", bad, None, 401),
        ("promote, no token", f"/v1/pipelines/{PIPE}/models/1/promote", {}, None, 401),
        ("promote, unknown version", f"/v1/pipelines/{PIPE}/models/99/promote", good, None,
         404),
        ("promote, unknown pipeline", "/v1/pipelines/nope/models/1/promote", good, None, 404),
        ("retrain, wrong token", f"/v1/pipelines/{PIPE}/retrain", bad, None, 401),
        ("retrain, unknown pipeline", "/v1/pipelines/nope/retrain", good, None, 404),
        ("retrain, bad body", f"/v1/pipelines/{PIPE}/retrain", good,
         b'{"tune_trials": "many"}', 400),
        ("retrain, not JSON", f"/v1/pipelines/{PIPE}/retrain", good, b"{", 400),
        ("predict, rows not a list", f"/v1/pipelines/{PIPE}/predict", {}, b'{"rows": 3}', 400),
        ("predict, not JSON", f"/v1/pipelines/{PIPE}/predict", {}, b"\xff{", 400),
        ("predict, unknown pipeline", "/v1/pipelines/nope/predict", {}, b'{"rows": [{}]}', 404),
        ("predict, missing features", f"/v1/pipelines/{PIPE}/predict", {}, b'{"rows": [{}]}',
         422),
    ]
    for what, path, headers, body, status in refused:
        r = daemon.http.post(path, headers={**headers, "Content-Type": "application/json"},
                             content=body or b"")
        assert r.status_code == status, (what, r.status_code, r.text)
    time.sleep(0.5)
    assert db_state(root) == before
    assert daemon.get("/ready").json()["models"] == {PIPE: 1}


# --- bounded load while ingesting and retraining ---------------------------------------------

LOAD_SECONDS = float(os.environ.get("APPLIANCE_LOAD_SECONDS", "20"))  # the issue asks 60


@pytest.mark.timeout(LOAD_SECONDS + 120)
def test_bounded_load_while_ingesting_and_retraining(trained_template, tmp_path, start_daemon):
    """Two clients predict back to back for ``APPLIANCE_LOAD_SECONDS`` (20 s here; the
    issue's 60 s with APPLIANCE_LOAD_SECONDS=60) while files arrive and models retrain:
    no request fails, and the daemon's RSS is stable (the last third's peak within 25 MB
    of the first third's)."""
    import psutil

    root = copy_state(trained_template, tmp_path / "state")
    daemon = start_daemon(root)
    daemon.wait_ready_model(PIPE, 1)
    proc = psutil.Process(daemon.proc.pid)
    body = {"rows": pl.read_csv(SAMPLES / "machines_02.csv", n_rows=20)
            .drop("failed_within_24h").to_dicts()}
    stop = threading.Event()
    failures: list[str] = []
    counts = [0, 0]

    def client(i: int) -> None:
        with httpx.Client(base_url=daemon.url, timeout=10) as http:
            while not stop.is_set():
                try:
                    r = http.post(f"/v1/pipelines/{PIPE}/predict", json=body)
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    data = pl.read_csv(SAMPLES / "machines_02.csv")
    samples: list[float] = []
    started = time.monotonic()
    dropped = 0
    while (elapsed := time.monotonic() - started) < LOAD_SECONDS:
        samples.append(proc.memory_info().rss / 1e6)
        if elapsed > dropped * LOAD_SECONDS / 4 and dropped < 4:
            src = tmp_path / f"part{dropped}.csv"
            data.slice(dropped * 300, 300).write_csv(src)
            drop(root, PIPE, src)
            dropped += 1
        time.sleep(0.25)
    stop.set()
    for t in threads:
        t.join(15)
    assert failures == [], failures[:5]
    assert sum(counts) > 20 * LOAD_SECONDS / 10, counts
    jobs = daemon.get(f"/v1/pipelines/{PIPE}/jobs").json()["history"]
    assert sum(j["trigger"] == "new_data" for j in jobs) >= 2, jobs  # it retrained meanwhile
    third = len(samples) // 3
    first, last = max(samples[:third]), max(samples[-third:])
    assert last <= first + 25, (f"RSS grew from {first:.0f} MB to {last:.0f} MB",
                                samples[::8])
