"""The box's resources: psutil samples of the daemon process and of the machine (CPU,
memory, threads, open files, load, free disk on the state directory, temperature), stored
at each ``monitor.resource_interval_seconds``, and the disk and memory pressure events."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import psutil

from appliance.api_types import ResourceSample
from appliance.core import Settings
from appliance.monitoring.alarm import Alarm
from appliance.store import Events, ResourceRecord, Store

MiB = 1024 * 1024


class ResourceSampler:
    """Samples the process and the box; raises ``disk_pressure`` and ``memory_pressure``
    once per episode."""

    def __init__(self, store: Store, settings: Settings, events: Events, state_root: Path,
                 clock: Callable[[], float]) -> None:
        self.store = store
        self.settings = settings
        self.events = events
        self.state_root = state_root
        self.clock = clock
        self.latest: ResourceRecord | None = None
        # The state directory's disk size (for Prometheus' free-space ratio; not stored).
        self.disk_total_bytes: int | None = None
        self._proc = psutil.Process(os.getpid())
        self._proc.cpu_percent(None)  # the first reading primes the counters
        psutil.cpu_percent(None)
        self._temperatures = hasattr(psutil, "sensors_temperatures")
        self._disk_alarm = Alarm()
        self._memory_alarm = Alarm()

    def sample(self) -> ResourceRecord:
        """Sample the process and the box, store it, and raise pressure events."""
        p = self._proc
        with p.oneshot():
            cpu = p.cpu_percent(None)
            rss = p.memory_info().rss
            threads = p.num_threads()
            fds = p.num_fds() if hasattr(p, "num_fds") else len(p.open_files())
        vm = psutil.virtual_memory()
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
        usage = psutil.disk_usage(str(self.state_root))
        disk = usage.free
        self.disk_total_bytes = usage.total
        sample = ResourceRecord(
            seconds=self.settings.monitor.resource_interval_seconds, ts=self.clock(),
            process_cpu_percent=cpu, process_rss_bytes=rss, process_threads=threads,
            process_open_files=fds, cpu_percent=psutil.cpu_percent(None),
            memory_available_bytes=vm.available, memory_percent=vm.percent, load_1m=load,
            disk_free_bytes=disk, temperature_c=self._temperature(),
        )
        self.store.add_resource_sample(sample)
        self.latest = sample
        self._pressure(sample)
        return sample

    def _temperature(self) -> float | None:
        """The hottest sensor the box reports, or None when it reports none."""
        if not self._temperatures:
            return None
        try:
            sensors = psutil.sensors_temperatures()
        except Exception:
            sensors = {}
        readings = [t.current for entries in sensors.values() for t in entries
                    if t.current is not None and -50 < t.current < 200]
        if not sensors:
            self._temperatures = False  # none now, none later: stop asking
        return max(readings) if readings else None

    def _pressure(self, s: ResourceRecord) -> None:
        cfg = self.settings.monitor
        disk_min = cfg.min_free_disk_mb * MiB
        if self._disk_alarm.update(self._disk_alarm.below(s.disk_free_bytes, disk_min)):
            self.events.emit(
                "disk_pressure",
                f"{s.disk_free_bytes / MiB:.0f} MB free on the state directory's disk, under "
                f"{cfg.min_free_disk_mb} MB (monitor.min_free_disk_mb); free space or lower "
                "monitor.predictions_max_rows", level="warning",
                free_bytes=s.disk_free_bytes, path=str(self.state_root),
            )
        mem_min = cfg.min_available_memory_mb * MiB
        if self._memory_alarm.update(self._memory_alarm.below(s.memory_available_bytes,
                                                              mem_min)):
            self.events.emit(
                "memory_pressure",
                f"{s.memory_available_bytes / MiB:.0f} MB of memory available, under "
                f"{cfg.min_available_memory_mb} MB (monitor.min_available_memory_mb); this "
                f"process uses {s.process_rss_bytes / MiB:.0f} MB", level="warning",
                available_bytes=s.memory_available_bytes, rss_bytes=s.process_rss_bytes,
            )


def resource_sample(r: ResourceRecord) -> ResourceSample:
    """A stored sample as the API shows it."""
    return ResourceSample(**{f: getattr(r, f) for f in _SAMPLE_FIELDS})


_SAMPLE_FIELDS = tuple(ResourceSample.__struct_fields__)
