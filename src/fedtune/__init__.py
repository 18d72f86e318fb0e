"""fedtune: hybrid centralized-decentralized fine-tuning.

The public API: build a config (:func:`load_config`), optionally your own :class:`Task`
(:func:`make_task`), and :func:`run` it; or cost a job before running it (:func:`plan` of a
:func:`make_job` on :func:`make_option` s). Everything else lives in submodules. Names are
imported on first use, so ``fedtune join`` can configure threading before torch loads.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "RunConfig": "config", "load_config": "config",
    "ConfigError": "errors", "DataError": "errors", "FedtuneError": "errors",
    "MessageError": "errors", "StoreError": "errors",
    "run": "experiment", "serve": "experiment",
    "plan": "energy.plan", "make_job": "energy.plan", "make_option": "energy.plan",
    "default_options": "energy.plan",
    "RunStore": "store",
    "Task": "task", "make_task": "task", "node_data": "task",
    "FairnessSummary": "types", "ParamSpec": "types", "RoundRecord": "types",
    "RunResult": "types",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'fedtune' has no attribute {name!r}")
