"""Per-feature drift: each feature's PSI as a bar, with its threshold marked on it, its
verdict (ok, drift, SEVERE), its share of the model's gain and, for a small sample, the
p-value of its tests."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from appliance.api_types import DriftFeature, DriftReport
from tui import format as fmt

EIGHTHS = " ▏▎▍▌▋▊▉"


def bar(value: float, scale: float, width: int, threshold: float,
        over: bool | None = None) -> Text:
    """``value`` as a bar of ``width`` cells on ``0..scale``, the threshold as ``│``; red
    when ``over`` (by default: when the value passes the threshold)."""
    cells = max(0.0, min(value / scale, 1.0)) * width if scale > 0 else 0.0
    full, part = int(cells), int((cells - int(cells)) * 8)
    mark = min(width - 1, round(threshold / scale * width)) if scale > 0 else -1
    over = value > threshold if over is None else over
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
        gains = any(f.importance is not None for f in rows)
        tested = any(f.p_value is not None for f in rows)
        tail_w = 8 + (6 if gains else 0) + (10 if tested else 0)
        bar_w = max(10, self.size.width - name_w - 10 - tail_w)
        scale = max([f.psi or 0.0 for f in rows] + [f.threshold * 2 for f in rows])
        out = Text()
        out.append(f"{'feature':<{name_w}} {'PSI':>6}  ", style="bold")
        out.append(f"0{'':<{bar_w - 8}}{scale:>7.2f}", style="dim")
        out.append(f"  {'':<6}" + (f"{'gain':>6}" if gains else "")
                   + (f"{'p-value':>10}" if tested else ""), style="bold")
        out.append("\n")
        for i, f in enumerate(rows):
            name = f.feature if f.kind != "prediction" else f"⇒ {f.feature}"
            out.append(f"{name[:name_w]:<{name_w}} ")
            if f.psi is None:
                out.append(f"{fmt.NONE:>6}  {'':<{bar_w}}  ", style="dim")
                out.append("not measured", style="dim")
            else:
                out.append(f"{f.psi:>6.3f}  ", style="bold red" if f.drifted else "")
                out.append_text(bar(f.psi, scale, bar_w, f.threshold, over=f.drifted))
                out.append("  ")
                verdict = "SEVERE" if f.severe else "drift" if f.drifted else "ok"
                out.append(f"{verdict:<6}", style="bold red" if f.drifted else "green")
                if gains:
                    out.append(f"{fmt.NONE if f.importance is None else f'{f.importance:.0%}':>6}",
                               style="dim")
                if tested:
                    out.append(f"{pvalue(f.p_value):>10}", style="dim")
            if i < len(rows) - 1:
                out.append("\n")
        return out


def pvalue(p: float | None) -> str:
    """A p-value in a few characters: "<1e-9", "3e-05", "0.012", "1"."""
    if p is None:
        return fmt.NONE
    if p < 1e-9:
        return "<1e-9"
    if p < 0.001:
        return f"{p:.0e}"
    return f"{p:.3f}".rstrip("0").rstrip(".") if p < 1 else "1"
