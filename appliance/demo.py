"""``appliance demo``: the whole appliance on its sample data, in a fresh state directory."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

from appliance import logs
from appliance.config import load
from appliance.statedir import StateDir

PIPELINE = "machines"
# Fed in this order: the first batch trains version 1; the broken file is refused.
FEED = ["machines_01.csv", "machines_02.csv", "machines_broken.csv",
        "machines_03_drifted.csv"]


def sample_dir() -> Path:
    """The sample data: beside the package in a checkout, inside it in a wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "sample_data", here / "_sample_data"):
        if (candidate / FEED[0]).exists():
            return candidate
    raise FileNotFoundError("the sample data is missing; run sample_data/generate.py")


def drop(state: StateDir, source: Path) -> None:
    folder = state.inbox / PIPELINE
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{source.name}.part"
    shutil.copyfile(source, tmp)
    tmp.rename(folder / source.name)


def run_demo(state_root: Path | None, port: int, interval: float) -> int:
    from appliance.daemon import StartupError, run

    root = state_root or Path(tempfile.mkdtemp(prefix="appliance-demo-"))
    state = StateDir(root.absolute())
    state.create()
    samples = sample_dir()
    if not state.config.exists():
        shutil.copyfile(samples / "appliance.toml", state.config)
    settings = load(state.root, None, {"server.port": port})
    logs.setup(settings.log.level)
    url = f"http://127.0.0.1:{port}"
    example = ('{"rows": [{"timestamp": "2026-03-01T10:00:00", "machine_id": "M-007", '
               '"machine_type": "press", "site": "south", "temperature_c": 71.5, '
               '"vibration_mm_s": 2.9, "pressure_bar": 7.6, "rpm": 1480, '
               '"humidity_pct": 55.0, "hours_since_service": 820.0}]}')
    print(f"""
appliance demo
  state directory: {state.root}
  feeding {', '.join(FEED)} into {state.inbox / PIPELINE}, one every {interval:.0f} s

Once the first file is trained (a few seconds), predict with:

  curl -s {url}/v1/pipelines/{PIPELINE}/predict -H 'content-type: application/json' \\
       -d '{example}'

  watch it:  curl -s {url}/v1/pipelines   or   appliance status --state-dir {state.root}
  stop it:   Ctrl-C
""", flush=True)
    stop = threading.Event()

    def feed() -> None:
        for i, name in enumerate(FEED):
            if i and stop.wait(interval):
                return
            drop(state, samples / name)

    threading.Thread(target=feed, name="demo-feed", daemon=True).start()
    try:
        return run(settings, state)
    except StartupError as exc:
        print(f"appliance: {exc}")
        return 1
    finally:
        stop.set()
        time.sleep(0)
