"""Real deployment over gRPC: a coordinator server and sites that connect outward.

Generated code (``fedtune_pb2.py``, ``fedtune_pb2_grpc.py``) is committed and made from
``fedtune.proto`` by ``make proto``; ``tests/test_grpc_schema.py`` checks it is current.
"""

SCHEMA_VERSION = 1
