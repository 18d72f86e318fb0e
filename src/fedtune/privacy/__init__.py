"""Differential privacy as parts of the round: client-level DP (clipping at the coordinator
or at the sites, Gaussian noise, adaptive clipping), the accountant on Google's
``dp-accounting``, and cryptographically secure noise.

Importing this package imports neither torch nor dp-accounting (the config validates
``[privacy]`` without them); the modules that need them import them.
"""
