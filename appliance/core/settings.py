"""The settings' shape: every section of ``appliance.toml`` with its defaults and help text
(the ``doc`` of each field). The README's config reference is checked against these Structs
by a test; ``appliance.core.config`` loads and checks a file into them.

Kept as one piece: a flat list of declarations, one per setting, read section by section
like the README's config reference that mirrors it; cut in two, a setting's home would be
a guess.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Task = Literal["binary", "multiclass", "regression"]
LogLevel = Literal["debug", "info", "warning", "error"]
TrainEngine = Literal["local", "dask"]
CsvSeparator = Literal["auto", ",", ";", "\t", "|"]
CsvDecimal = Literal["auto", ".", ","]

DEFAULT_STATE_DIR = "./appliance-state"
CONFIG_FILE_NAME = "appliance.toml"


def _doc(text: str) -> msgspec.Meta:
    return msgspec.Meta(description=text)


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerSettings(_Section):
    host: Annotated[str, _doc("address the HTTP API binds to; loopback unless told otherwise")] = (
        "127.0.0.1"
    )
    port: Annotated[int, _doc("TCP port of the HTTP API"), msgspec.Meta(ge=0, le=65535)] = 8080
    max_batch_rows: Annotated[int, _doc("most rows in one predict call"), msgspec.Meta(ge=1)] = (
        1000
    )
    max_body_bytes: Annotated[
        int, _doc("largest request body accepted, in bytes"), msgspec.Meta(ge=1024)
    ] = 1_048_576
    allowed_hosts: Annotated[
        list[str],
        _doc("host names clients may use in the Host header besides the bound address "
             "(DNS rebinding protection); `*.example.com` matches sub-domains"),
    ] = []
    predict_token_required: Annotated[
        bool, _doc("predict calls need `Authorization: Bearer` with <state>/predict_token "
                   "(or the admin token)"),
    ] = False
    allow_open_predict: Annotated[
        bool, _doc("allow a non-loopback host without predict_token_required (logged)"),
    ] = False
    read_token_required: Annotated[
        bool, _doc("reads (every route but /health, /ready and /schema) need "
                   "`Authorization: Bearer` with <state>/read_token (or the predict or admin "
                   "token) on loopback too; off loopback they always do"),
    ] = False
    log_sample_rate: Annotated[
        float, _doc("share of predictions whose inputs are kept in the prediction log"),
        msgspec.Meta(ge=0, le=1),
    ] = 0.1
    log_queue_max: Annotated[
        int, _doc("predictions waiting to be logged before new ones are dropped (counted)"),
        msgspec.Meta(ge=1),
    ] = 100_000
    log_queue_max_mb: Annotated[int, msgspec.Meta(ge=1), _doc(
        "megabytes of predictions (with their sampled inputs) waiting to be logged before new "
        "ones are dropped (counted)")] = 64
    log_flush_seconds: Annotated[
        float, _doc("the prediction log is written at least this often"), msgspec.Meta(gt=0),
    ] = 0.1
    max_string_chars: Annotated[int, msgspec.Meta(ge=1), _doc(
        "longest text value a predict row may send for a categorical feature that was not "
        "seen in training; a longer one is refused (422 naming the field)")] = 1024
    max_connections: Annotated[int, msgspec.Meta(ge=1), _doc(
        "most connections open at once; a new one beyond it gets a 503 and is closed (kept "
        "under the process's open-files limit, with room to spare)")] = 1000
    idle_timeout_seconds: Annotated[float, msgspec.Meta(gt=0), _doc(
        "a connection that sends no request this long is closed (new, or kept alive after a "
        "response)")] = 5.0
    request_timeout_seconds: Annotated[float, msgspec.Meta(gt=0), _doc(
        "a request must arrive whole (headers and body) this soon after its first byte, else "
        "its connection is closed (408)")] = 30.0
    predict_fast_path: Annotated[
        bool, _doc("well-formed predict calls are answered ahead of the web framework's "
                   "per-request work (same answers, about twice the throughput); refusals "
                   "always take the framework's route. Off only to rule it out"),
    ] = True
    default_pipeline: Annotated[str, _doc(
        "the pipeline a plain MLflow `POST /invocations` serves when the box has several "
        "(one pipeline: that one; `?pipeline=NAME` or /v1/pipelines/NAME/invocations "
        "always picks)")] = ""


class IngestSettings(_Section):
    settle_seconds: Annotated[
        float, _doc("a file is taken once its size and mtime are unchanged this long"),
        msgspec.Meta(ge=0),
    ] = 2.0
    rescan_seconds: Annotated[
        float, _doc("full rescan of the inbox, to catch what file events missed; a file sent "
                    "back for want of disk space, file descriptors or memory waits this long"),
        msgspec.Meta(gt=0),
    ] = 30.0
    max_file_mb: Annotated[
        int, _doc("files larger than this are refused (a .csv.gz: once decompressed)"),
        msgspec.Meta(ge=1),
    ] = 4096
    max_columns: Annotated[
        int, _doc("files with more columns than this are refused"), msgspec.Meta(ge=1)
    ] = 2000
    max_rows: Annotated[
        int, _doc("files with more rows than this are refused (Parquet: from its metadata)"),
        msgspec.Meta(ge=1),
    ] = 100_000_000
    max_uncompressed_mb: Annotated[
        int, _doc("a Parquet file whose data would decode to more than this is refused from "
                  "its metadata, before it is loaded"),
        msgspec.Meta(ge=1),
    ] = 8192
    min_free_mb: Annotated[
        int, _doc("files wait in the inbox while the state dir's disk has less free space "
                  "than this plus the room the file needs; the rest is kept for SQLite"),
        msgspec.Meta(ge=0),
    ] = 512


class TrainSettings(_Section):
    threads: Annotated[
        int, _doc("LightGBM threads for training; 0 means all cores but one"), msgspec.Meta(ge=0)
    ] = 0
    num_boost_round: Annotated[int, _doc("most boosting rounds"), msgspec.Meta(ge=1)] = 1000
    early_stopping_rounds: Annotated[
        int, _doc("stop when the validation metric has not improved this many rounds"),
        msgspec.Meta(ge=1),
    ] = 50
    learning_rate: Annotated[float, _doc("LightGBM learning rate"), msgspec.Meta(gt=0)] = 0.05
    num_leaves: Annotated[int, _doc("LightGBM num_leaves"), msgspec.Meta(ge=2)] = 31
    min_data_in_leaf: Annotated[int, _doc("LightGBM min_data_in_leaf"), msgspec.Meta(ge=1)] = 20
    validation_fraction: Annotated[
        float, _doc("share of rows held out for validation (the newest when timestamped)"),
        msgspec.Meta(gt=0, lt=1),
    ] = 0.2
    seed: Annotated[int, _doc("seed of the split and of LightGBM")] = 42
    min_improvement: Annotated[
        float, _doc("a challenger must beat the champion's primary metric by this much"),
        msgspec.Meta(ge=0),
    ] = 0.0
    baseline_z: Annotated[
        float, _doc("every challenger must beat the trivial baseline (class prior, mean) "
                    "by this many standard errors on its held-out rows, so a model that "
                    "learned nothing (or the opposite) is not served"),
        msgspec.Meta(ge=0),
    ] = 2.0
    champion_z: Annotated[
        float, _doc("a challenger must beat the champion by more than min_improvement by "
                    "this many standard errors of the paired difference on the newest "
                    "held-out rows (a one-sided test: an equal challenger passes 2.3% of the "
                    "time at 2); 0: min_improvement alone decides"),
        msgspec.Meta(ge=0),
    ] = 2.0
    regression_z: Annotated[
        float, _doc("a challenger worse than the champion by this many standard errors on "
                    "the champion's own held-out rows (those still in the data window) is "
                    "not promoted; 0: any loss there blocks"),
        msgspec.Meta(ge=0),
    ] = 2.0
    holdout_max_rows: Annotated[
        int, _doc("held-out rows kept beside each model version (holdout.parquet; a seeded "
                  "sample beyond this), for the gate's check on the champion's rows and "
                  "the backtest"),
        msgspec.Meta(ge=1),
    ] = 20_000
    tune_trials: Annotated[
        int, _doc("hyperparameter search trials (Optuna) per training; 0: no search, the "
                  "parameters above are used"),
        msgspec.Meta(ge=0, le=10_000),
    ] = 0
    tune_seconds: Annotated[
        float, _doc("time budget of one hyperparameter search; a trial still running at "
                    "the limit is stopped"),
        msgspec.Meta(gt=0),
    ] = 600.0
    memory_limit_mb: Annotated[
        int, _doc("most memory a training may take, estimated from its rows and columns "
                  "before it loads them; a pipeline whose data would take more trains on "
                  "its newest rows that fit, and says so; 0: 80% of the memory available "
                  "when it starts"),
        msgspec.Meta(ge=0),
    ] = 0
    engine: Annotated[TrainEngine, _doc(
        "where the fits run: `local` (this box's LightGBM) or `dask` (`lightgbm.dask` on the "
        "Dask cluster of [dask] scheduler; needs `pip install 'appliance[dask]'`); a "
        "pipeline's train.engine overrides it")] = "local"


class DaskSettings(_Section):
    scheduler: Annotated[str, _doc(
        "the Dask scheduler's address for engine = \"dask\", e.g. `tcp://10.0.0.5:8786` "
        "(`tls://...` with the TLS files below)")] = ""
    timeout_s: Annotated[float, msgspec.Meta(gt=0), _doc(
        "the wall-clock limit of one fit on the cluster; past it the fit is cancelled and "
        "the training job fails (and is retried like any job)")] = 3600.0
    connect_timeout_s: Annotated[float, msgspec.Meta(gt=0), _doc(
        "how long to wait for the scheduler (and a first worker) before the job fails")] = 10.0
    tls_ca_file: Annotated[str, _doc(
        "CA certificate (PEM) the scheduler's and workers' certificates are checked "
        "against (distributed's Security tls_ca_file); empty: no TLS")] = ""
    tls_client_cert: Annotated[str, _doc(
        "this box's client certificate (PEM) for TLS")] = ""
    tls_client_key: Annotated[str, _doc(
        "the key of tls_client_cert (PEM); empty when the certificate file holds it")] = ""
    require_encryption: Annotated[bool, _doc(
        "refuse any connection to the cluster that is not encrypted (TLS)")] = False
    shared_storage: Annotated[bool, _doc(
        "the workers read the training rows from the data set files themselves (the state "
        "directory mounted at the same path on every worker, the appliance installed "
        "there); false: the box sends the rows")] = False


class JobsSettings(_Section):
    retry_attempts: Annotated[
        int, _doc("a failed training job is retried this many times, with backoff"),
        msgspec.Meta(ge=0),
    ] = 3
    retry_backoff_seconds: Annotated[
        float, _doc("wait before the first retry; doubled at each further one"),
        msgspec.Meta(gt=0),
    ] = 30.0


class LogSettings(_Section):
    level: Annotated[LogLevel, _doc("log level on stderr")] = "info"


class MonitorSettings(_Section):
    window_seconds: Annotated[
        float, _doc("request metrics are counted in windows of this many seconds"),
        msgspec.Meta(ge=1, le=3600),
    ] = 10.0
    resource_interval_seconds: Annotated[
        float, _doc("process and box resources are sampled this often (psutil)"),
        msgspec.Meta(ge=0.5),
    ] = 5.0
    raw_retention_hours: Annotated[
        float, _doc("raw request windows and resource samples are kept this long"),
        msgspec.Meta(gt=0),
    ] = 48.0
    rollup_retention_days: Annotated[
        float, _doc("hourly roll-ups, drift history and live performance are kept this long"),
        msgspec.Meta(gt=0),
    ] = 90.0
    predictions_max_age_days: Annotated[
        float, _doc("logged predictions (and their feedback) older than this are removed"),
        msgspec.Meta(gt=0),
    ] = 30.0
    predictions_max_rows: Annotated[
        int, _doc("most logged predictions kept per pipeline; the oldest go first"),
        msgspec.Meta(ge=1000),
    ] = 1_000_000
    min_free_disk_mb: Annotated[
        int, _doc("a disk_pressure event when the state directory's disk has less free"),
        msgspec.Meta(ge=0),
    ] = 1024
    min_available_memory_mb: Annotated[
        int, _doc("a memory_pressure event when the box has less memory available"),
        msgspec.Meta(ge=0),
    ] = 256
    performance_interval_seconds: Annotated[
        float, _doc("live performance (feedback joined to predictions) is computed this often"),
        msgspec.Meta(ge=1),
    ] = 300.0
    performance_window_seconds: Annotated[
        float, _doc("live performance is computed per window of predictions this long"),
        msgspec.Meta(ge=60),
    ] = 3600.0
    performance_min_labelled: Annotated[
        int, _doc("a window needs this many predictions with feedback to be scored"),
        msgspec.Meta(ge=1),
    ] = 30
    performance_tolerance: Annotated[
        float, _doc("performance_degraded when the live metric is worse than the validation "
                    "metric by more than this share of it"),
        msgspec.Meta(ge=0),
    ] = 0.1


class DriftSettings(_Section):
    interval_seconds: Annotated[
        float, _doc("sampled prediction inputs are checked for drift this often"),
        msgspec.Meta(ge=1),
    ] = 300.0
    window_seconds: Annotated[
        float, _doc("the check compares the sampled inputs of this recent window"),
        msgspec.Meta(ge=1),
    ] = 3600.0
    min_rows: Annotated[
        int, _doc("a data set or window of sampled inputs with fewer rows than this is not "
                  "checked on its own (a data set still joins the rolling window); 1: every "
                  "one is, with statistics chosen by its size"),
        msgspec.Meta(ge=1),
    ] = 1
    test_max_rows: Annotated[
        int, _doc("a sample of at most this many rows is judged by tests with a p-value "
                  "(Kolmogorov-Smirnov, chi-square, Fisher's exact for missing values) "
                  "corrected for testing every feature at once (Holm); a larger one by the "
                  "effect-size thresholds below and by the same tests on a seeded sample of "
                  "this many of its rows (0: effect sizes only)"),
        msgspec.Meta(ge=0),
    ] = 1000
    alpha: Annotated[
        float, _doc("with no drift, the chance that a tested sample flags any feature at all"),
        msgspec.Meta(gt=0, lt=0.5),
    ] = 0.01
    window_rows: Annotated[
        int, _doc("a data set of fewer rows is also checked together with the data sets "
                  "before it, the newest this many rows as one sample, so a slow shift "
                  "spread over small files is seen; 0: no window"),
        msgspec.Meta(ge=0),
    ] = 1000
    psi_threshold: Annotated[
        float, _doc("a feature drifts when its PSI is above this (0.2: a significant shift)"),
        msgspec.Meta(gt=0),
    ] = 0.2
    ks_threshold: Annotated[
        float, _doc("a numeric feature drifts when its Kolmogorov-Smirnov statistic is above "
                    "this"),
        msgspec.Meta(gt=0, le=1),
    ] = 0.2
    js_threshold: Annotated[
        float, _doc("a categorical feature drifts when its Jensen-Shannon distance is above "
                    "this"),
        msgspec.Meta(gt=0, le=1),
    ] = 0.1
    share: Annotated[
        float, _doc("the data set drifts when at least this share of its features drift"),
        msgspec.Meta(gt=0, le=1),
    ] = 0.5
    importance_share: Annotated[
        float, _doc("the data set drifts when its drifted features carry at least this share "
                    "of the production model's gain importance"),
        msgspec.Meta(gt=0, le=1),
    ] = 0.3
    severe_psi: Annotated[
        float, _doc("the data set drifts when one feature drifts with a PSI above this, or "
                    "with every value missing (a column gone empty)"),
        msgspec.Meta(gt=0),
    ] = 1.0


class RetentionSettings(_Section):
    events_days: Annotated[
        float, _doc("events older than this are removed; 0 keeps them for ever"),
        msgspec.Meta(ge=0),
    ] = 90.0
    jobs_days: Annotated[
        float, _doc("records of finished jobs older than this are removed; 0 keeps them"),
        msgspec.Meta(ge=0),
    ] = 90.0
    ingestions_days: Annotated[
        float, _doc("records of refused, duplicate and feedback files older than this are "
                    "removed (an accepted file's record lives as long as its data set); 0 "
                    "keeps them"),
        msgspec.Meta(ge=0),
    ] = 90.0
    rejected_days: Annotated[
        float, _doc("refused files in rejected/ (and their reason files) are removed this "
                    "long after they were refused; 0 keeps them"),
        msgspec.Meta(ge=0),
    ] = 30.0
    archive_days: Annotated[
        float, _doc("originals in archive/ are removed this long after they were taken (the "
                    "data stays in its data set version); 0 keeps them"),
        msgspec.Meta(ge=0),
    ] = 90.0
    models_keep: Annotated[
        int, _doc("model versions kept per pipeline besides production and the version "
                  "production was before it (the newest); older ones are removed with "
                  "their files"),
        msgspec.Meta(ge=1),
    ] = 10
    datasets_keep: Annotated[
        int, _doc("data set versions always kept per pipeline (the newest); an older one is "
                  "removed only when no kept model was trained on it and a training since "
                  "has passed it by (a feature set keeps every version)"),
        msgspec.Meta(ge=1),
    ] = 10


class RetrainSettings(_Section):
    min_new_rows: Annotated[
        int, _doc("retrain once this many new rows arrived (a first model trains on any data)"),
        msgspec.Meta(ge=1),
    ] = 1
    on_drift: Annotated[bool, _doc("retrain when drift is detected")] = False
    cron: Annotated[str | None, _doc("retrain on this crontab schedule")] = None
    hold_suspect: Annotated[
        bool, _doc("hold a labelled batch whose labels look wrong (the production model does "
                   "far worse on it than at validation while its features did not drift) "
                   "out of training until an operator releases or discards it"),
    ] = True
    suspect_tolerance: Annotated[
        float, _doc("labels are suspect when the production model loses more than this share "
                    "of its edge over the trivial baseline (1: all of it), or is worse than "
                    "the baseline itself"),
        msgspec.Meta(gt=0),
    ] = 0.5
    suspect_z: Annotated[
        float, _doc("standard errors by which a batch must miss (one-sided) to be suspect"),
        msgspec.Meta(gt=0),
    ] = 3.0


PromotionPolicy = Literal["gate", "shadow", "manual"]


class ShadowSettings(_Section):
    sample_rate: Annotated[float, msgspec.Meta(ge=0, le=1), _doc(
        "share of live predict requests a candidate under the shadow policy also scores, off "
        "the request path (the caller's answer is always production's)")] = 0.1
    min_requests: Annotated[int, msgspec.Meta(ge=1), _doc(
        "requests the shadow must have scored before it is promoted or rejected")] = 1000
    min_labelled: Annotated[int, msgspec.Meta(ge=1), _doc(
        "shadowed predictions with feedback (true outcomes) needed before it is promoted or "
        "rejected; both versions are scored on the same rows")] = 200
    max_error_rate: Annotated[float, msgspec.Meta(ge=0, le=1), _doc(
        "a shadow that fails on more than this share of the requests it scored is rejected")] = (
        0.01)
    queue_max: Annotated[int, msgspec.Meta(ge=1), _doc(
        "request rows waiting for the shadow's worker; beyond it sampled requests are dropped "
        "from shadowing (counted), never waited for")] = 10_000
    window_seconds: Annotated[float, msgspec.Meta(gt=0), _doc(
        "the shadow's numbers (agreement, score differences, latency, errors) are kept in "
        "SQLite per window of this many seconds")] = 60.0


class RolloutSettings(_Section):
    watch_seconds: Annotated[float, msgspec.Meta(ge=0), _doc(
        "after a promotion (local or imported) the new version's error rate, p99 latency and "
        "live performance are compared with the previous version's this long; a significant "
        "worsening rolls back on its own (0: no watch)")] = 600.0
    z: Annotated[float, msgspec.Meta(gt=0), _doc(
        "standard errors (one-sided; 3: about 1 false alarm in 740 checks per test) by which "
        "the new version must be worse for a rollback")] = 3.0
    min_requests: Annotated[int, msgspec.Meta(ge=1), _doc(
        "requests the new version must have answered before errors or latency are judged")] = (
        100)
    latency_ratio: Annotated[float, msgspec.Meta(ge=1), _doc(
        "the latency test: more than 1% of the new version's requests slower than this "
        "times the previous version's p99, by `rollout.z`")] = 1.5
    latency_min_ms: Annotated[float, msgspec.Meta(ge=0), _doc(
        "and slower than the previous version's p99 by at least this many ms: a burst of "
        "the box's own load (a training, the drift check a promotion starts) slows every "
        "version alike and rolls none back")] = 20.0
    check_seconds: Annotated[float, msgspec.Meta(gt=0), _doc(
        "how often a version under watch is checked")] = 5.0


class PromotionSettings(_Section):
    policy: Annotated[PromotionPolicy, _doc(
        "how a new candidate (trained here or imported) may become production: `gate` (the "
        "gate on this box's newest labelled data), `shadow` (scores a share of live requests "
        "beside production, then promoted if not worse once feedback comes back) or `manual` "
        "(waits for `appliance promote`)")] = "gate"


GateMetric = Literal["auc", "log_loss", "accuracy", "f1", "brier", "macro_f1", "rmse", "mae",
                     "r2"]


class PipelineTrainSettings(_Section):
    window_rows: Annotated[
        Annotated[int, msgspec.Meta(ge=1)] | None,
        _doc("train on the newest N rows only (by timestamp when there is one, else by "
             "arrival); unset: every row"),
    ] = None
    window_days: Annotated[
        Annotated[float, msgspec.Meta(gt=0)] | None,
        _doc("train on the rows within N days of the newest timestamp; needs `timestamp`; "
             "unset: every row"),
    ] = None
    metric: Annotated[
        GateMetric | None, _doc("the gate's primary metric; unset: auc (binary), log_loss "
                                "(multiclass), rmse (regression)"),
    ] = None
    min_improvement: Annotated[
        Annotated[float, msgspec.Meta(ge=0)] | None,
        _doc("overrides train.min_improvement for this pipeline"),
    ] = None
    tune_trials: Annotated[
        Annotated[int, msgspec.Meta(ge=0, le=10_000)] | None,
        _doc("overrides train.tune_trials for this pipeline"),
    ] = None
    tune_seconds: Annotated[
        Annotated[float, msgspec.Meta(gt=0)] | None,
        _doc("overrides train.tune_seconds for this pipeline"),
    ] = None
    engine: Annotated[TrainEngine | None, _doc(
        "overrides train.engine for this pipeline: `local` or `dask`")] = None


class _DroppedFiles(_Section):
    """How the files dropped for a pipeline or a feature set are read."""

    timestamp_format: Annotated[
        str | None,
        _doc("the format of the timestamp column when it is text other than ISO 8601, as "
             "strftime writes it (\"%m/%d/%Y %I:%M %p\" for 1/31/2026 1:05 PM); unset: "
             "times as Polars reads them, and a file whose timestamps it can't read, or "
             "whose day and month order it can't tell, is refused"),
    ] = None
    csv_separator: Annotated[
        CsvSeparator,
        _doc("what separates the columns of its CSV files: auto (a comma, unless the header "
             "line has none and has `;`, a tab or `|`), or one of `,` `;` `\\t` `|`"),
    ] = "auto"
    csv_decimal: Annotated[
        CsvDecimal,
        _doc("the decimal mark of numbers in its CSV files: auto (`,` when the columns are "
             "not separated by commas and the first lines' numbers are written 1,5; else "
             "`.`), or `.` or `,`"),
    ] = "auto"
    csv_encoding: Annotated[
        str,
        _doc("the text encoding of its CSV files: `utf-8` (a byte-order mark is skipped), or "
             "another Python codec name, such as `cp1252` (Excel's \"CSV\" on Western European "
             "Windows) or `latin-1`, which is converted to UTF-8 as the file is read"),
    ] = "utf-8"


class PipelineSettings(_DroppedFiles):
    target: Annotated[str, _doc("the column to predict")] = "target"
    task: Annotated[Task | None, _doc("binary, multiclass or regression; inferred if unset")] = (
        None
    )
    timestamp: Annotated[
        str | None, _doc("event time column: chronological validation, never a feature")
    ] = None
    id: Annotated[str | None, _doc("row id column: never a feature")] = None
    retrain: RetrainSettings = msgspec.field(default_factory=RetrainSettings)
    train: PipelineTrainSettings = msgspec.field(default_factory=PipelineTrainSettings)
    promotion: PromotionSettings = msgspec.field(default_factory=PromotionSettings)
    derived: Annotated[
        dict[str, str],
        _doc("derived features: name = Polars SQL expression over the row's columns"),
    ] = msgspec.field(default_factory=dict)
    join: Annotated[
        list[str], _doc("feature sets joined to each row by their key (as of the row's time)")
    ] = msgspec.field(default_factory=list)
    missing_key: Annotated[
        Literal["null", "error"],
        _doc("a request's entity key with no stored features: its features are missing "
             "(null) or the request is refused (error)"),
    ] = "null"


class FeatureSetSettings(_DroppedFiles):
    key: Annotated[str, _doc("the entity id column the feature set is keyed by")] = ""
    timestamp: Annotated[
        str | None, _doc("time the values became true: point-in-time joins use it")
    ] = None


class OnlineStoreSettings(_Section):
    max_keys: Annotated[int, msgspec.Meta(ge=1), _doc(
        "entity keys of the online feature store held in memory (those requests asked for "
        "last); the others are read from SQLite when asked for")] = 100_000
    max_mb: Annotated[int, msgspec.Meta(ge=1), _doc(
        "megabytes of online feature values held in memory, at most")] = 64


class BundleSettings(_Section):
    source: Annotated[
        str | None, _doc("a folder (a mounted USB stick, a share) or an https URL polled for "
                         "new model bundles (`.bundle` files; a URL lists them one per line); "
                         "unset: none"),
    ] = None
    poll_seconds: Annotated[float, msgspec.Meta(gt=0), _doc(
        "how often bundles.source is polled")] = 60.0
    allow_unsigned: Annotated[bool, _doc(
        "import bundles that carry no signature (a signed one must still verify)")] = False
    max_bundle_mb: Annotated[int, msgspec.Meta(ge=1), _doc(
        "largest bundle (or bare model file) imported, in MB, as sent")] = 256
    max_member_mb: Annotated[int, msgspec.Meta(ge=1), _doc(
        "largest file inside a bundle, in MB, once decompressed (all of them together: "
        "twice this)")] = 256


class Settings(_Section):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    ingest: IngestSettings = msgspec.field(default_factory=IngestSettings)
    train: TrainSettings = msgspec.field(default_factory=TrainSettings)
    jobs: JobsSettings = msgspec.field(default_factory=JobsSettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)
    monitor: MonitorSettings = msgspec.field(default_factory=MonitorSettings)
    drift: DriftSettings = msgspec.field(default_factory=DriftSettings)
    retention: RetentionSettings = msgspec.field(default_factory=RetentionSettings)
    online_store: OnlineStoreSettings = msgspec.field(default_factory=OnlineStoreSettings)
    bundles: BundleSettings = msgspec.field(default_factory=BundleSettings)
    shadow: ShadowSettings = msgspec.field(default_factory=ShadowSettings)
    rollout: RolloutSettings = msgspec.field(default_factory=RolloutSettings)
    dask: DaskSettings = msgspec.field(default_factory=DaskSettings)
    pipelines: dict[str, PipelineSettings] = msgspec.field(default_factory=dict)
    feature_sets: dict[str, FeatureSetSettings] = msgspec.field(default_factory=dict)

    def pipeline(self, name: str) -> PipelineSettings:
        """The settings of a pipeline; one without config gets every default."""
        return self.pipelines.get(name) or PipelineSettings()

    def engine(self, name: str) -> TrainEngine:
        """Where a pipeline's fits run: its own train.engine, else the box's."""
        return self.pipeline(name).train.engine or self.train.engine
