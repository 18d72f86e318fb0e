"""Personalization: what stays at each site, the methods that give each site its own model,
and the evaluation of those models (see ``docs/personalization.md``)."""
