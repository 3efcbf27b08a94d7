"""The Dask engine: a pipeline's fits run on an existing Dask cluster with ``lightgbm.dask``.

All the dask code of the appliance is here, and this module is imported only when a
pipeline's engine is "dask" (``dask``, ``distributed`` and scikit-learn are an optional
extra: ``pip install 'appliance[dask]'``).

Everything up to the fit (data window, split, encoding, category maps, the champion's
left-out rows) and after it (validation predictions, metrics, gate, registry, hot swap) is
the box's, as for local training. A fit:

- sends the encoded training rows to the workers (``client.scatter``: one chunk of rows
  per worker) as dask arrays, and the validation rows whole to every worker inside the
  early-stopping callback (:class:`~appliance.models.early_stop.StopOnRows`);
- trains ``DaskLGBMClassifier`` / ``DaskLGBMRegressor`` with the same parameters (each
  worker uses its own threads), and takes the model back (``booster_``);
- is watched from the box: the daemon's stop, the fit's time limit (``[dask] timeout_s``)
  and a tuning budget set a Dask ``Event`` the workers poll and release the futures; a
  worker that leaves the cluster fails the fit.
"""

from __future__ import annotations

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
        self._data: tuple[Any, Any, list[Any]] | None = None

    def describe(self) -> dict[str, Any]:
        """For the lineage."""
        return {"name": "dask", "scheduler": self.settings.scheduler,
                "workers": self.workers, "worker_count": len(self.workers),
                "worker_threads": self.threads, "versions": versions(),
                "early_stopping": "on the whole validation rows on every worker, the "
                                  "best round confirmed on the box",
                "data": "sent (client.scatter, one chunk of rows per worker)"}

    def where(self) -> str:
        n = len(self.workers)
        return f"on the Dask cluster at {self.settings.scheduler} ({n} worker{'s' * (n != 1)})"

    def close(self) -> None:
        try:
            self.client.close(timeout=5)
        except Exception:  # closing a dead connection: nothing left to release
            pass

    def _scatter(self, x: np.ndarray, y: np.ndarray) -> tuple[Any, Any, list[Any]]:
        """The training rows as dask arrays, one chunk per worker, placed on that worker
        (kept for the run's later fits)."""
        if self._data is not None:
            return self._data
        n = len(self.workers)
        bounds = np.linspace(0, len(y), n + 1).astype(np.int64)
        xs, ys, futures = [], [], []
        for i, worker in enumerate(self.workers):
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            if hi <= lo:
                continue
            fx = self.client.scatter(x[lo:hi], workers=[worker], hash=False)
            fy = self.client.scatter(y[lo:hi], workers=[worker], hash=False)
            futures += [fx, fy]
            xs.append(da.from_delayed(fx, shape=(hi - lo, x.shape[1]), dtype=x.dtype))
            ys.append(da.from_delayed(fy, shape=(hi - lo,), dtype=y.dtype))
        self._data = (da.concatenate(xs), da.concatenate(ys), futures)
        return self._data

    def fit(self, params: dict[str, Any], x_train: np.ndarray, y_train: np.ndarray,
            x_valid: np.ndarray, y_valid: np.ndarray, *, task: str, num_boost_round: int,
            early_stopping_rounds: int, feature_names: list[str],
            categorical: list[int], should_stop: Callable[[], bool],
            budget_deadline: float | None = None) -> FitResult:
        """Train on the cluster; returns every round it trained (it stopped early on the
        whole validation rows). Raises TrainingCancelled, BudgetSpent, or an
        ApplianceError naming the scheduler and what happened."""
        from appliance.models.train import TrainingCancelled

        address = self.settings.scheduler
        dx, dy, _ = self._scatter(x_train, y_train)
        event_name = f"appliance-stop-{uuid.uuid4().hex}"
        stop_event = distributed.Event(event_name, client=self.client)
        callback = early_stop.StopOnRows(
            x_valid, y_valid, task, early_stopping_rounds,
            sigmoid=float(params.get("sigmoid", 1.0)), stop_event=event_name)
        kwargs = {k: v for k, v in params.items() if k not in ("num_threads", "objective")}
        cls = (lgb.DaskLGBMRegressor if task == "regression" else lgb.DaskLGBMClassifier)
        model = cls(client=self.client, objective=params.get("objective"),
                    n_estimators=num_boost_round, **kwargs)
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                with self.client.as_current(), warnings.catch_warnings():
                    # lightgbm.dask drops n_jobs/num_threads (each worker uses its own).
                    warnings.filterwarnings("ignore", message="Parameter .* will be ignored")
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
            raise ApplianceError(
                "dask_fit_failed",
                f"the fit on the Dask cluster at {address} failed: "
                f"{type(exc).__name__}: {exc}; nothing was registered; the job is retried",
                {"scheduler": address}) from None
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


def check_cluster(settings: DaskSettings) -> list[tuple[str, str, str | None]]:
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
    except Exception as exc:
        out.append(("fail", f"the Dask cluster at {address} could not be checked: "
                    f"{type(exc).__name__}: {exc}", None))
    finally:
        client.close()
    return out

