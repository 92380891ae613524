"""Devices: which one a training or a reading runs on (and why not a GPU, when one was asked for and
cannot be used), what it is, mixed precision and memory layout on it, and cuDNN's autotuner."""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

import torch

from kzlib.errors import EnvironmentProblem

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# the oldest Linux driver each CUDA major version of a torch build runs on (NVIDIA's compatibility tables)
MIN_DRIVER = {13: 580, 12: 525, 11: 450}


def driver_version() -> str | None:
    """The NVIDIA driver's version, from the kernel module (None without one)."""
    try:
        with open("/proc/driver/nvidia/version") as fh:
            text = fh.read()
    except OSError:
        return None
    m = re.search(r"\b(\d{3,}\.\d+(?:\.\d+)?)\b", text)
    return m.group(1) if m else None


def why_no_cuda() -> str:
    """Why torch cannot use a GPU here, with what to do about it (one line)."""
    built = torch.version.cuda
    driver = driver_version()
    if not built:
        return (f"this torch ({torch.__version__}) is a CPU-only build; install a CUDA build, e.g. "
                "pip install torch torchvision --index-url https://download.pytorch.org/whl/cu126")
    if driver is None:
        return "no NVIDIA GPU is visible (no driver loaded: /proc/driver/nvidia/version is missing)"
    major = int(built.split(".")[0])
    need = MIN_DRIVER.get(major)
    if need and int(driver.split(".")[0]) < need:
        return (f"torch {torch.__version__} is built for CUDA {built}, which needs NVIDIA driver >= {need}; this "
                f"machine's driver is {driver}. Install the build for your driver (CUDA 12.6 runs on >= 525): "
                f"pip install torch=={torch.__version__.split('+')[0]} torchvision --index-url "
                "https://download.pytorch.org/whl/cu126 (check the torchvision version that pairs with it)")
    return f"the NVIDIA driver {driver} is loaded, but torch (CUDA {built}) sees no usable GPU (CUDA_VISIBLE_DEVICES?)"


def pick_device(name: str = "auto", log=print) -> torch.device:
    """``auto``: the GPU when torch can use one (if a driver is there but torch cannot use it, one
    line says why and the CPU is used); ``cuda``: the GPU or one ``EnvironmentProblem`` line saying
    why not; ``cpu``: the CPU."""
    if name in ("auto", None):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if driver_version() is not None:
            log(f"warning: {why_no_cuda()}; using the CPU")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EnvironmentProblem(f"--device {name} asked for, but {why_no_cuda()} (or use --device cpu)")
    return device


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): elsewhere oneDNN emulates it,
    slower than fp32, so bf16 autocast on the CPU is ignored there. Linux's CPU flags decide; torch's
    own check (which also says yes for emulation on AVX512) only where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


@dataclass(frozen=True)
class Precision:
    """Mixed precision of one network on one device: the autocast dtype (None: fp32), and whether a
    GradScaler scales its losses (fp16 needs it: its small range underflows small gradients).

    A config asks with ``amp`` + ``amp_dtype`` on CUDA (fp16 by default) and ``amp_cpu`` +
    ``amp_cpu_dtype`` on the CPU (bf16 by default, used only where the CPU has it natively; fp16
    autocast and ``GradScaler("cpu")`` run on any CPU, slowly: the tests run the CUDA logic that way)."""
    device: torch.device
    dtype: torch.dtype | None = None

    @classmethod
    def of(cls, cfg, device: torch.device) -> "Precision":
        if device.type == "cuda":
            on, name = cfg.amp, cfg.amp_dtype
        else:
            on, name = cfg.amp_cpu, cfg.amp_cpu_dtype
            on = on and (name != "bf16" or cpu_has_bf16())
        return cls(device, DTYPES[name] if on else None)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    @property
    def scaled(self) -> bool:
        return self.dtype == torch.float16

    def __str__(self) -> str:
        return {None: "fp32", torch.float16: "fp16 autocast + GradScaler", torch.bfloat16: "bf16 autocast"}[self.dtype]


@contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """cuDNN's autotuner on (training: the crops have one size, the tuning pays off) or off (pages
    of many sizes: every new size would be tuned again); the previous setting comes back after."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


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
    return (f"CPU ({torch.get_num_threads()} threads of {os.cpu_count()}, bf16 "
            f"{'native' if cpu_has_bf16() else 'not native'}), torch {torch.__version__}")


def describe_choice(asked: str | None, device: torch.device) -> str:
    """The device line a command prints before it starts."""
    return f"device: {describe(device)}" + (" (chosen by --device auto)" if asked in (None, "auto") else "")


def describe_asked(name: str) -> str:
    """The device line of a plan: the device a preset asks for and whether it is here."""
    if name == "auto":
        return describe_choice(name, pick_device(name, log=lambda *_: None))
    if torch.device(name).type == "cuda":
        return (f"device: {describe(torch.device(name))}" if torch.cuda.is_available()
                else f"device: {name} asked, none usable here ({why_no_cuda()})")
    return f"device: {describe(torch.device(name))}"
