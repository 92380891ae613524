"""Devices: which one a training or a reading runs on (and why not a GPU, when one was asked for and
cannot be used), what it is, mixed precision and memory layout on it, and cuDNN's autotuner."""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
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


def build_runs_on(capability: tuple[int, int], arches: list[str]) -> bool:
    """Whether a torch build with ``arches`` (``torch.cuda.get_arch_list()``) has kernels for a GPU
    of ``capability``: machine code ``sm_XY`` runs on the same major version at minor Y or later
    (``sm_90a``-style code on that exact GPU only), PTX ``compute_XY`` is compiled for any GPU of
    XY or later."""
    for arch in arches:
        m = re.fullmatch(r"(sm|compute)_(\d+)(\d)([af]?)", arch)
        if not m:
            continue
        kind, major, minor, variant = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        if variant == "a":
            if (major, minor) == capability:
                return True
        elif kind == "sm" and major == capability[0] and minor <= capability[1]:
            return True
        elif kind == "compute" and (major, minor) <= capability:
            return True
    return False


def gpu_unsupported(index: int | None = None) -> str | None:
    """Why this torch build cannot run the visible GPU (``index``; every visible one when None): the
    GPU's name, its architecture and the build's list, with the install hint, in one line; None
    when it can (or when the build does not say which architectures it has). Without this check a
    GPU that ``torch.cuda.is_available()`` accepts dies at its first kernel ("no kernel image is
    available")."""
    arches = list(torch.cuda.get_arch_list())
    if not arches or not torch.version.cuda:
        return None
    for i in ([index] if index is not None else range(torch.cuda.device_count())):
        capability = tuple(torch.cuda.get_device_capability(i))
        if build_runs_on(capability, arches):
            continue
        try:
            vision = f" torchvision=={metadata.version('torchvision').split('+')[0]}"
        except metadata.PackageNotFoundError:
            vision = " torchvision"
        pair = f"torch=={torch.__version__.split('+')[0]}{vision}"
        built = [(int(m.group(1)), int(m.group(2))) for m in (re.fullmatch(r"\w+_(\d+)(\d)\w?", a) for a in arches) if m]
        if built and capability < min(built):  # an older GPU than the build's oldest
            hint = (f"install the CUDA 12.6 build of the same versions, which still has sm_50 to sm_90: pip install "
                    f"{pair} --index-url https://download.pytorch.org/whl/cu126")
        else:
            hint = (f"install a build for a newer CUDA that has sm_{capability[0]}{capability[1]}: pip install "
                    f"{pair} --index-url https://download.pytorch.org/whl/cu130")
        return (f"the GPU {torch.cuda.get_device_name(i)} (sm_{capability[0]}{capability[1]}) cannot run this torch "
                f"build ({torch.__version__}, CUDA {torch.version.cuda}: {' '.join(arches)}); {hint}")
    return None


def cuda_problem(name: str = "cuda") -> str | None:
    """Why the GPU ``name`` cannot be used here (no usable CUDA, or a GPU the build has no kernels
    for), in one line; None when it can."""
    if not torch.cuda.is_available():
        return why_no_cuda()
    return gpu_unsupported(torch.device(name).index)


def pick_device(name: str = "auto", log=print) -> torch.device:
    """``auto``: the GPU when torch can use one (if a driver is there but torch cannot use it, or
    the build has no kernels for the GPU's architecture, one line says why and the CPU is used);
    ``cuda``: the GPU or one ``EnvironmentProblem`` line saying why not; ``cpu``: the CPU."""
    if name in ("auto", None):
        problem = cuda_problem()
        if problem is None:
            return torch.device("cuda")
        if torch.cuda.is_available() or driver_version() is not None:
            log(f"warning: {problem}; using the CPU")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        problem = cuda_problem(name)
        if problem:
            raise EnvironmentProblem(f"--device {name} asked for, but {problem} (or use --device cpu)")
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


def cpu_threads() -> int:
    """The threads torch computes with on the CPU (its intra-op pool: the cores, or OMP_NUM_THREADS)."""
    return torch.get_num_threads()


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
        problem = cuda_problem(name)
        return f"device: {name} asked, none usable here ({problem})" if problem else f"device: {describe(torch.device(name))}"
    return f"device: {describe(torch.device(name))}"
