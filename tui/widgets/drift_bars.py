"""Per-feature drift: each feature's PSI as a bar, with its threshold marked on it."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from appliance.api_types import DriftFeature, DriftReport
from tui import format as fmt

EIGHTHS = " ▏▎▍▌▋▊▉"


def bar(value: float, scale: float, width: int, threshold: float) -> Text:
    """``value`` as a bar of ``width`` cells on ``0..scale``, the threshold as ``│``."""
    cells = max(0.0, min(value / scale, 1.0)) * width if scale > 0 else 0.0
    full, part = int(cells), int((cells - int(cells)) * 8)
    mark = min(width - 1, round(threshold / scale * width)) if scale > 0 else -1
    over = value > threshold
    text = Text()
    for i in range(width):
        if i == mark:
            text.append("│" if i >= full else "┃", style="bold yellow")
        elif i < full:
            text.append("█", style="red" if over else "green")
        elif i == full and part:
            text.append(EIGHTHS[part], style="red" if over else "green")
        else:
            text.append("·", style="dim")
    return text


class DriftBars(Widget):
    DEFAULT_CSS = """
    DriftBars { height: auto; }
    """

    report: reactive[DriftReport | None] = reactive(None, layout=True)

    def rows(self) -> list[DriftFeature]:
        r = self.report
        if r is None:
            return []
        rows = sorted(r.features, key=lambda f: -(f.psi if f.psi is not None else -1))
        return rows + ([r.prediction] if r.prediction is not None else [])

    def get_content_height(self, container, viewport, width: int) -> int:  # type: ignore[no-untyped-def]
        n = len(self.rows())
        return n + 1 if n else 1

    def render(self) -> Text:
        rows = self.rows()
        if not rows:
            return Text("no features were compared", style="dim")
        name_w = min(24, max(len(f.feature) for f in rows) + (2 if self.report and
                                                             self.report.prediction else 0))
        bar_w = max(10, self.size.width - name_w - 18)
        scale = max([f.psi or 0.0 for f in rows] + [f.threshold * 2 for f in rows])
        out = Text()
        out.append(f"{'feature':<{name_w}} {'PSI':>6}  ", style="bold")
        out.append(f"0{'':<{bar_w - 8}}{scale:>7.2f}", style="dim")
        out.append("\n")
        for i, f in enumerate(rows):
            name = f.feature if f.kind != "prediction" else f"⇒ {f.feature}"
            out.append(f"{name[:name_w]:<{name_w}} ")
            if f.psi is None:
                out.append(f"{fmt.NONE:>6}  {'':<{bar_w}}  ", style="dim")
                out.append("not measured", style="dim")
            else:
                out.append(f"{f.psi:>6.3f}  ", style="bold red" if f.drifted else "")
                out.append_text(bar(f.psi, scale, bar_w, f.threshold))
                out.append("  ")
                out.append("drift" if f.drifted else "ok",
                           style="bold red" if f.drifted else "green")
            if i < len(rows) - 1:
                out.append("\n")
        return out
