"""The daemon: the parts wired into one process (:class:`Services`), its lifecycle
(start, reload, stop), and systemd's notifications.

``appliance.daemon.sdnotify`` is a public module too."""

from appliance.daemon.lifecycle import Daemon, StartupError, run
from appliance.daemon.services import Services

__all__ = [
    "Daemon",
    "Services",
    "StartupError",
    "run",
]
