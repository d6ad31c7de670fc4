"""What a run folder records about the software and the machine."""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

__all__ = ["machine_info", "package_versions", "utc_now"]


def utc_now() -> str:
    """Return the current UTC time as ISO 8601 text, e.g. ``2025-01-31T12:00:00.1Z``."""
    return (
        datetime.now(timezone.utc)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )


def package_versions() -> dict[str, str | None]:
    """Return the versions of Python and the packages that decide the numbers.

    Returns:
        ``python``, ``curvlab``, ``torch`` (with its build tag, e.g.
        ``2.4.0+cu121``), ``torch_cuda`` (the CUDA it was built for, ``None``
        for CPU builds), ``numpy``, ``scipy``, ``h5py``; ``None`` for a package
        that is not installed.
    """
    import h5py
    import numpy
    import torch

    import curvlab

    versions: dict[str, str | None] = {
        "python": platform.python_version(),
        "curvlab": curvlab.__version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "numpy": numpy.__version__,
        "h5py": h5py.__version__,
    }
    try:
        versions["scipy"] = metadata.version("scipy")
    except metadata.PackageNotFoundError:
        versions["scipy"] = None
    return versions


def machine_info(device: str | None = None) -> dict[str, Any]:
    """Describe the machine and the compute device.

    Args:
        device: The torch device the command runs on (``"cpu"``, ``"cuda:0"``).

    Returns:
        Platform, host name, CPU count, PyTorch threads, the device and, for a
        CUDA device, its name and the CUDA version.
    """
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "hostname": platform.node() or None,
        "python_implementation": platform.python_implementation(),
        "python_executable": sys.executable,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": None if device is None else str(device),
    }
    if device is not None and torch.device(device).type == "cuda":
        resolved = torch.device(device)
        info["device_name"] = torch.cuda.get_device_name(resolved)
        info["cuda_version"] = torch.version.cuda
    return info
