"""Data sets held for suspect labels, on a pipeline's Data tab: how a file's row and its
detail read, and the two answers an operator gives (each after a confirmation): release
it (it trains) or discard it (it never trains; nothing is deleted)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text

from appliance.api_types import IngestionInfo
from tui.client import ApiError, DaemonUnavailable
from tui.screens.confirm import ConfirmScreen

if TYPE_CHECKING:
    from tui.screens.pipeline import PipelineScreen

# A data set's status as the files table shows it, when it is not simply accepted.
DATASET_STATUS_STYLE = {"held": "bold yellow", "discarded": "dim", "released": "green"}


def status_cell(item: IngestionInfo, word: str, style: str) -> Text:
    """The status column: the data set's status when it is held, discarded or released,
    else the file's own."""
    if item.dataset_status in DATASET_STATUS_STYLE:
        return Text(item.dataset_status, style=DATASET_STATUS_STYLE[item.dataset_status])
    return Text(word, style=style)


def can_release(item: IngestionInfo | None) -> bool:
    return item is not None and item.dataset_version is not None and (
        item.dataset_status in ("held", "discarded"))


def can_discard(item: IngestionInfo | None) -> bool:
    return item is not None and item.dataset_version is not None and (
        item.dataset_status == "held")


def detail(item: IngestionInfo) -> Text | None:
    """The detail of a held, discarded or released file's data set; None for others."""
    status = item.dataset_status
    if status not in DATASET_STATUS_STYLE or item.dataset_version is None:
        return None
    text = Text()
    version = f"v{item.dataset_version}"
    if status == "held":
        text.append(f"⏸ {item.file_name} held: data set {version} does not train",
                    style="bold yellow")
        text.append(f" ({item.rows or 0:,} rows)\n")
    elif status == "discarded":
        text.append(f"✗ {item.file_name} discarded: data set {version} never trains",
                    style="bold")
        text.append(" (the original stays in archive/, the data set in datasets/)\n")
    else:
        text.append(f"✓ {item.file_name} released: data set {version} trains",
                    style="bold green")
        text.append(f" ({item.rows or 0:,} rows)\n")
    text.append(item.dataset_status_reason or "no reason recorded")
    if status == "held":
        text.append("\nl: release it (it trains) · x: discard it (it never trains; "
                    "nothing is deleted)", style="dim")
    elif status == "discarded":
        text.append("\nl: release it after all (it trains)", style="dim")
    return text


def confirm_release(screen: PipelineScreen, item: IngestionInfo) -> None:
    version = item.dataset_version
    if version is None:
        return
    question = f"Release data set v{version} of {screen.pipeline} for training?"
    why = ("Its labels looked wrong to the production model. " if item.dataset_status ==
           "held" else "")
    extra = (f"{why}{item.file_name} ({item.rows or 0:,} rows) then trains like any data "
             "set: its rows count as new data, and a model trained on them still has to "
             "pass the gate.")

    def answered(yes: bool | None) -> None:
        if yes:
            _send(screen, "release", version)

    screen.app.push_screen(ConfirmScreen(question, extra, yes="Release"), answered)


def confirm_discard(screen: PipelineScreen, item: IngestionInfo) -> None:
    version = item.dataset_version
    if version is None:
        return
    question = f"Discard data set v{version} of {screen.pipeline}?"
    extra = (f"{item.file_name} will never train. Nothing is deleted: the original stays in "
             f"archive/{screen.pipeline}/ and the data set in datasets/, and a release lets "
             "it train after all.")

    def answered(yes: bool | None) -> None:
        if yes:
            _send(screen, "discard", version)

    screen.app.push_screen(ConfirmScreen(question, extra, yes="Discard"), answered)


def _send(screen: PipelineScreen, action: str, version: int) -> None:
    console = screen.console
    name = screen.pipeline

    async def call() -> None:
        client = console.client
        try:
            answer = await (client.release(name, version) if action == "release"
                            else client.discard(name, version))
        except DaemonUnavailable as exc:
            console.connection_lost(exc)
            console.notify(str(exc), title=f"{action.title()} not sent", severity="error",
                           markup=False)
            return
        except ApiError as exc:
            console.notify(exc.message, title=f"v{version} not {action}d", severity="error",
                           markup=False, timeout=10)
            return
        console.notify(f"{name}: {answer.message}", title=f"{action.title()}d", markup=False,
                       timeout=10)
        screen.poll(force=True)

    console.run_worker(call(), group="admin", name=f"{action} {name} v{version}",
                       exit_on_error=False)
