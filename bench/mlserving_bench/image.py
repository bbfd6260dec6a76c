"""Size of the server image, if ci/images has built it on this machine (else None: "n/a")."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

from mlserving_common.devcache import cache_dir

IMAGE_NAME = "ml-serving-server"
ARCHIVES = cache_dir() / "images" / "archives"
_UNITS = {"b": 1e-6, "kb": 1e-3, "mb": 1.0, "gb": 1e3, "tb": 1e6}


def parse_size_mb(text: str) -> float | None:
    """buildah's human size ("128 MB", "1.95 GB", decimal units) in MB; None if unreadable."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([kKMGT]?B)\s*", text or "")
    if not match:
        return None
    return float(match.group(1)) * _UNITS[match.group(2).lower()]


def image_size_mb() -> tuple[float | None, str]:
    """(size in MB, where it came from): buildah's local image store first, then the OCI archive."""
    if shutil.which("buildah"):
        try:
            listing = subprocess.run(
                ["buildah", "images", "--json"], capture_output=True, text=True, timeout=30, check=True
            ).stdout
            for image in json.loads(listing or "[]"):
                names = image.get("names") or []
                if any(f"/{IMAGE_NAME}:" in name for name in names):
                    size = parse_size_mb(image.get("size", ""))
                    if size is not None:
                        return size, f"buildah images: {names[0]}"
        except (subprocess.SubprocessError, OSError, ValueError):
            pass
    archive = ARCHIVES / f"{IMAGE_NAME}.tar"
    if archive.is_file():
        return archive.stat().st_size / 1e6, f"archive {archive} (compressed layers)"
    return None, "not built on this machine (make images)"
