"""The TUI's only door to the appliance: typed calls over its HTTP API.

Every answer is decoded with msgspec into the Structs of :mod:`appliance.api_types`, so a
change of contract fails a test rather than an operator's screen. Three kinds of failure,
each something the UI shows differently:

- :class:`DaemonUnavailable`: nothing answered (refused, reset, timed out): a banner, and
  the app reconnects by itself;
- :class:`NotAvailable`: the daemon answered that it has no such route (an older daemon,
  or a feature not built yet): a calm placeholder, not an error;
- :class:`ApiError`: the daemon answered with an error body (``{"code", "message"}``).
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from appliance.api_types import (
    DatasetActionResponse,
    DriftResponse,
    ErrorBody,
    EventList,
    FeatureSetInfo,
    FeatureSetList,
    Health,
    IngestionList,
    JobsResponse,
    LatestExplanation,
    ModelList,
    OnlineFeatures,
    PipelineDetail,
    PipelineList,
    PipelineMetrics,
    PromoteResponse,
    RetrainResponse,
    SystemResponse,
    identity_problem,
)

T = TypeVar("T")


class DaemonUnavailable(Exception):
    """Nothing answered at the daemon's URL."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"the daemon at {url} is not answering ({reason})")
        self.url = url
        self.reason = reason


class ApiError(Exception):
    """The daemon answered with an error."""

    def __init__(self, status: int, code: str, message: str,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}


class NotAvailable(ApiError):
    """The daemon has no such route (yet): a feature of a newer daemon."""


