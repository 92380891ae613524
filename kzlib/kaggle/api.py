"""The Kaggle API client the kit talks to — the kaggle package's ``KaggleApi`` (kaggle 2.x, kagglesdk
underneath), authenticated — and what its failures mean.

The client raises ``ValueError`` for what it refuses itself (a bad metadata file, a slug, a
permission the server denied it) and ``requests.HTTPError`` for any 4xx/5xx answer; the network
raises ``requests.ConnectionError`` or ``Timeout``. Transient: no connection, a timeout, HTTP 408,
429 and 5xx — asked again, with backoff, a bounded number of times (a 429 after the wait its
``Retry-After`` names). Everything else is permanent: it fails at once with the client's own
message. HTTP 401 is the credentials: the key or token was refused (the client turns a 401 or 403
on a kernel's status or output into a ``ValueError`` that cannot tell the two apart).
"""

from __future__ import annotations

import contextlib
import io
import os

from kzlib.errors import EnvironmentProblem

CREDENTIALS = ("put your API token in ~/.kaggle/kaggle.json, set KAGGLE_USERNAME and KAGGLE_KEY or "
               "KAGGLE_API_TOKEN, or run `kaggle auth login`")


def real_api():
    """The kaggle package's API client, authenticated (an access token, ~/.kaggle/kaggle.json,
    KAGGLE_* variables, or the credentials of ``kaggle auth login``)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except (Exception, SystemExit) as e:
        raise EnvironmentProblem(f"the Kaggle API is not usable here ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''}); {CREDENTIALS}") from None
    return api


def user_name(api) -> str | None:
    """The account the client authenticated as (whatever way it did: a token's owner comes from the
    server, an API key's from its file or variables)."""
    get = getattr(api, "get_config_value", None)
    name = get("username") if get else None
    return name or os.environ.get("KAGGLE_USERNAME") or None


def http_status(error: BaseException) -> int | None:
    return getattr(getattr(error, "response", None), "status_code", None)


def is_transient(error: BaseException) -> bool:
    """A failure that asking again later may not meet: no connection, a timeout, HTTP 408/429/5xx."""
    try:
        import requests
    except ImportError:  # pragma: no cover - the kaggle package needs requests
        return False
    if isinstance(error, (requests.ConnectionError, requests.Timeout)):
        return True
    code = http_status(error)
    return code is not None and (code in (408, 429) or code >= 500)


def retry_after(error: BaseException) -> float | None:
    """Seconds an HTTP 429 answer asks to wait (its ``Retry-After``, in seconds or as a date), else None."""
    response = getattr(error, "response", None)
    value = getattr(response, "headers", {}).get("Retry-After") if response is not None else None
    if value is None:
        return None
    from urllib3.util.retry import Retry  # requests' own transport parses the header

    try:
        return max(0.0, float(Retry().parse_retry_after(value)))
    except Exception:  # noqa: BLE001  (an unreadable header: the caller's own backoff)
        return None


def credentials_refused(error: BaseException) -> str | None:
    """One line when ``error`` is Kaggle refusing the credentials themselves (HTTP 401), else None."""
    if http_status(error) != 401:
        return None
    return f"Kaggle refused the credentials ({describe(error)}): the API key or token is wrong or expired; {CREDENTIALS}"


def describe(error: BaseException) -> str:
    """One line for a client failure: the HTTP status and the server's message, or the client's."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    code = http_status(error)
    return f"HTTP {code}: {text}" if code else f"{type(error).__name__}: {text}"
