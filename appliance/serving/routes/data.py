"""A pipeline's data and work: its ingestions (accepted and refused files, with reasons,
and the status of the data set each made: held when its labels are suspect) and its jobs
(scheduled, and the history of runs)."""

from litestar import get
from litestar.params import FromPath, FromQuery

from appliance.api_types import IngestionInfo, IngestionList, JobInfo, JobsResponse
from appliance.serving.context import Context
from appliance.serving.errors import ERRORS_PIPELINE, ERRORS_QUERY
from appliance.serving.routes.shared import known_pipeline
from appliance.store import DatasetRecord


@get("/v1/pipelines/{name:str}/ingestions", sync_to_thread=True, tags=["data"],
     responses={**ERRORS_QUERY, **ERRORS_PIPELINE})
def ingestions(name: FromPath[str], context: Context,
               limit: FromQuery[int] = 100) -> IngestionList:
    """Accepted and refused files, newest first, with reasons."""
    known_pipeline(context, name)
    records = context.store.ingestions(name, limit=max(1, min(limit, 1000)))
    sets = {d.version: d for d in context.store.datasets(name)}
    return IngestionList(pipeline=name, ingestions=[
        IngestionInfo(id=r.id, file_name=r.file_name, status=r.status, code=r.code,
                      reason=r.reason, details=r.details, warnings=r.warnings, rows=r.rows,
                      columns=r.columns, size_bytes=r.size_bytes, sha256=r.sha256,
                      dataset_version=r.dataset_version, received_at=r.received_at,
                      finished_at=r.finished_at, duration_ms=r.duration_ms,
                      dataset_path=r.dataset_path,
                      **_dataset_status(sets.get(r.dataset_version)))
        for r in records
    ])


def _dataset_status(record: DatasetRecord | None) -> dict[str, str | None]:
    if record is None:
        return {}
    return {"dataset_status": record.status, "dataset_status_reason": record.status_reason}


@get("/v1/pipelines/{name:str}/jobs", sync_to_thread=True, tags=["jobs"],
     responses={**ERRORS_QUERY, **ERRORS_PIPELINE})
def jobs(name: FromPath[str], context: Context,
         limit: FromQuery[int] = 50) -> JobsResponse:
    """Scheduled jobs with their next run, and the history of job runs, newest first."""
    known_pipeline(context, name)
    history = [
        JobInfo(id=j.id, pipeline=j.pipeline, kind=j.kind, trigger=j.trigger,
                status=j.status, started_at=j.started_at, finished_at=j.finished_at,
                model_version=j.model_version, error=j.error)
        for j in context.store.jobs(name, limit=max(1, min(limit, 1000)))
    ]
    return JobsResponse(pipeline=name, scheduled=context.scheduled_jobs(name),
                        history=history)


ROUTES = [ingestions, jobs]
