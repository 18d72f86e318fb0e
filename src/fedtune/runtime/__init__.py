"""Runtimes move messages between the coordinator and nodes; they know no algorithm."""

from .base import Reply, Runtime
from .inprocess import InProcessRuntime

__all__ = ["InProcessRuntime", "Reply", "Runtime"]
