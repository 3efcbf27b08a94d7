"""Model bundles: one file that holds everything another box needs to serve a version.

The format is a gzip-compressed POSIX tar (``.tar.gz``) of a fixed set of regular files,
``manifest.json`` first:

- ``manifest.json``: the format, the pipeline and version it came from, when and where it
  was exported, and each other member's size and SHA-256;
- ``signature.json``: an Ed25519 signature of the manifest's bytes and the key's id
  (absent in an unsigned bundle);
- ``model.txt`` (LightGBM's text format), ``model.json`` (task, features, category maps,
  derived features and joins, reference statistics for drift, metrics), ``config.json``
  (the pipeline's config section and the feature sets it joins), ``lineage.json``,
  ``versions.json`` (the libraries it was trained and exported with).

Why tar.gz: the standard library reads and writes it (no dependency on either box), any
box inspects one with ``tar tzvf``, a model's text compresses about fivefold, and tar's
headers give each member's type and size before its bytes are read, so links, devices,
escaping paths and oversized members are refused from the header. Zip would do as well
but has two directories (local headers and the central one) that may disagree.

Reading is bounded: the bundle's size, each member's size (from its header, before it is
decompressed), the number of members; anything else than the known regular files is
refused. Nothing is written to disk while a bundle is read: members are read into memory,
checked (signature, then digests), and only then registered.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.core import ApplianceError

FORMAT = "appliance-model-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
CONTENT = ("model.txt", "model.json", "config.json", "lineage.json", "versions.json")
MEMBERS = (MANIFEST, SIGNATURE, *CONTENT)
GZIP_MAGIC = b"\x1f\x8b"


def is_bundle(data: bytes) -> bool:
    return data[:2] == GZIP_MAGIC


def _refuse(code: str, message: str, **details: Any) -> ApplianceError:
    return ApplianceError(code, message, details, status=422)


def pack(files: dict[str, bytes], manifest: dict[str, Any],
         signature: dict[str, str] | None, signer: Any = None) -> bytes:
    """The bundle's bytes: ``manifest`` gets each file's size and SHA-256; ``signer``
    (a function of the manifest's bytes to a signature document) signs it."""
    manifest = {**manifest, "files": {
        name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for name, data in files.items()}}
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
    members: list[tuple[str, bytes]] = [(MANIFEST, manifest_bytes)]
    if signer is not None:
        signature = signer(manifest_bytes)
    if signature is not None:
        members.append((SIGNATURE, json.dumps(signature, indent=2).encode()))
    members.extend(files.items())
    out = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT,
                      compresslevel=6) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = now
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def exported_manifest(pipeline: str, version: int, task: str, lineage: dict[str, Any]
                      ) -> dict[str, Any]:
    """What a manifest says of the version besides its files."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "pipeline": pipeline,
            "version": version, "task": task,
            "trained_at": lineage.get("trained_at"),
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "exported_by": socket.gethostname()}


@dataclass
class Unpacked:
    manifest: dict[str, Any]
    manifest_bytes: bytes
    signature: dict[str, Any] | None
    files: dict[str, bytes] = field(default_factory=dict)


class _Bounded(io.RawIOBase):
    """A reader of decompressed bytes that refuses to give more than ``limit`` in all (a
    decompression bomb stops here whatever its headers say)."""

    def __init__(self, raw: Any, limit: int) -> None:
        self.raw = raw
        self.limit = limit
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.raw.read(len(b))
        self.count += len(data)
        if self.count > self.limit:
            raise _refuse("bundle_too_large",
                          f"the bundle decompresses to more than {self.limit >> 20} MB; "
                          "refused (twice bundles.max_member_mb bounds them all)",
                          limit=self.limit)
        b[:len(data)] = data
        return len(data)


def unpack(data: bytes, max_member_bytes: int) -> Unpacked:
    """Read a bundle's members into memory, refusing anything but the known regular files,
    each at most ``max_member_bytes``."""
    import gzip

    # All members together: the model and its metadata, twice a member's bound at most (a
    # bomb of many members at the bound each would otherwise fill the box's memory).
    limit = 2 * max_member_bytes + (64 << 10)  # and the headers, the manifest
    files: dict[str, bytes] = {}
    try:
        stream = io.BufferedReader(_Bounded(gzip.GzipFile(fileobj=io.BytesIO(data)), limit))
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for info in tar:
                _check_member(info, max_member_bytes)
                if info.name in files:
                    raise _refuse("bundle_unsafe_member",
                                  f"the bundle holds `{info.name}` twice; refused",
                                  member=info.name)
                f = tar.extractfile(info)
                files[info.name] = f.read() if f is not None else b""
    except ApplianceError:
        raise
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise _refuse("bundle_unreadable",
                      f"the bundle can't be read as a gzip-compressed tar ({exc}); it is "
                      "damaged or not a bundle") from None
    if MANIFEST not in files:
        raise _refuse("bundle_missing_file", "the bundle has no manifest.json; refused",
                      member=MANIFEST)
    try:
        manifest = json.loads(files[MANIFEST])
        signature = json.loads(files[SIGNATURE]) if SIGNATURE in files else None
    except ValueError as exc:
        raise _refuse("bundle_unreadable", f"the bundle's manifest or signature is not JSON "
                      f"({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _refuse("bundle_unreadable", f"manifest.json is not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise _refuse("bundle_unreadable",
                      f"the bundle is format version {manifest.get('format_version')}; this "
                      f"appliance reads version {FORMAT_VERSION}: upgrade it")
    return Unpacked(manifest, files.pop(MANIFEST), signature if isinstance(signature, dict)
                    else None, {k: v for k, v in files.items() if k != SIGNATURE})


def _check_member(info: tarfile.TarInfo, max_bytes: int) -> None:
    name = info.name
    if name.startswith("/") or "\\" in name:
        raise _refuse("bundle_unsafe_member",
                      f"the bundle's member `{name}` has an absolute path; refused",
                      member=name)
    if ".." in Path(name).parts:
        raise _refuse("bundle_unsafe_member",
                      f"the bundle's member `{name}` escapes its folder (`..`); refused",
                      member=name)
    if info.issym() or info.islnk():
        raise _refuse("bundle_unsafe_member",
                      f"the bundle's member `{name}` is a link (to `{info.linkname}`); "
                      "bundles hold regular files only", member=name)
    if not info.isreg():
        raise _refuse("bundle_unsafe_member",
                      f"the bundle's member `{name}` is not a regular file (a device, folder "
                      "or FIFO); bundles hold regular files only", member=name)
    if name not in MEMBERS:
        raise _refuse("bundle_unsafe_member",
                      f"the bundle holds an unexpected member `{name}` (a bundle holds "
                      f"{', '.join(MEMBERS)}); refused", member=name)
    if info.size > max_bytes:
        raise _refuse("bundle_member_too_large",
                      f"the bundle's member `{name}` is {info.size / 1e6:.1f} MB, over "
                      f"bundles.max_member_mb ({max_bytes >> 20} MB); refused",
                      member=name, size=info.size)


def check_digests(unpacked: Unpacked) -> None:
    """Every member the manifest lists is there with its size and SHA-256; nothing else."""
    listed = unpacked.manifest.get("files")
    if not isinstance(listed, dict):
        raise _refuse("bundle_unreadable", "manifest.json lists no files")
    for name in CONTENT:
        if name not in listed:
            raise _refuse("bundle_missing_file",
                          f"the bundle's manifest does not list `{name}`; refused", member=name)
    for name, entry in listed.items():
        data = unpacked.files.get(name)
        if data is None:
            raise _refuse("bundle_missing_file",
                          f"the bundle lacks `{name}`, which its manifest lists; refused",
                          member=name)
        digest = hashlib.sha256(data).hexdigest()
        if not isinstance(entry, dict) or digest != entry.get("sha256") or len(data) != \
                entry.get("size"):
            raise _refuse("bundle_digest_mismatch",
                          f"the bundle's `{name}` does not match the SHA-256 in its manifest "
                          "(changed or damaged after export); refused", member=name,
                          expected=entry.get("sha256") if isinstance(entry, dict) else None,
                          actual=digest)
    extra = sorted(set(unpacked.files) - set(listed))
    if extra:
        raise _refuse("bundle_digest_mismatch",
                      f"the bundle holds {extra}, which its manifest does not list; refused",
                      members=extra)


def read_json(unpacked: Unpacked, name: str) -> Any:
    try:
        return json.loads(unpacked.files[name])
    except ValueError as exc:
        raise _refuse("bundle_unreadable", f"the bundle's {name} is not JSON ({exc})",
                      member=name) from None


def bundle_pipeline(data: bytes) -> str | None:
    """The pipeline a bundle's manifest names (unverified: for the CLI to pick the route),
    or None when ``data`` is not a bundle."""
    if not is_bundle(data):
        return None
    name = unpack(data, 1 << 30).manifest.get("pipeline")
    return name if isinstance(name, str) else None
