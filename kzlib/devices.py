"""Devices: which one a training or a reading runs on, and mixed precision and memory layout on it."""

from __future__ import annotations

import torch

from kzlib.errors import EnvironmentProblem


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EnvironmentProblem(f"--device {name} asked for, but no CUDA GPU is available (use --device cpu)")
    return device


def autocast(device: torch.device, amp: bool, amp_cpu: bool = False):
    """Mixed precision: fp16 autocast on CUDA when ``amp``, bf16 autocast on the CPU when ``amp_cpu``
    (CPUs with AVX512-BF16 or AMX run convolutions about twice as fast in bf16); else a no-op."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16, enabled=amp)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp_cpu and cpu_has_bf16())


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): elsewhere bf16 is emulated and
    slower than fp32, so ``amp_cpu`` is ignored."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def memory_format(model: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    """NHWC weights (``channels_last``): faster convolutions on recent CPUs and GPUs."""
    return model.to(memory_format=torch.channels_last) if channels_last else model


def describe(device: torch.device) -> str:
    """What a device is, in one line: a GPU's name, compute capability, memory, and the CUDA, cuDNN
    and driver versions; the CPU's threads and bf16 support."""
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return (f"{p.name} (compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.1f} GiB), torch "
                f"{torch.__version__} with CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
                f"driver {driver_version() or 'unknown'}")
    return (f"CPU ({torch.get_num_threads()} threads, bf16 {'native' if cpu_has_bf16() else 'emulated'}), "
            f"torch {torch.__version__}")


def describe_choice(asked: str | None, device: torch.device) -> str:
    """The device line a command prints before it starts."""
    return f"device: {describe(device)}" + (" (chosen by --device auto)" if asked in (None, "auto") else "")


def driver_version() -> str | None:
    """The NVIDIA driver's version, from the kernel module (None without one)."""
    try:
        text = open("/proc/driver/nvidia/version").read()
    except OSError:
        return None
    for word in text.split():
        if word.count(".") >= 1 and word.replace(".", "").isdigit():
            return word
    return None
