"""fedtune: hybrid centralized-decentralized fine-tuning.

The public API: build a config (:func:`load_config`), optionally your own :class:`Task`
(:func:`make_task`), and :func:`run` it. Everything else lives in submodules.
"""

from .config import RunConfig, load_config
from .errors import ConfigError, DataError, FedtuneError, MessageError, StoreError
from .experiment import run
from .store import RunStore
from .task import Task, make_task, node_data
from .types import FairnessSummary, ParamSpec, RoundRecord, RunResult

__all__ = ["ConfigError", "DataError", "FairnessSummary", "FedtuneError", "MessageError",
           "ParamSpec", "RoundRecord", "RunConfig", "RunResult", "RunStore", "StoreError", "Task",
           "load_config", "make_task", "node_data", "run"]
__version__ = "0.1.0"
