"""The one error family of fedtune.

Every error a user can cause (a bad config key, a missing file, an impossible value, a
malformed message) is a :class:`FedtuneError` whose message names the thing, the value and
the fix. The CLI prints such errors on one line and exits with code 2; anything else is a bug.
"""

from __future__ import annotations


class FedtuneError(Exception):
    """Base class of all errors a user can cause and fix."""


class ConfigError(FedtuneError):
    """A configuration key, type or value is wrong."""


class DataError(FedtuneError):
    """A dataset or partition cannot be built as configured."""


class MessageError(FedtuneError):
    """A message between coordinator and node is malformed, oversized or not finite."""


class StoreError(FedtuneError):
    """The run store cannot find or read what was asked for."""
