"""Ed25519 keys for model bundles: a box signs the bundles it exports with its private key,
and trusts the public keys in ``<state>/trusted_keys/``.

The library is ``cryptography`` (PyCA): Ed25519 over the bundle's manifest (which holds
every member's SHA-256), 64-byte signatures, keys as PEM files any tool reads. OpenSSF's
``model-signing`` signs a folder of files into a Sigstore bundle; it fits a model
repository with Sigstore's online identities, but on a box offline its only use would be
the same Ed25519 key pair under a larger format, and it would pull in Sigstore's stack.

A key's id is the first 16 hex digits of the SHA-256 of its 32 raw public-key bytes: it is
written in each signed bundle and kept in the lineage of every version imported with it.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from appliance.core import ApplianceError

PRIVATE_KEY_NAME = "bundle_signing.key"
PUBLIC_KEY_NAME = "bundle_signing.pub"


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass
class KeyPair:
    private_path: Path
    public_path: Path
    key_id: str


def generate_keys(folder: Path, force: bool = False) -> KeyPair:
    """Write a new key pair into ``folder``: the private key with mode 0600 (made so, never
    widened after the fact), the public key beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    private_path = folder / PRIVATE_KEY_NAME
    public_path = folder / PUBLIC_KEY_NAME
    if private_path.exists() and not force:
        raise ApplianceError(
            "key_exists",
            f"{private_path} exists already; bundles signed with it would no longer verify "
            "with a new key. Use --force to replace it, or --out to write elsewhere",
            {"file": str(private_path)}, status=409)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    tmp = private_path.with_name(f".{private_path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, private_path)
    public = private.public_key()
    public_path.write_bytes(public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return KeyPair(private_path, public_path, key_id(public))


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ApplianceError(
            "key_unreadable",
            f"the signing key {path} can't be read ({exc.strerror}); make one with "
            "`appliance keys generate`, or export with --unsigned",
            {"file": str(path)}) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ApplianceError("key_invalid", f"{path} is not a PEM private key ({exc})",
                             {"file": str(path)}) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ApplianceError("key_invalid", f"{path} is not an Ed25519 private key",
                             {"file": str(path)})
    return key


def trusted_keys(folder: Path) -> tuple[dict[str, Ed25519PublicKey], list[str]]:
    """The Ed25519 public keys in ``folder`` by id, and the files that are not one."""
    keys: dict[str, Ed25519PublicKey] = {}
    bad: list[str] = []
    if not folder.is_dir():
        return keys, bad
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except (OSError, ValueError, TypeError):
            bad.append(path.name)
            continue
        if isinstance(key, Ed25519PublicKey):
            keys[key_id(key)] = key
        else:
            bad.append(path.name)
    return keys, bad


def sign(private: Ed25519PrivateKey, message: bytes) -> dict[str, str]:
    """The signature document of a bundle: algorithm, key id, signature (base64)."""
    return {"algorithm": "ed25519", "key_id": key_id(private.public_key()),
            "signature": base64.b64encode(private.sign(message)).decode()}


def verify(doc: dict[str, object], message: bytes, folder: Path) -> str:
    """Check a bundle's signature document against the keys trusted in ``folder``;
    returns the key id. Raises (``bundle_untrusted_key``, ``bundle_bad_signature``)."""
    kid = doc.get("key_id")
    sig = doc.get("signature")
    if doc.get("algorithm") != "ed25519" or not isinstance(kid, str) or not isinstance(sig, str):
        raise ApplianceError(
            "bundle_bad_signature",
            "the bundle's signature.json is not an Ed25519 signature document "
            "(algorithm, key_id, signature)", {}, status=422)
    keys, _ = trusted_keys(folder)
    key = keys.get(kid)
    if key is None:
        raise ApplianceError(
            "bundle_untrusted_key",
            f"the bundle is signed by key {kid}, which this box does not trust: copy that "
            f"box's public key (bundle_signing.pub) into {folder}/ if it should",
            {"key_id": kid, "trusted": sorted(keys)}, status=422)
    try:
        key.verify(base64.b64decode(sig, validate=True), message)
    except (InvalidSignature, ValueError):
        raise ApplianceError(
            "bundle_bad_signature",
            f"the bundle's signature does not verify with trusted key {kid}: its manifest "
            "was changed after it was signed, or the signature is damaged",
            {"key_id": kid}, status=422) from None
    return kid
