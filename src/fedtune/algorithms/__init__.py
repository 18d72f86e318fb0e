"""The pure algorithm core: functions of tensors and explicit state, no I/O, no threads."""
