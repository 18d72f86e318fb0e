"""The cryptographic primitives of secure aggregation, all from ``cryptography``.

* Key agreement: X25519 (Bernstein 2006); the shared secret goes through HKDF-SHA256
  (RFC 5869) with a label naming its use, so the mask key and the share-encryption key of a
  pair of sites are independent.
* Authenticated encryption of the Shamir shares a site sends through the coordinator to
  another site: ChaCha20-Poly1305 (RFC 8439), with the round and both site ids as associated
  data (a share cannot be replayed into another round or redirected to another site).
* The pseudo-random generator that expands a 32-byte seed into a mask vector: the ChaCha20
  keystream (a nonce of zeros is safe: every seed is used for one mask only).
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
RAW = serialization.Encoding.Raw


def new_private_key() -> bytes:
    """A fresh X25519 private key (32 bytes, from the OS CSPRNG)."""
    return X25519PrivateKey.generate().private_bytes(
        RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def public_key(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        RAW, serialization.PublicFormat.Raw)


def agree(private: bytes, peer_public: bytes, label: bytes) -> bytes:
    """The 32-byte key two sites share for ``label`` (each computes it from its own private
    key and the other's public key)."""
    return agree_all(private, [peer_public], label)[0]


def agree_all(private: bytes, peers: list[bytes], label: bytes) -> list[bytes]:
    """:func:`agree` with each of ``peers`` (the private key is parsed once)."""
    own = X25519PrivateKey.from_private_bytes(private)
    info = b"fedtune-secagg " + label
    return [HKDF(hashes.SHA256(), KEY_BYTES, salt=None, info=info).derive(
        own.exchange(X25519PublicKey.from_public_bytes(peer))) for peer in peers]


def seal(key: bytes, plaintext: bytes, context: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, context)


def unseal(key: bytes, sealed: bytes, context: bytes) -> bytes:
    """The plaintext; ``cryptography``'s InvalidTag if the ciphertext or context was changed."""
    return ChaCha20Poly1305(key).decrypt(sealed[:12], sealed[12:], context)


def expand(seed: bytes, numel: int, bits: int) -> np.ndarray:
    """``numel`` pseudo-random integers in [0, 2^bits) from a 32-byte seed: uint32 up to 32
    bits (4 bytes of keystream each), int64 above."""
    encryptor = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor()
    if bits <= 32:
        words = np.frombuffer(encryptor.update(b"\0" * (4 * numel)), dtype=np.uint32)
        return words if bits == 32 else words & np.uint32((1 << bits) - 1)
    stream = np.frombuffer(encryptor.update(b"\0" * (8 * numel)), dtype=np.uint64)
    return (stream & np.uint64((1 << bits) - 1)).astype(np.int64)
