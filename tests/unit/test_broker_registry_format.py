"""The broker registry's location string and package archive (no broker needed)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from mlserving_common.broker_registry import BrokerLocation, pack, unpack
from mlserving_common.package import read_metadata, verify_package
from mlserving_common.registry import RegistryError


def test_location_carries_everything_but_the_password() -> None:
    loc = BrokerLocation.parse(
        "mqtts://ml-trainer@broker.ml.svc:8884/ml?password_file=/p&ca_file=/ca.crt&seed=/models&cache=/tmp/r"
    )
    assert (loc.host, loc.port, loc.prefix, loc.username, loc.tls) == ("broker.ml.svc", 8884, "ml", "ml-trainer", True)
    assert (loc.password_file, loc.ca_file, loc.seed, loc.cache) == ("/p", "/ca.crt", "/models", "/tmp/r")
    assert BrokerLocation.parse("mqtt://127.0.0.1/ml").port == 1883
    assert BrokerLocation.parse("mqtts://127.0.0.1/ml").port == 8883


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("mqtt://user:secret@host/ml", "password in a file"),
        ("http://host/ml", "scheme must be"),
        ("mqtt:///ml", "no broker host"),
        ("mqtt://host", "topic prefix"),
        ("mqtt://host/ml/#", "topic prefix"),
        ("mqtt://host:99999/ml", "bad port"),
        ("mqtt://host/ml?pasword_file=/p", "unknown parameter"),
    ],
)
def test_bad_locations_are_refused_with_the_reason(location: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        BrokerLocation.parse(location)


def test_pack_unpack_round_trip_keeps_a_verifiable_package(model_registry, tmp_path: Path) -> None:
    source = model_registry.packages["ann"]
    payload = pack(source, read_metadata(source))
    assert pack(source, read_metadata(source)) == payload  # deterministic: same package, same bytes
    unpack(payload, tmp_path)
    assert verify_package(tmp_path) == verify_package(source)


def _tar(members: dict[str, bytes], symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not a tar at all", "not a valid tar"),
        (_tar({"model.tflite": b"x"}), "lacks"),
        (_tar({"model.tflite": b"x", "metadata.json": b"{}", "../escape": b"x"}), "only"),
        (_tar({"model.tflite": b"x"}, symlink="metadata.json"), "only"),
    ],
)
def test_unpack_writes_only_the_two_package_files(payload: bytes, message: str, tmp_path: Path) -> None:
    target = tmp_path / "pkg"
    target.mkdir()
    with pytest.raises(RegistryError, match=message):
        unpack(payload, target)
    assert not (tmp_path / "escape").exists()
