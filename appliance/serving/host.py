"""The Host check, against DNS rebinding: which Host headers the API answers
(:class:`HostPolicy`), and the ASGI layer that refuses the others with 400 before any
route runs (:class:`HostCheckMiddleware`)."""

import ipaddress

from litestar.types import ASGIApp, Receive, Scope, Send

from appliance.api_types import ErrorBody
from appliance.serving.asgi import header, send_error


class HostPolicy:
    """Which Host headers the API answers, against DNS rebinding.

    A web page on a name its author controls can make a browser on the box's network send
    requests to the appliance, if that name resolves to the appliance's address; its
    requests carry the page's name in Host. So: an IP address is accepted when it is the
    bound one (any, when bound to all interfaces; any loopback one, when bound to loopback),
    ``localhost`` when loopback is reachable, and other names only when configured in
    ``server.allowed_hosts`` (``*.example.com`` matches sub-domains). A request without a
    Host header (HTTP/1.0) is accepted: browsers always send one.
    """

    def __init__(self, bound: str, names: list[str]) -> None:
        bound = bound.strip().strip("[]").lower()
        try:
            self.bound_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = (
                ipaddress.ip_address(bound))
        except ValueError:
            self.bound_ip = None
        self.wildcard = self.bound_ip is not None and self.bound_ip.is_unspecified
        self.loopback = bound == "localhost" or (
            self.bound_ip is not None and self.bound_ip.is_loopback)
        wanted = [n.strip().lower().rstrip(".") for n in names if n.strip()]
        if self.bound_ip is None and bound:
            wanted.append(bound)
        self.exact = frozenset(n for n in wanted if not n.startswith("*."))
        self.suffixes = tuple(n[1:] for n in wanted if n.startswith("*."))
        self._cache: dict[bytes, bool] = {}

    def allows(self, raw: bytes) -> bool:
        ok = self._cache.get(raw)
        if ok is None:
            ok = self._decide(raw)
            if len(self._cache) < 1024:
                self._cache[raw] = ok
        return ok

    def _decide(self, raw: bytes) -> bool:
        try:
            text = raw.decode("ascii").strip().lower()
        except UnicodeDecodeError:
            return False
        if text.startswith("["):
            end = text.find("]")
            host, rest = (text[1:end], text[end + 1:]) if end > 0 else ("", "")
            if rest and not (rest[0] == ":" and rest[1:].isdigit()):
                return False
        else:
            host, sep, port = text.rpartition(":")
            if not sep:
                host = text
            elif not port.isdigit():
                return False
        host = host.rstrip(".")
        if not host:
            return False
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None:
            return self.wildcard or ip == self.bound_ip or (self.loopback and ip.is_loopback)
        if host == "localhost" and (self.loopback or self.wildcard):
            return True
        return host in self.exact or (bool(self.suffixes) and host.endswith(self.suffixes))


class HostCheckMiddleware:
    """Refuses, with 400, a request whose Host header the :class:`HostPolicy` refuses."""

    def __init__(self, app: ASGIApp, policy: HostPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = header(scope, b"host")
            if host is not None and not self.policy.allows(host):
                shown = host.decode("latin-1")[:100]
                await send_error(send, 400, ErrorBody(
                    code="invalid_host",
                    message=f"Host `{shown}` is not this appliance's address; if clients "
                            "reach it by that name, add it to server.allowed_hosts",
                    details={"field": "Host", "got": shown},
                ))
                return
        await self.app(scope, receive, send)
