"""Fetching what a CAP message or feed points at, within limits.

Only http and https; at most a few redirects, each to http(s) again (httpx follows nothing else);
the body is read as it streams and given up past `max_bytes`, so a hostile or broken server costs a
bounded amount of memory and, with the client's timeout, of time.
"""

import httpx

MAX_REDIRECTS = 3


class FetchFailed(Exception):
    """Nothing usable came back; `reason` says why, for the message's record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def new_client(timeout_s: float) -> httpx.AsyncClient:
    """A client for fetching: the timeout on every step, redirects followed within the limit."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s),
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        headers={"User-Agent": "cunxiang-cap/1"},
    )


async def fetch_limited(client: httpx.AsyncClient, url: str, max_bytes: int) -> bytes:
    """The body at `url`, at most `max_bytes` long; raises FetchFailed with the reason."""
    if not url.lower().startswith(("http://", "https://")):
        raise FetchFailed(f"{url[:200]}: only http and https are fetched")
    try:
        async with client.stream("GET", url) as response:
            if not response.is_success:
                raise FetchFailed(f"fetching {url}: HTTP {response.status_code}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise FetchFailed(f"fetching {url}: it is {declared} bytes; the limit is {max_bytes}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body.extend(chunk)
                if len(body) > max_bytes:
                    raise FetchFailed(f"fetching {url}: over the limit of {max_bytes} bytes")
            return bytes(body)
    except httpx.TooManyRedirects:
        raise FetchFailed(f"fetching {url}: more than {MAX_REDIRECTS} redirects") from None
    except httpx.UnsupportedProtocol as exc:
        raise FetchFailed(f"fetching {url}: redirected to a scheme other than http(s): {exc}") from None
    except httpx.TimeoutException:
        raise FetchFailed(f"fetching {url}: no answer in time") from None
    except httpx.HTTPError as exc:
        raise FetchFailed(f"fetching {url}: {type(exc).__name__}: {exc}") from None
