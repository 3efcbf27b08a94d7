"""A DataTable that is updated in place and can be filtered by typing."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import DataTable

Cell = str | Text
Row = tuple[str, Sequence[Cell]]


def _plain(cell: Cell) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)


class FilterTable(DataTable[Cell]):
    """Rows are given whole on every refresh (``set_rows``); unchanged rows stay put,
    changed cells are updated in place, and the cursor stays on the same row key.

    ``filter_text`` hides the rows that do not contain it (any column, any case)."""

    DEFAULT_CSS = """
    FilterTable { height: 1fr; }
    """

    filter_text: reactive[str] = reactive("", init=False)
    FOLLOW_TOP = False
    """A live feed, newest first: a cursor on the top row stays on the top row."""
    FLEX_COLUMN: str | None = None
    """The key of the column that takes the width left over, cropping what does not fit."""

    def __init__(self, *, title: str = "", id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True)
        self._title = title
        self._all: list[Row] = []
        self.border_title = title

    @property
    def title(self) -> str:
        return self._title

    @title.setter
    def title(self, value: str) -> None:
        if value != self._title:
            self._title = value
            self._retitle(self.row_count)

    @property
    def total(self) -> int:
        return len(self._all)

    @property
    def highlighted_key(self) -> str | None:
        if not self.row_count:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except Exception:
            return None
        return key.value

    def set_rows(self, rows: list[Row]) -> None:
        self._all = rows
        self._apply()

    def on_resize(self) -> None:
        self.call_after_refresh(self._fit)

    def _fit(self) -> None:
        if self.FLEX_COLUMN is None or self.FLEX_COLUMN not in self.columns:
            return
        flex = self.columns[self.FLEX_COLUMN]  # type: ignore[index]
        others = sum(c.get_render_width(self) for k, c in self.columns.items()
                     if k != self.FLEX_COLUMN)
        width = max(10, self.scrollable_content_region.width - others - 2 * self.cell_padding)
        if flex.width != width or flex.auto_width:
            flex.auto_width = False
            flex.width = width
            self._require_update_dimensions = True
            self.refresh()

    def watch_filter_text(self) -> None:
        self._apply()

    def _visible(self) -> list[Row]:
        needle = self.filter_text.strip().lower()
        if not needle:
            return self._all
        return [r for r in self._all if needle in " ".join(_plain(c) for c in r[1]).lower()]

    def _apply(self) -> None:
        visible = self._visible()
        shown = [row.key.value for row in self.ordered_rows]
        columns = list(self.columns)
        if shown == [k for k, _ in visible]:
            for key, cells in visible:
                for column, cell in zip(columns, cells, strict=False):
                    if self.get_cell(key, column) != cell:
                        self.update_cell(key, column, cell)
        else:
            keep = self.highlighted_key
            at_top = self.cursor_row == 0
            scroll_y = self.scroll_y
            self.clear()
            for key, cells in visible:
                self.add_row(*cells, key=key)
            index = 0 if self.FOLLOW_TOP and at_top else next(
                (i for i, (k, _) in enumerate(visible) if k == keep), 0)
            if visible:
                self.move_cursor(row=index, animate=False, scroll=False)
            self.scroll_y = min(scroll_y, max(0, len(visible) - 1))
        self._retitle(len(visible))
        self._fit()

    def _retitle(self, visible: int) -> None:
        if self.filter_text.strip():
            self.border_title = (f"{self._title} · filter “{self.filter_text.strip()}”: "
                                 f"{visible} of {len(self._all)}")
        else:
            self.border_title = self._title
