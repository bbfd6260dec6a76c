"""The container images (issue 4): built by ci/images/build.sh with buildah, and they hold what
the chart relies on — a server without TensorFlow that runs the baked model packages, a
trainer with TensorFlow, a Mosquitto broker — each running as its non-root user.

Commands run inside the images with `buildah run` (chroot isolation: no container engine, no
registry). The first run builds everything (~20 min cold); later runs reuse the layer, pip,
base and model caches in /var/cache/ml-serving and take seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mlserving_common.devcache import cache_dir

pytestmark = [pytest.mark.slow, pytest.mark.images, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "ci" / "images" / "build.sh"
OUT = cache_dir() / "images" / "archives"
SERVER_IMAGE_LIMIT_BYTES = 250_000_000  # issue 7
SERVER_UID, BROKER_UID = "10001", "1883"


def _read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return dict(pairs)


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    """Build (or reuse) all three images; the references build.sh wrote to images.env."""
    if os.geteuid() != 0:
        pytest.skip("building images needs root (apt-get, buildah storage in /var/lib/containers)")
    done = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, f"build.sh failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert shutil.which("buildah"), "build.sh should have installed buildah"
    env = _read_env(OUT / "images.env")
    for name in ("SERVER", "TRAINER", "MOSQUITTO"):
        assert f"IMAGE_{name}" in env, f"images.env lacks IMAGE_{name}:\n{env}"
    return env


@contextmanager
def _container(image: str) -> Iterator[str]:
    name = subprocess.run(
        ["buildah", "from", "--pull=never", "--quiet", image], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        yield name
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True, check=False)


def run_in(image: str, *command: str) -> subprocess.CompletedProcess[str]:
    """Run a command in a fresh working container of `image`, as the image's own user."""
    with _container(image) as ctr:
        return subprocess.run(
            ["buildah", "run", "--isolation=chroot", ctr, "--", *command],
            capture_output=True,
            text=True,
            timeout=600,
        )


def image_config(image: str) -> dict:
    out = subprocess.run(
        ["buildah", "inspect", "--type", "image", image], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)["OCIv1"]["config"]


