"""The annotation server's front door: who may talk to it, and how much they may send.

- Without a token the server answers only requests addressed to a loopback name
  (127.0.0.1, localhost, ::1), which also stops a web page from reaching it through DNS
  rebinding.
- With a token (required for any other listening address) every request must carry it: as
  ``Authorization: Bearer TOKEN``, the ``segany_token`` cookie, or ``?token=TOKEN`` when a
  person first opens the page (the reply then sets the cookie).
- A request that a browser marks as coming from another site (its ``Origin`` is not this
  server) is refused, so no web page can make a visitor's browser write to the database.
- Request bodies larger than the limit are refused with 413 before they are read whole.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

TOKEN_COOKIE = "segany_token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """Whether a listening address only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The host part of a Host header: 'a:80' -> 'a', '[::1]:80' -> '::1'."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class FrontDoor:
    """ASGI middleware: loopback-only Host check or token check, and a request body size limit."""

    def __init__(self, app, token: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.token = token
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await _reply(send, *refusal)
            return
        length = headers.get("content-length", "0")
        if not length.isdigit():
            await _reply(send, 400, "Content-Length must be a whole number of bytes")
            return
        if int(length) > self.max_body_bytes:
            await _reply(send, 413, f"request body too large: {length} bytes, the limit is {self.max_body_bytes}")
            return
        await self._guarded(scope, receive, send)

    def _refusal(self, scope, headers: dict[str, str]) -> tuple[int, str] | None:
        origin = headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != headers.get("host", ""):
            return 403, f"requests from other sites ({origin}) are not accepted"
        if self.token is None:
            if host_name(headers.get("host", "")) not in LOOPBACK_NAMES:
                return 403, "this server answers only requests addressed to 127.0.0.1 or localhost"
            return None
        offered = self._offered_token(scope, headers)
        if offered is None or not secrets.compare_digest(offered.encode(), self.token.encode()):
            return 401, "a valid token is required: open the address printed by `segany serve` (it ends in ?token=...)"
        return None

    def _offered_token(self, scope, headers: dict[str, str]) -> str | None:
        authorization = headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            return authorization[7:].strip()
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed cookie header simply offers no token
            cookie = SimpleCookie()
        if TOKEN_COOKIE in cookie:
            return cookie[TOKEN_COOKIE].value
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        return query.get("token", [None])[0]

    async def _guarded(self, scope, receive, send) -> None:
        """Read the body up to the limit (chunked uploads carry no Content-Length), then run the app on it."""
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                await _reply(send, 413, f"request body too large: the limit is {self.max_body_bytes} bytes")
                return
            if not message.get("more_body", False):
                break
        delivered = False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        async def with_cookie(message):
            if message["type"] == "http.response.start" and self.token is not None and "token" in parse_qs(
                scope.get("query_string", b"").decode("latin-1")
            ):
                cookie = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie.encode("latin-1"))]}
            await send(message)

        await self.app(scope, replay, with_cookie)


async def _reply(send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})
