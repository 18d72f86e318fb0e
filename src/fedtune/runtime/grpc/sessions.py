"""Who may hold a Session open, for how long before saying hello, and how loudly refusals
are logged.

A session takes one worker of the server's thread pool for as long as it is open. So that
no site, however many streams it opens, can use up the pool that honest sites need:

* a session must say ``hello`` within ``server.hello_timeout_s`` or it is cancelled;
* at most ``PER_SITE_PENDING`` sessions of one authenticated site, and ``MAX_PENDING`` in all,
  may wait for their hello at once (more are refused with RESOURCE_EXHAUSTED); a site's new
  session that has said hello replaces its previous one, so each site holds at most one live
  session plus a few pending ones;
* the pool has a worker for every live and pending session the caps allow.

Refusals are logged at most once per ``interval_s`` per reason and site, with the count of
those left out, so a flood of bad attempts cannot fill the coordinator's disk.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc

from .security import token_matches

PER_SITE_PENDING = 2
MAX_PENDING = 64


class RateLimitedLog:
    """``warning(key, ...)`` logs a key at most once per ``interval_s``, counting the rest."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self.logger, self.interval_s = logger, interval_s
        self.lock = threading.Lock()
        self.last: dict[str, tuple[float, int]] = {}  # key -> (time logged, suppressed since)

    def warning(self, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        with self.lock:
            logged, suppressed = self.last.get(key, (-1e18, 0))
            if now - logged < self.interval_s:
                self.last[key] = (logged, suppressed + 1)
                return
            if len(self.last) > 10_000:  # keys are site names and reasons: bound them anyway
                self.last.clear()
            self.last[key] = (now, 0)
        if suppressed:
            msg += f" ({suppressed} more like it in the last {self.interval_s:g} s)"
        self.logger.warning(msg, *args)


class PendingSessions:
    """Counts sessions that are authenticated but have not said hello yet."""

    def __init__(self, per_site: int = PER_SITE_PENDING, total: int = MAX_PENDING) -> None:
        self.per_site, self.total = per_site, total
        self.lock = threading.Lock()
        self.by_site: dict[str, int] = {}

    def enter(self, site: str) -> bool:
        with self.lock:
            if self.by_site.get(site, 0) >= self.per_site or \
                    sum(self.by_site.values()) >= self.total:
                return False
            self.by_site[site] = self.by_site.get(site, 0) + 1
            return True

    def leave(self, site: str) -> None:
        with self.lock:
            left = self.by_site.get(site, 0) - 1
            if left > 0:
                self.by_site[site] = left
            else:
                self.by_site.pop(site, None)


def pool_size(known_sites: int | None) -> int:
    """Workers for every live session plus the pending ones the caps allow."""
    live = known_sites if known_sites is not None else 256
    return max(32, live + MAX_PENDING + 8)


def authenticate(context: grpc.ServicerContext, *, tokens: dict[str, str] | None,
                 client_ca: bool, refusals: RateLimitedLog) -> str:
    """The site a call comes from, or abort the call (token, then certificate name)."""
    meta = dict(context.invocation_metadata())
    site = str(meta.get("x-fedtune-site", ""))[:256]
    if not site:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing x-fedtune-site metadata")
    if tokens is not None and not token_matches(tokens.get(site),
                                                str(meta.get("x-fedtune-token", ""))[:1024]):
        refusals.warning(f"token:{site}", "refused site %r: unknown site or wrong token", site)
        context.abort(grpc.StatusCode.UNAUTHENTICATED,
                      f"site {site!r} is unknown or its token is wrong")
    if client_ca:
        names = context.auth_context().get("x509_common_name", [])
        if site.encode() not in names:
            refusals.warning(f"cert:{site}", "refused site %r: certificate is for %r", site,
                             names)
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"client certificate is not issued to site {site!r}")
    return site


def first_message(requests: Iterator[Any], context: grpc.ServicerContext,
                  timeout_s: float) -> Any | None:
    """The session's first frame, or None when it does not come within ``timeout_s`` (the
    call is then cancelled) or the stream ends first."""
    timer = threading.Timer(timeout_s, context.cancel)
    timer.daemon = True
    timer.start()
    try:
        return next(requests)
    except (StopIteration, grpc.RpcError):
        return None
    finally:
        timer.cancel()


READY_BYTES = 2**16  # a ready message: examples, and an hourly grid of up to a year


def registered_examples(text: bytes, cap: int, site: str) -> int | str:
    """The training examples a ``ready`` chunk registers (JSON ``{"train_examples": n}``),
    or why the registration is refused."""
    try:
        info = json.loads(text) if len(text) <= READY_BYTES else None
    except (ValueError, RecursionError):
        info = None
    n = info.get("train_examples") if isinstance(info, dict) else None
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= cap:
        return (f"site {site!r} registered train_examples = {n!r:.40}; a site must register "
                f"1 to server.max_site_examples = {cap} training examples (raise the cap on "
                "the coordinator if this site really holds more)")
    return n


def registered_grid(text: bytes, site: str) -> Any:
    """The grid a ``ready`` chunk declares (``"grid"``: gCO2e/kWh, or a list of hourly
    figures), None when it declares none, or why it is refused (a str)."""
    from ...energy.grids import declared_grid

    info = json.loads(text)  # registered_examples has parsed it already
    if "grid" not in info:
        return None
    return declared_grid(info["grid"], site)
