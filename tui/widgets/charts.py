"""Time series drawn as terminal charts (plotext), x in minutes before now."""

from __future__ import annotations

from collections.abc import Sequence

from textual_plotext import PlotextPlot


class TimeChart(PlotextPlot):
    """A line chart of one or more series over the recent past.

    Each series is ``(label, xs, ys)`` with xs in unix seconds; ``now`` anchors the axis, so
    a chart built from fixed data and a fixed clock draws the same every time."""

    DEFAULT_CSS = """
    TimeChart { height: 1fr; min-height: 6; }
    """

    def __init__(self, title: str, ylabel: str = "", *, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._title = title
        self._ylabel = ylabel

    def on_mount(self) -> None:
        # PlotextPlot's own on_mount runs too (Textual calls each class's handler).
        self._start()

    def _start(self) -> None:
        plt = self.plt
        plt.clear_figure()
        plt.title(self._title)
        if self._ylabel:
            plt.ylabel(self._ylabel)
        plt.xlabel("minutes ago")

    def plot(self, series: Sequence[tuple[str, Sequence[float], Sequence[float]]], now: float,
             *, hline: float | None = None, bars: bool = False, ymin: float | None = None,
             ) -> None:
        self._start()
        plt = self.plt
        colors = ["cyan", "orange", "red", "green", "magenta"]
        xmin = 0.0
        for i, (label, xs, ys) in enumerate(series):
            if not xs:
                continue
            # A window still open ends after now: drawn at now, not past the axis (plotext
            # drops points outside the limits, and a series left empty crashes its legend).
            minutes = [min(0.0, (x - now) / 60.0) for x in xs]
            xmin = min(xmin, *minutes)
            if bars:
                plt.bar(minutes, list(ys), label=label, color=colors[i % len(colors)],
                        width=0.8 / max(1, len(series)))
            else:
                plt.plot(minutes, list(ys), label=label, color=colors[i % len(colors)],
                         marker="braille")
        if hline is not None:
            plt.hline(hline, "yellow")
        plt.xlim(min(xmin, -1.0), 0.0)
        if ymin is not None:
            plt.ylim(lower=ymin)
        self.refresh()
