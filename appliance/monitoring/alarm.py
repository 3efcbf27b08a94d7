"""An on/off condition with a memory, so that each alarm of the monitor (disk, memory,
drift, live performance) raises its event once per episode, not at every check."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Alarm:
    """An on/off condition that raises its event only when it turns on."""
    on: bool = False

    def update(self, now_on: bool) -> bool:
        turned_on = now_on and not self.on
        self.on = now_on
        return turned_on

    def below(self, value: float, floor: float) -> bool:
        """``value`` is under ``floor``; once on, the alarm clears only 10% above it
        (hysteresis, so it doesn't flap)."""
        return value < floor or (self.on and value < floor * 1.1)
