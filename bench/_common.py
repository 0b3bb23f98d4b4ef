"""What every benchmark shares: the `--device` option, a description of the device, synchronisation before a timer
is read, and the JSON report under `bench/results/` naming the device it was measured on."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")


def resolve_device(name: str | None = "auto") -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available here")
    return device


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict[str, Any]:
    """`{"name", "type", ...}`: the GPU's name and memory, or the CPU's model and torch threads."""
    info: dict[str, Any] = {"type": device.type, "torch": torch.__version__, "cpus": os.cpu_count(),
                            "torch_threads": torch.get_num_threads()}  # fmt: skip
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        properties = torch.cuda.get_device_properties(index)
        info.update(name=properties.name, memory_gib=round(properties.total_memory / 2**30, 1),
                    cuda=torch.version.cuda)  # fmt: skip
    else:
        info["name"] = f"{_cpu_model()} ({torch.get_num_threads()} threads)"
    return info


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timer read after it measures the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_results(
    filename: str, result: dict[str, Any], device: torch.device, output: str | Path | None = None
) -> Path:
    """Write `result` with a `"device"` entry to `output` (default `bench/results/<filename>`); returns the path."""
    path = Path(output) if output else RESULTS / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**result, "device": device_info(device)}, indent=2) + "\n")
    print(f"wrote {path} (device: {device_info(device)['name']})")
    return path
