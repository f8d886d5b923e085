"""Where a run came from: the checkout's commit and the versions of the packages that decide
its numbers, as the tags MLflow shows (benchmarks record them too)."""
from __future__ import annotations

import subprocess
from importlib import metadata

#: MLflow's own tag for the commit (the UI links it).
GIT_COMMIT = "mlflow.source.git.commit"
PACKAGES = ("torch", "mmengine", "mmcv", "mmsegmentation", "ray", "mlflow", "dvc", "numpy")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[f"version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
