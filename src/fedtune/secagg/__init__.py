"""Secure aggregation (SecAgg+): the coordinator learns the sum of the sites' updates and
nothing about any single one. :mod:`.shamir` and :mod:`.keys` are the cryptographic parts,
:mod:`.masking` the fixed-point ring and the masks, :mod:`.protocol` the messages and the
site's side, :mod:`.driver` the coordinator's round.
"""
