"""Fetching what a CAP message or feed points at, within limits.

Only http and https, at the start and after every redirect (redirects are followed here, at most
`MAX_REDIRECTS`, so each target's scheme is checked); the body is read as it streams and given up
once past `max_bytes`, so a hostile or broken server costs a bounded amount of memory and, with
the client's timeout, of time.
"""

from collections.abc import Generator, Mapping
from urllib.parse import urljoin, urlsplit

import httpx

MAX_REDIRECTS = 5


class FetchFailed(Exception):
    """Nothing usable came back; `reason` says why, for the message's record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OriginHeaders(httpx.Auth):
    """Headers (a source's credentials) sent to the source's own origin and nowhere else: a feed
    links to messages on other hosts, and redirects lead anywhere, and neither may get them."""

    def __init__(self, source: str, headers: Mapping[str, str]) -> None:
        self.origin = _origin(httpx.URL(source))
        self.headers = dict(headers)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if _origin(request.url) == self.origin:
            request.headers.update(self.headers)
        yield request


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, url.port or default


def new_client(timeout_s: float, auth: httpx.Auth | None = None) -> httpx.AsyncClient:
    """A client for fetching, with the timeout on every step (connect, each read)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s), headers={"User-Agent": "cunxiang-cap/1"}, auth=auth
    )


def is_http(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


def join(base: str, href: str) -> str:
    try:
        return urljoin(base, href.strip())
    except ValueError:
        return href


async def fetch_limited(
    client: httpx.AsyncClient, url: str, max_bytes: int, accept: str = "*/*"
) -> tuple[bytes, str]:
    """The body at `url`, at most `max_bytes`, and the URL that answered after any redirects;
    raises FetchFailed with the reason."""
    if not is_http(url):
        raise FetchFailed(f"{url[:200]}: only http and https are fetched")
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        try:
            async with client.stream(
                "GET", current, headers={"Accept": accept}, follow_redirects=False
            ) as response:
                if response.is_redirect:
                    target = join(current, response.headers["Location"])
                    if not is_http(target):
                        raise FetchFailed(
                            f"fetching {current}: redirected to {target}, which is not an http(s) URL"
                        )
                    current = target
                    continue
                if not response.is_success:
                    raise FetchFailed(f"fetching {current}: HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise FetchFailed(
                            f"fetching {current}: the response is over the limit of {max_bytes} bytes"
                        )
                return bytes(body), current
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise FetchFailed(f"fetching {current}: {_describe(exc)}") from None
    raise FetchFailed(f"fetching {url}: more than {MAX_REDIRECTS} redirects")


def _describe(exc: Exception) -> str:
    # A timeout's message is often empty; its class says what happened.
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