async def gather(*calls: Awaitable[Any]) -> list[Any]:
    """Run API calls together; when some fail, raise once all are done (no stray task
    errors), the daemon being unreachable first, as it explains the others."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        await asyncio.wait(tasks)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        raise
    errors = [e for e in (t.exception() for t in tasks) if e is not None]
    if errors:
        raise next((e for e in errors if isinstance(e, DaemonUnavailable)), errors[0])
    return [t.result() for t in tasks]


def _refused(exc: BaseException) -> bool:
    """Whether a connect error was a refusal (nothing listens on the port): asyncio wraps
    the ConnectionRefusedError of each address it tried in "All connection attempts
    failed", so the cause chain is read, not the message."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ConnectionRefusedError) or "refused" in str(cause).lower():
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _reason(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "connection refused" if _refused(exc) else "cannot connect"
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "connection closed"
    return type(exc).__name__


class ApplianceClient:
    """An asyncio client of one daemon.

    ``discover``, when given, returns the daemon's current URL (the TUI started on a local
    state directory reads ``daemon.json`` again), so a daemon restarted on another port is
    found again by :meth:`rediscover`.
    """

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 5.0,
                 transport: httpx.AsyncBaseTransport | None = None,
                 discover: Callable[[], str | None] | None = None,
                 read_token: str | None = None, check_reads: bool = False,
                 user_agent: str = "appliance-tui",
                 verify: ssl.SSLContext | bool = True) -> None:
        self.url = url.rstrip("/")
        self.token = token or None
        # Reads need a token when the daemon listens beyond loopback: the read token when
        # there is one (it can do nothing else), else the admin token.
        self.read_token = read_token or None
        self.timeout = timeout
        self._discover = discover
        # The fleet console reaches boxes by address over the network: a read carries its
        # token only to a box that proved it holds it (once, and again after it was gone).
        self.check_reads = check_reads
        self._reads_proven = False
        self._proving = asyncio.Lock()
        # ``verify``: an SSL context shared by many clients (building one reads the CA
        # bundle: 20 ms of the event loop each, a second for a fleet of 50).
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout, transport=transport,
                                       headers={"user-agent": user_agent}, verify=verify)

    @property
    def can_admin(self) -> bool:
        return self.token is not None

    async def aclose(self) -> None:
        await self._http.aclose()

    def rediscover(self) -> bool:
        """Look the daemon's URL up again; True when it moved."""
        if self._discover is None:
            return False
        try:
            url = self._discover()
        except Exception:
            return False
        if not url or url.rstrip("/") == self.url:
            return False
        self.url = url.rstrip("/")
        self._http.base_url = httpx.URL(self.url)
        return True

    # --- plumbing ----------------------------------------------------------------------

    async def _request(self, method: str, path: str, type_: type[T], *, admin: bool = False,
                       params: dict[str, Any] | None = None) -> T:
        headers = {}
        if admin:
            if self.token is None:
                raise ApiError(401, "no_token",
                               "this needs the admin token: start the TUI with --token, set "
                               "APPLIANCE_TOKEN, or run it where <state>/token is readable")
            await self._check_identity(self.token)
            headers["Authorization"] = f"Bearer {self.token}"
        elif self.read_token or self.token:
            token = self.read_token or self.token
            await self.prove_reads()
            headers["Authorization"] = f"Bearer {token}"
        try:
            resp = await self._http.request(method, path, headers=headers, params=params)
        except httpx.TransportError as exc:
            self._reads_proven = False  # whatever answers next proves itself again
            raise DaemonUnavailable(self.url, _reason(exc)) from exc
        if resp.status_code >= 400:
            raise self._error(resp)
        try:
            return msgspec.json.decode(resp.content, type=type_)
        except msgspec.DecodeError as exc:
            raise ApiError(resp.status_code, "bad_response",
                           f"{method} {path}: the daemon's answer does not match this TUI's "
                           f"API types ({exc}); are the TUI and the daemon the same version?"
                           ) from exc

    async def prove_reads(self) -> None:
        """With ``check_reads``: before the first read that carries a token (and again
        after the daemon was gone), whatever answers proves it holds that token."""
        token = self.read_token or self.token
        if not self.check_reads or token is None or self._reads_proven:
            return
        async with self._proving:  # calls made together share one check
            if not self._reads_proven:
                await self._check_identity(token)
                self._reads_proven = True

    async def _check_identity(self, token: str) -> None:
        """Before a call that carries the token: whatever answers must prove it holds the
        token (``GET /v1/identity``, an HMAC of a fresh challenge and the port it was
        reached on), so a program holding the port while the daemon is down never gets
        it. Asked before every admin call (they are few, and a daemon may have been
        replaced since the last). The port is checked when the URL was discovered from the
        state directory, not when the operator named it (it may go through a tunnel)."""
        challenge = secrets.token_hex(32)
        try:
            resp = await self._http.get("/v1/identity", params={"challenge": challenge})
        except httpx.TransportError as exc:
            self._reads_proven = False
            raise DaemonUnavailable(self.url, _reason(exc)) from exc
        url = httpx.URL(self.url)
        port = url.port or (443 if url.scheme == "https" else 80)
        problem = identity_problem(resp.status_code, resp.content, token, challenge,
                                   port if self._discover is not None else None)
        if problem is not None:
            raise ApiError(resp.status_code, "not_our_daemon",
                           f"{self.url} did not prove it is this appliance's daemon: "
                           f"{problem}; the token was not sent. Is the daemon running? "
                           "Another program may hold its port, or the token is not this "
                           "daemon's")

    @staticmethod
    def _error(resp: httpx.Response) -> ApiError:
        try:
            body = msgspec.json.decode(resp.content, type=ErrorBody)
            code, message, details = body.code, body.message, body.details
        except msgspec.DecodeError:
            code, message, details = "http_error", resp.text[:200] or resp.reason_phrase, {}
        # A 404 that is not about a named thing means the route itself does not exist.
        if resp.status_code in (404, 405) and code in ("not_found", "method_not_allowed",
                                                       "http_error"):
            return NotAvailable(resp.status_code, code,
                                f"{resp.request.method} {resp.request.url.path} is not "
                                "available from this daemon yet", details)
        return ApiError(resp.status_code, code, message, details)

    # --- the API -----------------------------------------------------------------------

    async def health(self) -> Health:
        return await self._request("GET", "/health", Health)

    async def pipelines(self) -> PipelineList:
        return await self._request("GET", "/v1/pipelines", PipelineList)

    async def pipeline(self, name: str) -> PipelineDetail:
        return await self._request("GET", f"/v1/pipelines/{name}", PipelineDetail)

    async def models(self, name: str, compare: bool = False) -> ModelList:
        """The versions; with ``compare``, also every version scored on the same newest
        held-out rows (a daemon without the backtest leaves ``comparison`` empty)."""
        return await self._request("GET", f"/v1/pipelines/{name}/models", ModelList,
                                   params={"compare": "true"} if compare else None)

    async def ingestions(self, name: str, limit: int = 200) -> IngestionList:
        return await self._request("GET", f"/v1/pipelines/{name}/ingestions", IngestionList,
                                   params={"limit": limit})

    async def jobs(self, name: str, limit: int = 100) -> JobsResponse:
        return await self._request("GET", f"/v1/pipelines/{name}/jobs", JobsResponse,
                                   params={"limit": limit})

    async def drift(self, name: str) -> DriftResponse:
        return await self._request("GET", f"/v1/pipelines/{name}/drift", DriftResponse)

    async def metrics(self, name: str) -> PipelineMetrics:
        return await self._request("GET", f"/v1/pipelines/{name}/metrics", PipelineMetrics)

    async def latest_explanation(self, name: str, k: int = 5) -> LatestExplanation:
        return await self._request("GET", f"/v1/pipelines/{name}/explanations/latest",
                                   LatestExplanation, params={"k": k})

    async def system(self, seconds: float | None = None) -> SystemResponse:
        return await self._request("GET", "/v1/system", SystemResponse,
                                   params={"seconds": seconds} if seconds else None)

    async def events(self, after: int = 0, pipeline: str | None = None,
                     limit: int = 200) -> EventList:
        params: dict[str, Any] = {"after": after, "limit": limit}
        if pipeline is not None:
            params["pipeline"] = pipeline
        return await self._request("GET", "/v1/events", EventList, params=params)

    async def promote(self, name: str, version: int) -> PromoteResponse:
        return await self._request("POST", f"/v1/pipelines/{name}/models/{version}/promote",
                                   PromoteResponse, admin=True)

    async def retrain(self, name: str) -> RetrainResponse:
        return await self._request("POST", f"/v1/pipelines/{name}/retrain", RetrainResponse,
                                   admin=True)

    async def release(self, name: str, version: int) -> DatasetActionResponse:
        """Let a data set version held for suspect labels (or discarded) train."""
        return await self._request("POST", f"/v1/pipelines/{name}/datasets/{version}/release",
                                   DatasetActionResponse, admin=True)

    async def discard(self, name: str, version: int) -> DatasetActionResponse:
        """Keep a held data set version out of training for good (its files are kept)."""
        return await self._request("POST", f"/v1/pipelines/{name}/datasets/{version}/discard",
                                   DatasetActionResponse, admin=True)

    # --- the feature store (a daemon before issue 10 answers 404: NotAvailable) ----------

    async def feature_sets(self) -> FeatureSetList:
        return await self._request("GET", "/v1/feature-sets", FeatureSetList)

    async def feature_set(self, name: str) -> FeatureSetInfo:
        return await self._request("GET", f"/v1/feature-sets/{name}", FeatureSetInfo)

    async def online_features(self, name: str, key: str) -> OnlineFeatures:
        return await self._request("GET", f"/v1/feature-sets/{name}/{quote(key, safe='')}",
                                   OnlineFeatures)