def test_build_script_has_help() -> None:
    done = subprocess.run(["bash", str(BUILD_SCRIPT), "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    assert "--only" in done.stdout and "oci" in done.stdout.lower()


def test_server_runs_its_help(images: dict[str, str]) -> None:
    done = run_in(images["IMAGE_SERVER"], "mlserving-server", "--help")
    assert done.returncode == 0, done.stderr
    assert "usage: mlserving-server" in done.stdout


def test_server_has_no_tensorflow_and_no_trainer(images: dict[str, str]) -> None:
    check = (
        "import importlib.util, sys; "
        "found = [m for m in ('tensorflow', 'keras', 'mlserving_training') if importlib.util.find_spec(m)]; "
        "print(found); sys.exit(bool(found))"
    )
    done = run_in(images["IMAGE_SERVER"], "python", "-c", check)
    assert done.returncode == 0, f"server image holds {done.stdout.strip()} {done.stderr}"


def test_server_serves_its_baked_packages(images: dict[str, str]) -> None:
    """Every package in /models verifies, `current` points at v1, and LiteRT runs it (which also
    proves the LiteRT files the Dockerfile removes are not needed)."""
    script = """
import json
import numpy as np
from mlserving_common.package import verify_package
from mlserving_common.registry import FilesystemRegistry
from mlserving_server.runtime import ModelRuntime
registry = FilesystemRegistry('/models')
report = {}
for model in registry.models():
    package = registry.fetch(model)
    metadata = verify_package(package)
    runtime = ModelRuntime(package, max_batch=8)
    windows = np.linspace(0.0, 1.0, 5 * runtime.window, dtype=np.float32).reshape(5, runtime.window)
    windows = windows * metadata.normalization.std + metadata.normalization.mean
    forecast = runtime.predict(windows)
    report[model] = {'current': registry.current(model), 'version': metadata.version,
                     'finite': bool(np.isfinite(forecast).all()), 'rows': int(forecast.shape[0])}
print(json.dumps(report))
"""
    done = run_in(images["IMAGE_SERVER"], "python", "-c", script)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(report) == {"lstm", "ann"}, report
    for model, facts in report.items():
        assert facts == {"current": "v1", "version": "v1", "finite": True, "rows": 5}, (model, facts)


def test_server_image_config(images: dict[str, str]) -> None:
    config = image_config(images["IMAGE_SERVER"])
    assert config["User"] == f"{SERVER_UID}:{SERVER_UID}"
    assert config["Entrypoint"] == ["mlserving-server"]
    assert config["Cmd"] == ["--config", "/etc/ml-serving/config/server.yaml"]
    assert "8080/tcp" in config["ExposedPorts"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == images["APP_VERSION"]
    assert labels["org.opencontainers.image.title"] == "ml-serving-server"
    assert not any("PIP_CERT" in item or "ca-certificates" in item for item in config.get("Env", []))
    done = run_in(images["IMAGE_SERVER"], "id", "-u")
    assert done.stdout.strip() == SERVER_UID


def test_server_image_size_budget(images: dict[str, str]) -> None:
    assert int(images["IMAGE_SERVER_BYTES"]) <= SERVER_IMAGE_LIMIT_BYTES


def test_trainer_runs_its_help_with_tensorflow(images: dict[str, str]) -> None:
    image = images["IMAGE_TRAINER"]
    done = run_in(image, "mlserving-train", "--help")
    assert done.returncode == 0, done.stderr
    assert "usage: mlserving-train" in done.stdout
    done = run_in(
        image, "python", "-c", "import tensorflow, mlserving_training.pipeline; print(tensorflow.__version__)"
    )
    assert done.returncode == 0, done.stderr
    config = image_config(image)
    assert config["User"] == f"{SERVER_UID}:{SERVER_UID}"
    assert config["Entrypoint"] == ["mlserving-train"]


def test_mosquitto_runs_as_1883_with_passwd_tool(images: dict[str, str]) -> None:
    image = images["IMAGE_MOSQUITTO"]
    done = run_in(image, "mosquitto", "-h")  # prints usage and exits 3 by design
    assert "mosquitto version 2." in done.stdout + done.stderr, done
    # What the chart's init container does: hash a plaintext users file in place.
    done = run_in(
        image, "sh", "-ec", "id -u; echo user:secret >/tmp/passwd; mosquitto_passwd -U /tmp/passwd; cat /tmp/passwd"
    )
    assert done.returncode == 0, done.stderr
    uid, entry = done.stdout.split()
    assert uid == BROKER_UID
    assert entry.startswith("user:$") and "secret" not in entry, entry
    config = image_config(image)
    assert config["Entrypoint"] == ["mosquitto"]
    assert config["Cmd"] == ["-c", "/mosquitto/config/mosquitto.conf"]
    done = run_in(image, "test", "-w", "/mosquitto/data")
    assert done.returncode == 0, "the broker user cannot write its persistence directory"
    # Our plugin is in the image and loads into its Mosquitto (the chart's config names this path).
    done = run_in(
        image,
        "sh",
        "-ec",
        "printf 'user u\\ntopic read x/#\\n' >/tmp/acl;"
        " printf 'listener 18830 127.0.0.1\\nallow_anonymous false\\nlog_dest stderr\\n"
        "plugin /usr/lib/mosquitto/mlserving_auth.so\\nplugin_opt_acl_file /tmp/acl\\n' >/tmp/c;"
        " timeout 3 mosquitto -c /tmp/c || true",
    )
    assert "mlserving-auth: 1 user(s) from /tmp/acl" in done.stdout + done.stderr, done


@pytest.mark.parametrize("name", ["server", "trainer", "mosquitto"])
def test_archive_holds_both_tags(images: dict[str, str], name: str) -> None:
    """The OCI archive loads with `ctr -n k8s.io images import` under both tags."""
    key = name.upper()
    archive = Path(images[f"ARCHIVE_{key}"])
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.removeprefix("./") == "index.json")
        index = json.load(tar.extractfile(member))
    refs = {m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]}
    assert refs == {images[f"IMAGE_{key}"], images[f"IMAGE_{key}_SHA"]}
