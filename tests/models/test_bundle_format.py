"""The bundle format on its own (fast): what is packed is read back byte for byte, and the
bounded reader refuses a hard link, a member twice, and a decompression bomb spread over
members each under the bound."""

from __future__ import annotations

import io
import tarfile

import pytest

from appliance.core import ApplianceError
from appliance.models import bundle as b

FILES = {"model.txt": b"tree\n", "model.json": b"{}", "config.json": b"{}",
         "lineage.json": b"{}", "versions.json": b"{}"}


def _tar(members: list[tuple[str, bytes, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.LNKTYPE:
                info.linkname = "model.txt"
            else:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return out.getvalue()


def _manifest() -> tuple[str, bytes, bytes]:
    return (b.MANIFEST, b'{"format": "appliance-model-bundle", "format_version": 1}',
            tarfile.REGTYPE)


def test_packed_files_come_back_with_their_digests():
    data = b.pack(FILES, {"format": b.FORMAT, "format_version": b.FORMAT_VERSION,
                          "pipeline": "p"}, None)
    unpacked = b.unpack(data, 1 << 20)
    assert unpacked.files == FILES and unpacked.signature is None
    b.check_digests(unpacked)
    assert b.bundle_pipeline(data) == "p" and b.bundle_pipeline(b"tree\n") is None


@pytest.mark.parametrize(("members", "code"), [
    ([("model.txt", b"x", tarfile.REGTYPE), ("model.json", b"", tarfile.LNKTYPE)],
     "bundle_unsafe_member"),
    ([("model.txt", b"x", tarfile.REGTYPE), ("model.txt", b"y", tarfile.REGTYPE)],
     "bundle_unsafe_member"),
    ([("model.txt/", b"", tarfile.DIRTYPE)], "bundle_unsafe_member"),
    ([("notes.txt", b"x", tarfile.REGTYPE)], "bundle_unsafe_member"),
    # each member under the bound (100 KB), together over twice it: a bomb
    ([(n, b"\0" * 90_000, tarfile.REGTYPE) for n in b.CONTENT], "bundle_too_large"),
])
def test_the_reader_refuses(members, code):
    with pytest.raises(ApplianceError) as err:
        b.unpack(_tar([_manifest(), *members]), 100_000)
    assert err.value.code == code and err.value.status == 422
