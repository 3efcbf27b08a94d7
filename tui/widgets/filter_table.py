"""A DataTable that is updated in place and can be filtered by typing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

from rich.cells import cell_len
from rich.text import Text
from textual.reactive import reactive
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey

Cell = str | Text
Row = tuple[str, Sequence[Cell]]


def _as_text(cell: Cell) -> Text:
    """A cell as drawn: a str is plain text (DataTable would read it as markup)."""
    return cell if isinstance(cell, Text) else Text(cell)


def _plain(cell: Cell) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)


def _crop(cell: Cell, width: int) -> Cell:
    if cell_len(_plain(cell)) <= width:
        return cell
    text = cell.copy() if isinstance(cell, Text) else Text(cell)
    text.truncate(width, overflow="ellipsis")
    return text


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
    """The key of the column whose text is cropped to the width the others leave."""

    def __init__(self, *, title: str = "", id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True)
        self._title = title
        self._all: list[Row] = []
        self._specs: list[tuple[Text, str]] = []
        self._widths: list[int] = []
        self._width = 0
        self.border_title = Text(title)

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
        """The rows, whole; a str cell is shown as plain text, never as markup."""
        self._all = [(key, [_as_text(c) for c in cells]) for key, cells in rows]
        self._apply()

    def on_resize(self) -> None:
        if self.FLEX_COLUMN is not None and self.scrollable_content_region.width != self._width:
            self._apply()

    def watch_filter_text(self) -> None:
        self._apply()

    def _visible(self) -> list[Row]:
        needle = self.filter_text.strip().lower()
        if not needle:
            return self._all
        return [r for r in self._all if needle in " ".join(_plain(c) for c in r[1]).lower()]

    def add_column(self, label: str | Text, *, width: int | None = None,  # type: ignore[override]
                   key: str | None = None, default: Cell | None = None) -> ColumnKey:
        """Columns are laid out by this table (see ``_apply``), not measured by DataTable."""
        label = Text(label) if isinstance(label, str) else label
        self._specs = [s for s in self._specs if s[1] != key] + [(label, key or label.plain)]
        return super().add_column(label, width=max(1, cell_len(label.plain)), key=key,
                                  default=default)

    def clear(self, columns: bool = False) -> Self:
        if columns:
            self._specs = []
            self._widths = []
        return super().clear(columns)

    def _layout(self, rows: list[Row]) -> tuple[list[Row], list[int]]:
        """The width of each column (its widest cell), the flex column cropped to the room
        the others leave."""
        keys = [key for _, key in self._specs]
        widths = [cell_len(label.plain) for label, _ in self._specs]
        for _, cells in rows:
            for i, cell in enumerate(cells[: len(widths)]):
                widths[i] = max(widths[i], cell_len(_plain(cell)))
        self._width = room = self.scrollable_content_region.width
        if self.FLEX_COLUMN not in keys or room <= 0:
            return rows, widths
        flex = keys.index(self.FLEX_COLUMN)
        pad = 2 * self.cell_padding
        used = sum(w + pad for i, w in enumerate(widths) if i != flex) + pad
        fit = max(8, room - used - self.styles.scrollbar_size_vertical)
        widths[flex] = min(widths[flex], fit)
        return [(key, [_crop(c, fit) if i == flex else c for i, c in enumerate(cells)])
                for key, cells in rows], widths

    def _apply(self) -> None:
        visible, widths = self._layout(self._visible())
        shown = [row.key.value for row in self.ordered_rows]
        columns = [c.key for c in self.ordered_columns]
        if shown == [k for k, _ in visible] and widths == self._widths:
            for key, cells in visible:
                for column, cell in zip(columns, cells, strict=False):
                    if self.get_cell(key, column) != cell:
                        self.update_cell(key, column, cell)
        else:
            # Rebuilt whole, with fixed widths: DataTable's own measuring happens later, on
            # idle, and can leave rows drawn at stale widths.
            keep = self.highlighted_key
            at_top = self.cursor_row == 0
            scroll_y = self.scroll_y
            specs = self._specs
            super().clear(columns=True)
            for (label, key), width in zip(specs, widths, strict=True):
                super().add_column(label, width=width, key=key)
            self._widths = widths
            for key, cells in visible:
                self.add_row(*cells, key=key)
            index = 0 if self.FOLLOW_TOP and at_top else next(
                (i for i, (k, _) in enumerate(visible) if k == keep), 0)
            if visible:
                self.move_cursor(row=index, animate=False, scroll=False)
            self.scroll_y = min(scroll_y, max(0, len(visible) - 1))
        self._retitle(len(visible))

    def _retitle(self, visible: int) -> None:
        # Text, not markup: a title may hold a name, and the filter what the operator typed.
        if self.filter_text.strip():
            self.border_title = Text(f"{self._title} · filter “{self.filter_text.strip()}”: "
                                     f"{visible} of {len(self._all)}")
        else:
            self.border_title = Text(self._title)
