"""Every request and response body of the HTTP API, as msgspec Structs.

The server encodes these and the TUI decodes them, so a change of contract breaks a test,
not an operator's screen. The identity proof (``identity_proof``) is part of the contract:
the daemon computes it, the CLI and the TUI check it before they send a token.

Kept as one piece: the console imports only this module (an import contract), so every
body of the API, however many routes there are, is declared here.
"""

import hashlib
import hmac
from typing import Annotated, Any

import msgspec


class ErrorBody(msgspec.Struct, kw_only=True):
    code: str
    message: str
    details: dict[str, Any] = {}


class Health(msgspec.Struct, kw_only=True):
    status: str
    version: str


class Ready(msgspec.Struct, kw_only=True):
    ready: bool
    models: dict[str, int]
    waiting_for: list[str] = []


class Identity(msgspec.Struct, kw_only=True):
    """``GET /v1/identity?challenge=HEX``: the daemon proves it holds the tokens before a
    client sends one (see :func:`identity_proof`)."""

    port: int  # the port the daemon was reached on
    proofs: list[str]  # one per token it holds (admin, then predict): identity_proof(...)


IDENTITY_CHALLENGE = r"^[0-9a-f]{32,128}$"


def identity_proof(token: str, challenge: str, port: int) -> str:
    """HMAC-SHA256 of the challenge and the port under a key derived from the token (so a
    proof is good for nothing else). Shown only to a client that holds the token itself."""
    key = hmac.new(token.encode(), b"appliance identity v1", hashlib.sha256).digest()
    return hmac.new(key, f"{challenge}\n{port}".encode(), hashlib.sha256).hexdigest()


def identity_problem(status: int, body: bytes, token: str, challenge: str,
                     port: int | None) -> str | None:
    """Why an answer to ``/v1/identity`` does not prove the daemon holds ``token`` (None
    when it does). ``port``: the port the client called, checked against the one the
    daemon was reached on (a relay from another port fails); None to skip that check
    (the operator named the URL, which may go through a tunnel)."""
    if status != 200:
        return (f"it answered {status} to the identity check"
                + (" (a daemon older than this client?)" if status == 404 else ""))
    try:
        answer = msgspec.json.decode(body, type=Identity)
    except msgspec.DecodeError:
        return "its answer to the identity check is not the appliance's"
    if port is not None and answer.port != port:
        return (f"it was reached on port {answer.port}, not on {port}: something in between "
                "passes the calls on")
    expected = identity_proof(token, challenge, answer.port)
    if not any(hmac.compare_digest(expected.encode(), p.encode()) for p in answer.proofs):
        return "it does not hold this token"
    return None


class ShadowInfo(msgspec.Struct, kw_only=True):
    """A candidate's shadow (promotion.policy = "shadow"): its numbers beside production's."""

    state: str  # shadowing | promoted | rejected | superseded
    production_version: int  # the version it shadowed
    requests: int  # live requests while it shadowed
    sampled: int  # of them drawn for it (shadow.sample_rate)
    scored: int  # it answered
    dropped: int  # not shadowed: its queue was full (shadow.queue_max)
    errors: int  # it failed (never a caller's failure)
    rows: int
    agreement: float | None = None  # share of rows where both gave the same answer
    mean_diff: float | None = None  # mean |shadow - production| score
    max_diff: float = 0.0
    p50_ms: float | None = None  # the shadow's latency
    p99_ms: float | None = None
    production_p50_ms: float | None = None  # production's, on the same requests
    production_p99_ms: float | None = None
    labelled: int | None = None  # its predictions with feedback
    # Once decided: the metric on the labelled rows, both values, the gain and its SE.
    live: dict[str, Any] = {}
    decision: str | None = None


