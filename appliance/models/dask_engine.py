"""The Dask engine: a pipeline's fits run on an existing Dask cluster with ``lightgbm.dask``.

All the dask code of the appliance is here, and this module is imported only when a
pipeline's engine is "dask" (``dask``, ``distributed`` and scikit-learn are an optional
extra: ``pip install 'appliance[dask]'``).

Everything up to the fit (data window, split, encoding, category maps, the champion's
left-out rows) and after it (validation predictions, metrics, gate, registry, hot swap) is
the box's, as for local training. A fit:

- sends the encoded training rows to the workers (``client.scatter``: one chunk of rows
  per worker) as dask arrays, or with ``[dask] shared_storage`` has each worker read its
  chunk from the data set files (:func:`read_rows`); and sends the validation rows whole
  to every worker inside the early-stopping callback
  (:class:`~appliance.models.early_stop.StopOnRows`);
- trains ``DaskLGBMClassifier`` / ``DaskLGBMRegressor`` with the same parameters (each
  worker uses its own threads), and takes the model back (``booster_``);
- is watched from the box: the daemon's stop, the fit's time limit (``[dask] timeout_s``)
  and a tuning budget set a Dask ``Event`` the workers poll and release the futures; a
  worker that leaves the cluster fails the fit.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import dask
import dask.array as da
import distributed
import lightgbm as lgb
import msgspec
import numpy as np

from appliance.core import ApplianceError, DaskSettings
from appliance.models import early_stop

# The callback's module goes to the workers by value: they need not have the appliance.
cloudpickle.register_pickle_by_value(early_stop)

POLL_S = 0.25
WORKER_CHECK_S = 1.0


class BudgetSpent(Exception):
    """A tuning trial's fit ran past the search's time budget."""


@dataclass
class FitResult:
    model_text: str  # every round the cluster trained
    rounds: int
    workers: list[str] = field(default_factory=list)


def security(settings: DaskSettings) -> Any:
    """distributed's ``Security`` from the [dask] TLS settings (None without TLS)."""
    if not (settings.tls_ca_file or settings.tls_client_cert or settings.require_encryption):
        return None
    return distributed.security.Security(
        tls_ca_file=settings.tls_ca_file or None,
        tls_client_cert=settings.tls_client_cert or None,
        tls_client_key=settings.tls_client_key or None,
        require_encryption=settings.require_encryption)


