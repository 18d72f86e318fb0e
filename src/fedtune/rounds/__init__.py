"""Round drivers: the order in which a round's steps run (synchronous, buffered
asynchronous), above the coordinator's public API, and the whole run around them."""