class ModelInfo(msgspec.Struct, kw_only=True):
    version: int
    stage: str
    task: str
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    decision: str | None
    created_at: str
    promoted_at: str | None
    # Where it comes from: "trained here", "bundle" or "model file" (lineage `source`), and
    # the id of the key that signed its bundle (lineage `key_id`).
    source: str = "trained here"
    key_id: str | None = None
    # Its promotion policy's state in one line: "shadowing 340 of 1,000 requests, agreement
    # 97.2%, ...", "waiting for `appliance promote`", "watching v4 against v3 ...".
    policy_state: str | None = None
    shadow: ShadowInfo | None = None


class IngestionInfo(msgspec.Struct, kw_only=True):
    id: int
    file_name: str
    status: str
    code: str | None
    reason: str | None
    details: dict[str, Any]
    warnings: list[str]
    rows: int | None
    columns: int | None
    size_bytes: int | None
    sha256: str | None
    dataset_version: int | None
    received_at: str
    finished_at: str
    duration_ms: float | None
    dataset_path: str | None = None
    # The data set version's status: active, held (suspect labels: it waits for an
    # operator), released, discarded; and why (the numbers of a hold).
    dataset_status: str | None = None
    dataset_status_reason: str | None = None


class PipelineSummary(msgspec.Struct, kw_only=True):
    name: str
    status: str
    task: str | None
    production_version: int | None
    serving_version: int | None
    primary_metric: str | None
    primary_metric_value: float | None
    datasets: int
    rows: int
    last_ingestion: str | None
    # Filled by monitoring: over the last minute of traffic, and the latest drift check.
    requests_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    error_rate: float | None = None
    drift_status: str | None = None  # "ok" | "drift" | None when not checked yet
    held: int = 0  # data set versions held (suspect labels), waiting for an operator
    drift_share: float | None = None  # the share of features that drifted
    drift_importance_share: float | None = None  # the share of gain importance they carry
    drift_summary: str | None = None  # the latest check's headline in one line


class PipelineList(msgspec.Struct, kw_only=True):
    pipelines: list[PipelineSummary]


class PredictionLogInfo(msgspec.Struct, kw_only=True):
    """The prediction log of one pipeline since the daemon started."""

    logged: int  # predictions written to the log
    dropped: int  # not logged: the queue was full (server.log_queue_max); requests never wait
    failed: int  # not logged: the write failed (see the daemon's log)
    pending: int  # waiting to be written, all pipelines
    sample_rate: float  # share of predictions whose inputs are kept (server.log_sample_rate)


class PipelineDetail(msgspec.Struct, kw_only=True):
    name: str
    status: str
    task: str | None
    target: str
    timestamp: str | None
    id: str | None
    schema: dict[str, str] | None
    production: ModelInfo | None
    serving_version: int | None
    datasets: int
    rows: int
    models: int
    ingestions: dict[str, int]
    prediction_log: PredictionLogInfo | None = None
    held: list[int] = []  # data set versions held (suspect labels), waiting for an operator


class ModelScore(msgspec.Struct, kw_only=True):
    """One version scored on the rows of a :class:`ModelComparison`."""

    version: int
    stage: str
    metrics: dict[str, float] | None = None  # on the shared rows; None: not scored (note)
    value: float | None = None  # the primary metric on them
    vs_production: float | None = None  # its gain over production there (+: better)
    standard_error: float | None = None  # of that gain (paired, on the same rows)
    note: str | None = None  # why it was not scored


class ModelComparison(msgspec.Struct, kw_only=True):
    """The backtest: every kept version scored on the same rows, the held-out rows of the
    newest version that kept them (the newest data), so versions compare like with like."""

    metric: str | None  # the primary metric
    rows_from_version: int | None  # whose held-out rows
    rows: int
    first_timestamp: str | None = None  # their time range, with a timestamp column
    last_timestamp: str | None = None
    production_version: int | None = None
    baseline: dict[str, float] | None = None  # the trivial model (class prior, mean)
    scores: list[ModelScore] = []  # newest version first
    note: str | None = None  # why there is nothing to compare
    computed_at: str | None = None