def connect(settings: DaskSettings) -> distributed.Client:
    """A client of the configured scheduler with at least one worker, or a clear error."""
    address = settings.scheduler
    wait = settings.connect_timeout_s
    try:
        client = distributed.Client(address, timeout=wait, security=security(settings),
                                    set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ApplianceError(
            "dask_unreachable",
            f"the Dask scheduler at {address} did not answer within {wait:g}s ({exc}); "
            "check that it runs (`dask scheduler`) and that [dask] scheduler names it; "
            "the job is retried",
            {"scheduler": address}) from None
    try:
        client.wait_for_workers(1, timeout=wait)
    except (OSError, TimeoutError):
        client.close()
        raise ApplianceError(
            "dask_no_workers",
            f"the Dask scheduler at {address} has no worker (waited {wait:g}s); start some "
            f"with `dask worker {address}`; the job is retried",
            {"scheduler": address}) from None
    return client


def versions() -> dict[str, str]:
    return {"dask": dask.__version__, "distributed": distributed.__version__,
            "lightgbm": lgb.__version__}


class DaskEngine:
    """One training run's connection to the cluster; every fit of the run (the default
    parameters', the tuning trials') goes through :meth:`fit`, one after another."""

    name = "dask"

    def __init__(self, settings: DaskSettings) -> None:
        self.settings = settings
        self.client = connect(settings)
        self.workers = sorted(self.client.ncores())
        self.threads = dict(self.client.ncores())
        # The training rows on the workers, kept for the run's later fits (tuning), and
        # the labels they are for.
        self._data: tuple[Any, Any, list[Any]] | None = None
        self._data_of: np.ndarray | None = None
        # With [dask] shared_storage: data set version -> its file, as the workers see it
        # (set by the training run), or why the rows are sent all the same.
        self.sources: dict[int, str] = {}
        self.not_shared = ""

    def describe(self) -> dict[str, Any]:
        """For the lineage."""
        return {"name": "dask", "scheduler": self.settings.scheduler,
                "workers": self.workers, "worker_count": len(self.workers),
                "worker_threads": self.threads, "versions": versions(),
                "early_stopping": "on the whole validation rows on every worker, the "
                                  "best round confirmed on the box",
                "data": self._data_note()}

    def _data_note(self) -> str:
        if self.sources:
            return ("read by the workers from the shared state directory (the training "
                    "rows' features; labels and validation rows sent)")
        note = "sent (client.scatter, one chunk of rows per worker)"
        return f"{note}: {self.not_shared}" if self.not_shared else note

    def where(self) -> str:
        n = len(self.workers)
        return f"on the Dask cluster at {self.settings.scheduler} ({n} worker{'s' * (n != 1)})"

    def close(self) -> None:
        try:
            self.client.close(timeout=5)
        except Exception:  # closing a dead connection: nothing left to release
            pass

    def _chunks(self, n_rows: int) -> list[tuple[str, int, int]]:
        """One chunk of the training rows per worker: (worker, first row, end)."""
        bounds = np.linspace(0, n_rows, len(self.workers) + 1).astype(np.int64)
        return [(w, int(bounds[i]), int(bounds[i + 1])) for i, w in enumerate(self.workers)
                if bounds[i + 1] > bounds[i]]

    def _read_on_workers(self, ids: np.ndarray, y: np.ndarray, spec: Any, width: int,
                         schema: dict[str, Any]) -> tuple[Any, Any, list[Any]]:
        """The training rows as dask arrays, each worker reading its chunk's rows from the
        data set files itself and encoding them with ``spec`` (labels are sent)."""
        if self._data is not None and self._data_of is y:
            return self._data
        xs, ys, futures = [], [], []
        for worker, lo, hi in self._chunks(len(ids)):
            chunk = ids[lo:hi]
            parts = []
            for version in np.unique(chunk[:, 0]):
                mask = chunk[:, 0] == version
                parts.append((self.sources[int(version)], chunk[mask, 1],
                              np.flatnonzero(mask)))
            read = self.client.submit(read_rows, parts, spec, schema, workers=[worker],
                                      allow_other_workers=False, pure=False)
            fy = self.client.scatter(y[lo:hi], workers=[worker], hash=False)
            futures += [read, fy]
            xs.append(da.from_delayed(read, shape=(hi - lo, width), dtype=np.float64))
            ys.append(da.from_delayed(fy, shape=(hi - lo,), dtype=y.dtype))
        reads = futures[::2]
        with self.client.as_current():
            distributed.wait(reads)
        for read in reads:
            if read.status == "error":
                exc = read.exception()
                raise ApplianceError(
                    "dask_read_failed",
                    f"a worker of the Dask cluster at {self.settings.scheduler} could not "
                    f"read its training rows: {type(exc).__name__}: {exc} (with [dask] "
                    "shared_storage = true each worker reads the data set files at the "
                    "box's paths: is the state directory mounted at the same path on every "
                    "worker, and the appliance installed there?); the job is retried",
                    {"scheduler": self.settings.scheduler})
        self._data, self._data_of = (da.concatenate(xs), da.concatenate(ys), futures), y
        return self._data

    def _scatter(self, x: np.ndarray, y: np.ndarray) -> tuple[Any, Any, list[Any]]:
        """The training rows as dask arrays, one chunk per worker, placed on that worker
        (kept for the run's later fits)."""
        if self._data is not None and self._data_of is y:
            return self._data
        xs, ys, futures = [], [], []
        for worker, lo, hi in self._chunks(len(y)):
            fx = self.client.scatter(x[lo:hi], workers=[worker], hash=False)
            fy = self.client.scatter(y[lo:hi], workers=[worker], hash=False)
            futures += [fx, fy]
            xs.append(da.from_delayed(fx, shape=(hi - lo, x.shape[1]), dtype=x.dtype))
            ys.append(da.from_delayed(fy, shape=(hi - lo,), dtype=y.dtype))
        self._data, self._data_of = (da.concatenate(xs), da.concatenate(ys), futures), y
        return self._data

    def fit(self, params: dict[str, Any], x_train: np.ndarray, y_train: np.ndarray,
            x_valid: np.ndarray, y_valid: np.ndarray, *, task: str, num_boost_round: int,
            early_stopping_rounds: int, feature_names: list[str],
            categorical: list[int], should_stop: Callable[[], bool],
            budget_deadline: float | None = None, train_ids: np.ndarray | None = None,
            spec: Any = None, schema: dict[str, Any] | None = None) -> FitResult:
        """Train on the cluster; returns every round it trained (it stopped early on the
        whole validation rows). Raises TrainingCancelled, BudgetSpent, or an
        ApplianceError naming the scheduler and what happened."""
        from appliance.models.train import TrainingCancelled

        address = self.settings.scheduler
        if self.sources and train_ids is not None and spec is not None and schema:
            dx, dy, _ = self._read_on_workers(train_ids, y_train, spec, x_train.shape[1],
                                              schema)
        else:
            dx, dy, _ = self._scatter(x_train, y_train)
        event_name = f"appliance-stop-{uuid.uuid4().hex}"
        stop_event = distributed.Event(event_name, client=self.client)
        # Every worker gets the validation rows whole, inside its task (a broadcast
        # scatter would not stay: the scheduler's memory manager drops the extra copies).
        callback = early_stop.StopOnRows(
            x_valid, y_valid, task, early_stopping_rounds,
            sigmoid=float(params.get("sigmoid", 1.0)), stop_event=event_name)
        kwargs = {k: v for k, v in params.items() if k not in ("num_threads", "objective")}
        # LightGBM's socket time-out (minutes; 120 by default): a worker whose peer was lost
        # (while connecting, or mid-round) gives up within the fit's limit, freeing its
        # thread for the retry.
        kwargs["time_out"] = max(1, math.ceil(self.settings.timeout_s / 60))
        cls = (lgb.DaskLGBMRegressor if task == "regression" else lgb.DaskLGBMClassifier)
        model = cls(client=self.client, objective=params.get("objective"),
                    n_estimators=num_boost_round, **kwargs)
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                with self.client.as_current(), warnings.catch_warnings():
                    # lightgbm.dask drops n_jobs/num_threads (each worker uses its own).
                    warnings.filterwarnings("ignore", message="Parameter .* will be ignored")
                    warnings.filterwarnings("ignore", message="Sending large graph")
                    model.fit(dx, dy, feature_name=feature_names,
                              categorical_feature=categorical or "auto",
                              callbacks=[callback])
                outcome["text"] = model.booster_.model_to_string()
            except BaseException as exc:  # handed to the box's thread below
                outcome["error"] = exc

        thread = threading.Thread(target=run, name="dask-fit", daemon=True)
        started = time.monotonic()
        deadline = started + self.settings.timeout_s
        thread.start()
        checked = started
        reason: BaseException | None = None
        while thread.is_alive():
            thread.join(POLL_S)
            if not thread.is_alive():
                break
            now = time.monotonic()
            if should_stop():
                reason = TrainingCancelled()
            elif now > deadline:
                reason = ApplianceError(
                    "dask_timeout",
                    f"the fit on the Dask cluster at {address} ran past [dask] timeout_s = "
                    f"{self.settings.timeout_s:g}s and was cancelled; nothing was "
                    "registered; the job is retried",
                    {"scheduler": address, "timeout_s": self.settings.timeout_s})
            elif budget_deadline is not None and now > budget_deadline:
                reason = BudgetSpent("the tuning budget ran out")
            elif now - checked >= WORKER_CHECK_S:
                checked = now
                lost = self._lost_workers()
                if lost:
                    reason = self._worker_lost(lost)
            if reason is not None:
                self._abort(stop_event, thread)
                raise reason
        if "error" in outcome:
            lost = self._lost_workers()
            if lost:
                raise self._worker_lost(lost) from None
            exc = outcome["error"]
            hint = ""
            if self.sources and isinstance(exc, OSError):
                hint = (" (with [dask] shared_storage = true each worker reads the data set "
                        "files at the box's paths: is the state directory mounted at the "
                        "same path on every worker?)")
            raise ApplianceError(
                "dask_fit_failed",
                f"the fit on the Dask cluster at {address} failed: "
                f"{type(exc).__name__}: {exc}{hint}; nothing was registered; the job is "
                "retried", {"scheduler": address}) from None
        text = outcome["text"]
        booster = lgb.Booster(model_str=text)
        return FitResult(text, booster.current_iteration(), list(self.workers))

    def _lost_workers(self) -> list[str]:
        try:
            now = set(self.client.ncores())
        except Exception:  # the scheduler itself is gone: every worker is lost to us
            return list(self.workers)
        return [w for w in self.workers if w not in now]

    def _worker_lost(self, lost: list[str]) -> ApplianceError:
        address = self.settings.scheduler
        return ApplianceError(
            "dask_worker_lost",
            f"worker {', '.join(lost)} of the Dask cluster at {address} was lost during "
            "the fit; nothing was registered; the job is retried",
            {"scheduler": address, "workers": lost})

    def _abort(self, stop_event: Any, thread: threading.Thread) -> None:
        """Ask the workers to stop at their next round, and let go of the fit."""
        try:
            stop_event.set()
        except Exception:  # the scheduler is gone: nothing runs there any more
            pass
        thread.join(5.0)


def read_rows(parts: list[tuple[str, np.ndarray, np.ndarray]], spec: Any,
              schema: dict[str, Any]) -> np.ndarray:
    """On a worker (shared storage): the model matrix of one chunk of training rows, read
    from the data set files (path, row numbers in the file, positions in the chunk), each
    feature cast to its type in the box's training frame (null where a file lacks it), and
    encoded with the candidate's spec, in the box's order."""
    import os
    import socket

    import polars as pl

    from appliance.features import to_matrix

    frames = []
    for path, numbers, positions in parts:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is not there on {socket.gethostname()}")
        f = pl.read_parquet(path)[numbers]
        frames.append(f.select(
            [(pl.col(n) if n in f.columns else pl.lit(None)).cast(t).alias(n)
             for n, t in schema.items()]).with_columns(
            __appliance_position=pl.Series(positions)))
    frame = pl.concat(frames) if len(frames) > 1 else frames[0]
    return to_matrix(frame.sort("__appliance_position"), spec)


def check_cluster(settings: DaskSettings, state_root: str = ""
                  ) -> list[tuple[str, str, str | None]]:
    """For ``appliance doctor``: (status, message, fix) per finding."""
    address = settings.scheduler
    try:
        client = connect(msgspec.structs.replace(
            settings, connect_timeout_s=min(settings.connect_timeout_s, 5.0)))
    except ApplianceError as err:
        return [("fail", err.message, f"start the scheduler (`dask scheduler`) or fix "
                 f"[dask] scheduler = \"{address}\"")]
    out: list[tuple[str, str, str | None]] = []
    try:
        workers = sorted(client.ncores())
        out.append(("ok", f"the Dask scheduler at {address} answers, {len(workers)} "
                    f"worker{'s' * (len(workers) != 1)}", None))
        mine = versions()
        info = client.get_versions()
        theirs: dict[str, dict[str, str | None]] = {}
        sched = (info.get("scheduler") or {}).get("packages", {})
        theirs["scheduler"] = {"dask": sched.get("dask"),
                               "distributed": sched.get("distributed")}
        for w, v in (info.get("workers") or {}).items():
            p = v.get("packages", {})
            theirs[w] = {"dask": p.get("dask"), "distributed": p.get("distributed")}
        for w, version in client.run(early_stop.lightgbm_version).items():
            theirs.setdefault(w, {})["lightgbm"] = version
        bad = []
        for where, got in sorted(theirs.items()):
            for lib, version in got.items():
                if version != mine[lib]:
                    bad.append(f"{where} has {lib} {version or 'missing'}")
        if bad:
            out.append(("fail", f"versions differ from this box's (dask {mine['dask']}, "
                        f"distributed {mine['distributed']}, lightgbm {mine['lightgbm']}): "
                        + "; ".join(bad),
                        "install the same versions on the scheduler and every worker "
                        f"(pip install dask=={mine['dask']} distributed=="
                        f"{mine['distributed']} lightgbm=={mine['lightgbm']})"))
        else:
            out.append(("ok", f"the scheduler and workers run dask {mine['dask']}, "
                        f"distributed {mine['distributed']}, lightgbm {mine['lightgbm']} "
                        "like this box", None))
        if settings.shared_storage and state_root:
            out += _check_shared(client, state_root)
    except Exception as exc:
        out.append(("fail", f"the Dask cluster at {address} could not be checked: "
                    f"{type(exc).__name__}: {exc}", None))
    finally:
        client.close()
    return out



def engine_fit(params: dict[str, Any], rows: Any, task: str, metric: str, ts: Any,
               engine: DaskEngine, should_stop: Callable[[], bool] | None,
               budget_deadline: float | None) -> Any:
    """One fit of train.py's on the cluster: it trains (stopping early on the whole
    validation rows); the box recomputes the validation curve from the returned model and
    cuts it at the round ``lgb.early_stopping`` would keep on those rows."""
    from appliance.models import metrics as m
    from appliance.models.train import _Fit

    result = engine.fit(
        params, rows.x_train, rows.y_train, rows.x_valid, rows.y_valid, task=task,
        num_boost_round=ts.num_boost_round, early_stopping_rounds=ts.early_stopping_rounds,
        feature_names=rows.feature_names or [], categorical=rows.categorical or [],
        should_stop=should_stop or (lambda: False), budget_deadline=budget_deadline,
        train_ids=rows.train_ids, spec=rows.spec, schema=rows.schema)
    booster = lgb.Booster(model_str=result.model_text)
    threads = params.get("num_threads", 0)
    curve = early_stop.metric_curve(booster, rows.x_valid, rows.y_valid, task,
                                    float(params.get("sigmoid", 1.0)), threads)
    best = early_stop.best_iteration(curve, ts.early_stopping_rounds)
    p_valid = booster.predict(rows.x_valid, num_iteration=best, num_threads=threads)
    text = booster.model_to_string(num_iteration=best)
    value = m.evaluate(task, rows.y_valid, p_valid)[metric]
    return _Fit(params=params, model_text=text, best_iteration=best, p_valid=p_valid,
                value=value)


def _check_shared(client: distributed.Client, state_root: str
                  ) -> list[tuple[str, str, str | None]]:
    """With shared_storage: every worker sees the state directory at the box's path and
    has the same appliance."""
    import appliance

    bad = []
    for worker, (there, version) in sorted(
            client.run(early_stop.shared_storage_probe, state_root).items()):
        if not there:
            bad.append(f"{worker} does not see {state_root}")
        if version != appliance.__version__:
            bad.append(f"{worker} has appliance {version or 'not installed'}")
    if bad:
        return [("fail", "[dask] shared_storage = true, but " + "; ".join(bad),
                 f"mount the state directory at {state_root} on every worker and install "
                 f"appliance=={appliance.__version__} there, or set shared_storage = false")]
    return [("ok", f"every worker sees {state_root} and has appliance "
             f"{appliance.__version__} (shared storage)", None)]
