"""Simulated attacks: malicious sites for robustness tests (:mod:`fedtune.attack.settings`)."""