class ModelList(msgspec.Struct, kw_only=True):
    pipeline: str
    models: list[ModelInfo]
    # With ?compare=true: every version scored on the same newest held-out rows.
    comparison: ModelComparison | None = None


class IngestionList(msgspec.Struct, kw_only=True):
    pipeline: str
    ingestions: list[IngestionInfo]


class EventInfo(msgspec.Struct, kw_only=True):
    id: int
    ts: str
    kind: str
    level: str
    pipeline: str | None
    message: str
    details: dict[str, Any]


class EventList(msgspec.Struct, kw_only=True):
    events: list[EventInfo]


class PredictRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    rows: list[dict[str, Any]]
    # Explain each prediction: the base value and the `explain` largest feature
    # contributions (exact TreeSHAP, in raw-score units). Unset: no explanation, no cost.
    explain: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | None = None


class FeatureContribution(msgspec.Struct, kw_only=True):
    """One feature's share of a raw score, named as the caller knows it."""

    feature: str  # the column as sent (a date's parts are summed into the date column)
    contribution: float  # raw-score units (log-odds for binary and multiclass)
    value: Any = None  # the value the model saw (after joins and derived features)
    source: str = "input"  # input (sent) | derived (config expression) | joined (feature set)
    feature_set: str | None = None  # the feature set a joined feature came from


