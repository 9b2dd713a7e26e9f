"""One accelerator or the CPU, behind the same few calls: name, memory, peak memory, synchronise.

The GPU benchmarks (``bench/train.py --gpu``, ``bench/memory.py --cuda``) call these instead of
``torch.cuda.*`` directly, so that their smoke modes run every line on a CPU: there the peak is the
process's resident high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``), which is
not the same quantity as CUDA's allocator peak, and the reports say so.
"""

from __future__ import annotations

import gc
import re
from pathlib import Path

#: Dense (no sparsity) bf16/fp16 tensor-core peak, FLOP/s, by a substring of the device name; the
#: first match wins (PCIe/NVL variants before the SXM default). Vendor data sheets.
PEAK_FLOPS = (
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H200 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
    ("H800", 989e12), ("GH200", 989e12), ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12),
    ("L40S", 362e12), ("L4", 121e12), ("A10G", 70e12), ("RTX 4090", 165e12),
)


def hwm_and_rss() -> tuple[int, int]:
    """This process's resident high-water mark and resident memory, in bytes."""
    return _proc_status("VmHWM"), _proc_status("VmRSS")


def _proc_status(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1)) * 1024


class Device:
    """``cuda`` (the current CUDA device) or ``cpu``; every method works on both."""

    def __init__(self, kind: str) -> None:
        if kind not in ("cuda", "cpu"):
            raise ValueError(f"device {kind!r}: use 'cuda' or 'cpu'")
        self.kind = kind
        self.cuda = kind == "cuda"
        if self.cuda:
            import torch

            if not torch.cuda.is_available():
                raise SystemExit("this needs a CUDA GPU (torch.cuda.is_available() is False); on a CPU use --smoke")

    @property
    def name(self) -> str:
        if self.cuda:
            import torch

            return torch.cuda.get_device_name(0)
        return "cpu"

    def total_memory(self) -> int:
        """Bytes of device memory (CPU: MemTotal)."""
        if self.cuda:
            import torch

            return torch.cuda.get_device_properties(0).total_memory
        text = Path("/proc/meminfo").read_text()
        return int(re.search(r"MemTotal:\s+(\d+)", text).group(1)) * 1024

    def peak_flops(self, override_tflops: float | None = None) -> float | None:
        """Dense 16-bit peak FLOP/s of this device, or None (CPU, or an unknown GPU: MFU is n/a)."""
        if override_tflops:
            return override_tflops * 1e12
        if not self.cuda:
            return None
        return next((f for key, f in PEAK_FLOPS if key in self.name), None)

    def synchronize(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def empty_cache(self) -> None:
        gc.collect()
        if self.cuda:
            import torch

            torch.cuda.empty_cache()

    def allocated(self) -> int:
        """Bytes held now: CUDA tensors (``memory_allocated``), or the resident set on CPU."""
        if self.cuda:
            import torch

            return torch.cuda.memory_allocated()
        return _proc_status("VmRSS")

    def reset_peak(self) -> None:
        """Start a new peak measurement."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")

    def peak(self) -> int:
        """Bytes at the peak since :meth:`reset_peak` (``max_memory_allocated``, or ``VmHWM``)."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return _proc_status("VmHWM")

    def reserved_peak(self) -> int | None:
        """The caching allocator's peak reservation (what ``nvidia-smi`` sees, less the context); None on CPU."""
        if self.cuda:
            import torch

            return torch.cuda.max_memory_reserved()
        return None

    @property
    def peak_label(self) -> str:
        return "torch.cuda.max_memory_allocated" if self.cuda else "VmHWM (resident memory; not comparable to a plan)"


def pin_malloc_for_rss() -> None:
    """glibc: return freed blocks to the system at once, so that the resident high-water mark of a
    step measures its tensors and not allocator slack (what ``MALLOC_MMAP_THRESHOLD_=65536`` and
    ``MALLOC_TRIM_THRESHOLD_=0`` do for a fresh process; this sets them in a running one)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 65536)
    libc.mallopt(m_trim_threshold, 0)