class Explanation(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Why one row got its raw score: ``base_value + sum(contributions) + others ==
    raw_score`` (to rounding). Binary: the log-odds of the positive class; regression: the
    model's raw output; multiclass: one explanation per class, of that class's score."""

    raw_score: float
    base_value: float  # the model's expected raw score (TreeSHAP's base value)
    contributions: list[FeatureContribution]  # the largest |contribution| first
    others: float  # the sum of the contributions not listed (0.0 when all are)
    class_: str | None = msgspec.field(default=None, name="class")  # multiclass: the class


class PredictResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    model_version: int
    predictions: list[Any]
    prediction_ids: list[str]
    # With "explain": per row, one explanation (one per class for multiclass).
    explanations: list[list[Explanation]] | None = None


class LatestExplanation(msgspec.Struct, kw_only=True):
    """``GET /v1/pipelines/{name}/explanations/latest``: the newest prediction of the model
    serving whose inputs the prediction log sampled, explained by that model."""

    pipeline: str
    model_version: int | None  # the version serving; None: no model yet
    prediction_id: str | None = None  # None: no sampled prediction to explain (see message)
    ts: str | None = None  # when it was made (ISO 8601, UTC)
    prediction: Any = None  # what was answered then
    explanations: list[Explanation] = []  # one (one per class for multiclass)
    message: str = ""  # why there is none


class PromoteResponse(msgspec.Struct, kw_only=True):
    pipeline: str
    version: int
    previous_version: int | None


class BundleImportResponse(msgspec.Struct, kw_only=True):
    """What an import did: the version it registered, the stage the promotion policy left
    it in and why, and where it came from (``source``: a bundle's origin box, pipeline,
    version, when it was trained, the signing key's id; or a bare model file)."""

    pipeline: str
    version: int
    stage: str  # production | candidate | rejected
    policy: str
    reason: str
    kind: str  # bundle | model_file
    key_id: str | None = None
    source: dict[str, Any] = msgspec.field(default_factory=dict)


class RetrainRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Optional body of ``POST /v1/pipelines/{name}/retrain``; a bare POST trains with the
    config's settings."""

    # Trials of a hyperparameter search for this run; unset: the config's tune_trials.
    tune_trials: Annotated[int, msgspec.Meta(ge=0, le=10_000)] | None = None


class RetrainResponse(msgspec.Struct, kw_only=True):
    pipeline: str
    started: bool
    message: str


class PipelineDeleted(msgspec.Struct, kw_only=True):
    """What ``DELETE /v1/pipelines/{name}`` removed."""

    pipeline: str
    message: str
    datasets: int          # data set versions
    models: int            # model versions
    ingestions: int        # records of files
    files: int             # files removed from inbox/, processing/, archive/, rejected/,
    bytes: int             # datasets/ and models/, and their size
    still_declared: bool   # in appliance.toml: listed again, with no data


class DatasetActionResponse(msgspec.Struct, kw_only=True):
    """The answer to releasing or discarding a held data set version."""

    pipeline: str
    version: int
    status: str  # released | discarded
    message: str
    training_started: bool


# --- monitoring ----------------------------------------------------------------------------


class DriftFeature(msgspec.Struct, kw_only=True):
    feature: str
    kind: str  # "numeric" | "categorical" | "prediction"
    psi: float | None
    ks: float | None = None  # numeric: two-sample Kolmogorov-Smirnov statistic
    js: float | None = None  # categorical: Jensen-Shannon distance
    threshold: float  # the PSI above which the feature drifts
    drifted: bool
    # Samples of at most drift.test_max_rows rows are tested: the feature's smallest
    # p-value after Holm's correction for all the tests of the check, and the test that
    # gave it ("ks", "chi2", "missing"). None when effect sizes decided.
    p_value: float | None = None
    test: str | None = None
    null_share: float | None = None  # the share of missing values in the sample
    importance: float | None = None  # the share of the model's gain importance it carries
    severe: bool = False  # PSI above drift.severe_psi, or every value missing


class DriftReport(msgspec.Struct, kw_only=True):
    pipeline: str
    model_version: int | None
    computed_at: str
    # "ingestion" (a new data set) | "window" (the newest data sets together, up to
    # drift.window_rows) | "newest_data" (the newest data set again, when another model
    # began serving) | "predictions" (sampled request inputs)
    source: str
    rows: int
    # The headline: the share of features that drifted or the share of the model's gain
    # importance they carry passed its threshold, or one feature drifted severely.
    drifted: bool
    drifted_share: float
    features: list[DriftFeature]
    prediction: DriftFeature | None = None
    importance_share: float | None = None  # of the production model's gain, on drifted ones
    severe: list[str] = msgspec.field(default_factory=list)  # features that drifted severely
    method: str | None = None  # "tests" (p-values, small samples) | "effect_sizes"
    summary: str | None = None  # the headline in one line


class DriftHistoryPoint(msgspec.Struct, kw_only=True):
    computed_at: str
    source: str
    model_version: int | None
    drifted: bool
    drifted_share: float
    psi: dict[str, float]  # feature -> PSI
    importance_share: float | None = None
    rows: int | None = None


class DriftResponse(msgspec.Struct, kw_only=True):
    pipeline: str
    latest: DriftReport | None  # of a data set or of sampled inputs
    history: list[DriftHistoryPoint]
    # The window of the newest data sets, checked after a small one (about the served
    # model, until the next data set comes).
    window: DriftReport | None = None
    # The pipeline's headline, from the latest report or the window when only it drifts:
    # "ok" | "drift" | None before the served model is checked.
    status: str | None = None
    summary: str | None = None


class MetricsWindow(msgspec.Struct, kw_only=True):
    start: float  # unix seconds
    seconds: float  # 10 for raw windows, 3600 for hourly roll-ups
    requests: int
    rows: int
    errors_4xx: int
    errors_5xx: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class LivePerformancePoint(msgspec.Struct, kw_only=True):
    start: float
    seconds: float
    metric: str
    value: float
    labelled: int
    validation_value: float | None


class PipelineMetrics(msgspec.Struct, kw_only=True):
    pipeline: str
    windows: list[MetricsWindow]
    live_performance: list[LivePerformancePoint] = []


class ResourceSample(msgspec.Struct, kw_only=True):
    ts: float
    process_cpu_percent: float
    process_rss_bytes: int
    process_threads: int
    process_open_files: int
    cpu_percent: float
    memory_available_bytes: int
    memory_percent: float
    load_1m: float
    disk_free_bytes: int
    temperature_c: float | None = None


class SystemResponse(msgspec.Struct, kw_only=True):
    samples: list[ResourceSample]


# --- jobs --------------------------------------------------------------------------------


class JobInfo(msgspec.Struct, kw_only=True):
    id: int
    pipeline: str
    kind: str
    trigger: str
    status: str  # running | succeeded | failed | cancelled
    started_at: str
    finished_at: str | None
    model_version: int | None
    error: str | None


class ScheduledJob(msgspec.Struct, kw_only=True):
    id: str
    pipeline: str | None
    name: str
    schedule: str  # how it is triggered, e.g. "cron 0 3 * * *" or "every 60s"
    next_run: str | None


class JobsResponse(msgspec.Struct, kw_only=True):
    pipeline: str
    scheduled: list[ScheduledJob]
    history: list[JobInfo]


# --- feature store -----------------------------------------------------------------------


class FeatureSetInfo(msgspec.Struct, kw_only=True):
    name: str
    key: str
    timestamp: str | None
    schema: dict[str, str] | None
    datasets: int
    rows: int
    keys: int  # entities in the online store
    updated_at: str | None  # when the online store last changed
    newest_event: str | None  # the newest event time among the stored values
    last_ingestion: str | None
    used_by: list[str]  # pipelines that join it


class FeatureSetList(msgspec.Struct, kw_only=True):
    feature_sets: list[FeatureSetInfo]


class OnlineFeatures(msgspec.Struct, kw_only=True):
    feature_set: str
    key: str
    values: dict[str, Any]
    event_time: str | None
    dataset_version: int
    updated_at: str


# --- the Open Inference Protocol V2 (REST) and MLflow's scoring protocol -----------------


class ProtocolErrorBody(ErrorBody, kw_only=True, omit_defaults=True):
    """An error of the Open Inference Protocol's routes and of ``/invocations``: the
    appliance's own fields plus ``error`` (the protocol's: the message) and, on
    ``/invocations``, ``error_code`` (MLflow's: BAD_REQUEST, ...)."""

    error: str
    error_code: str | None = None


class OipServerMetadata(msgspec.Struct, kw_only=True):
    name: str
    version: str
    extensions: list[str]


class OipLive(msgspec.Struct, kw_only=True):
    live: bool


class OipReady(msgspec.Struct, kw_only=True):
    ready: bool


class OipModelReady(msgspec.Struct, kw_only=True):
    name: str
    ready: bool


class OipTensorMetadata(msgspec.Struct, kw_only=True):
    name: str
    datatype: str
    shape: list[int]


class OipModelMetadata(msgspec.Struct, kw_only=True):
    name: str
    versions: list[str]
    platform: str
    inputs: list[OipTensorMetadata]
    outputs: list[OipTensorMetadata]


class OipRequestInput(msgspec.Struct, kw_only=True):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None  # absent only with the binary tensor extension (binary_data_size)


class OipRequestOutput(msgspec.Struct, kw_only=True):
    name: str
    parameters: dict[str, Any] | None = None


class OipInferRequest(msgspec.Struct, kw_only=True):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[OipRequestInput]
    outputs: list[OipRequestOutput] | None = None


class OipResponseOutput(msgspec.Struct, kw_only=True):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class OipInferResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OipResponseOutput]
    # With the request parameter `explain`: {"explanations": the predict route's, per row}.
    parameters: dict[str, Any] | None = None


class MlflowPredictions(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``POST /invocations``'s answer: MLflow's ``predictions`` (the predict route's
    numbers, one per row), plus the model version and the prediction ids (for feedback),
    which MLflow clients ignore; with ``params.explain``, the predict route's
    ``explanations``."""

    predictions: list[Any]
    model_version: int
    prediction_ids: list[str]
    explanations: list[list[Explanation]] | None = None
