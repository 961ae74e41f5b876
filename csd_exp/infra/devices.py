"""Which floating-point dtype a device runs well, and why: used for ``model.torch_dtype: auto`` and the benchmarks.

Two questions, two functions:

* :func:`fast_float_dtype` - the fastest dtype the device runs *well*, for throughput measurements. CUDA:
  bfloat16 where the GPU has native bf16 (Ampere or newer), else float16. CPU: bfloat16 only where the
  CPU has native bf16 instructions (AVX-512 BF16 or AMX) *and* PyTorch's kernels may use them, else float32.
* :func:`default_model_dtype` - what a diffusion prior should default to. CUDA: float16, the dtype the Stable
  Diffusion family is published and usually validated in (bf16's 8-bit mantissa changes the CFG arithmetic
  more than fp16's 11 bits, and pre-Ampere GPUs only emulate bf16). CPU: as above, bfloat16 if native,
  else float32; never float16, which CPUs mostly emulate (~20x slower than float32).

Why not bf16 everywhere on CPU: without native instructions, PyTorch/oneDNN emulate bf16 by converting to
float32 around each operation; one SD-1.5-size UNet row at 32x32 took 129.8 s in bf16 against 2.65 s in
float32 on an AVX2-only CPU. ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is no help: it is private and
answers True on any AVX-512 CPU, where oneDNN merely *emulates* bf16.

Caps are honoured: ``ATEN_CPU_CAPABILITY=avx2`` (read back through the public
``torch.backends.cpu.get_cpu_capability()``), ``ONEDNN_MAX_CPU_ISA=AVX2`` (any oneDNN ISA below
AVX512_CORE_BF16) or ``MKL_ENABLE_INSTRUCTIONS=AVX2`` (below AVX512_E3) mean "behave like the smaller
machine", so the answer is float32 even on a bf16-capable CPU.

Importing this module touches neither CUDA nor /proc; everything is read when a function is called.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA / legacy DNNL_MAX_CPU_ISA) that stop short of bf16 instructions.
ONEDNN_ISAS_WITHOUT_BF16 = frozenset(
    {
        "SSE41",
        "AVX",
        "AVX2",
        "AVX2_VNNI",
        "AVX2_VNNI_2",
        "AVX512_CORE",
        "AVX512_CORE_VNNI",
        "AVX512_MIC",
        "AVX512_MIC_4OPS",
    }
)
# MKL_ENABLE_INSTRUCTIONS values below AVX512_E3, MKL's first level with bf16.
MKL_ISAS_WITHOUT_BF16 = frozenset({"SSE4_2", "AVX", "AVX2", "AVX2_E1", "AVX512", "AVX512_E1", "AVX512_E2"})

_DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
}
ALLOWED_DTYPE_NAMES = ("auto", *_DTYPE_NAMES)


def _as_device(device: str | torch.device | None) -> torch.device:
    """``None`` means where work would go by default: CUDA if present, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_capability() -> str:
    """The SIMD level PyTorch's CPU kernels dispatch to ("AVX2", "AVX512", "DEFAULT", ...), after any
    ``ATEN_CPU_CAPABILITY`` cap."""
    try:
        return str(torch.backends.cpu.get_cpu_capability()).upper()
    except (AttributeError, RuntimeError):  # pragma: no cover - very old or unusual builds
        return "DEFAULT"


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo, or None where that file is absent or unreadable (not Linux)."""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 / ARM spelling; all cores list the same flags
            return frozenset(value.split())
    return frozenset()


def _torch_reports_bf16_hardware() -> bool:
    """Fallback where /proc/cpuinfo is missing: torch.cpu's private probes, guarded (absent -> False)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    for name in probes:
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except (RuntimeError, TypeError):  # pragma: no cover - probe present but unusable
            continue
    return False


def isa_cap_without_bf16() -> str | None:
    """The first environment cap on oneDNN's or MKL's instruction set that stops below bf16, as
    "NAME=VALUE", or None. Either library running the UNet's convolutions/GEMMs without bf16 instructions
    makes bf16 emulated, so any such cap counts."""
    for names, blocked in (
        (("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"), ONEDNN_ISAS_WITHOUT_BF16),
        (("MKL_ENABLE_INSTRUCTIONS",), MKL_ISAS_WITHOUT_BF16),
    ):
        for name in names:
            value = os.environ.get(name, "").strip().upper().removeprefix("MKL_ENABLE_")
            if value in blocked:
                return f"{name}={value}"
    return None


def _cpu_bf16_verdict() -> tuple[bool, str]:
    """(native bf16 usable, reason). Checks the caps first: a capped run must behave like the smaller CPU."""
    capability = cpu_capability()
    if not capability.startswith("AVX512"):
        return False, f"CPU capability {capability} has no native bfloat16"
    isa_cap = isa_cap_without_bf16()
    if isa_cap is not None:
        return False, f"{isa_cap} caps the kernels below native bfloat16 (CPU capability {capability})"
    flags = cpu_flags()
    if flags is None:
        if _torch_reports_bf16_hardware():
            return True, f"CPU capability {capability}, torch reports AVX-512 BF16/AMX (no /proc/cpuinfo)"
        return False, f"CPU capability {capability}, no /proc/cpuinfo and torch reports no AVX-512 BF16/AMX"
    found = [flag for flag in NATIVE_BF16_FLAGS if flag in flags]
    if found:
        return True, f"CPU capability {capability} with {'+'.join(found)}"
    return False, f"CPU capability {capability} but no avx512_bf16/amx_bf16 flag"


def cpu_has_native_bf16() -> bool:
    """True where bfloat16 runs on native CPU instructions that PyTorch is allowed to use."""
    return _cpu_bf16_verdict()[0]


def _cuda_native_bf16() -> bool:
    """True on GPUs with native bf16 (compute capability >= 8.0); emulated bf16 does not count."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # pragma: no cover - older torch without the keyword
        return bool(torch.cuda.is_bf16_supported())


def _choose(device: str | torch.device | None, fast: bool) -> tuple[torch.dtype, str]:
    """(dtype, one-line reason) for ``fast_float_dtype`` (fast=True) or ``default_model_dtype``."""
    device = _as_device(device)
    if device.type == "cuda":
        if not fast:
            return torch.float16, "float16: CUDA, the Stable Diffusion family's reference dtype"
        if _cuda_native_bf16():
            return torch.bfloat16, "bfloat16: CUDA device with native bfloat16"
        return torch.float16, "float16: CUDA device without native bfloat16"
    if device.type == "mps":
        return torch.float16, "float16: Apple MPS runs half precision natively"
    if device.type != "cpu":
        return torch.float32, f"float32: no reduced-precision preference known for device type {device.type!r}"
    if not fast:  # a prior's numbers should not change with the CPU it happens to run on
        return torch.float32, "float32: the CPU default (model.torch_dtype=bfloat16 opts into reduced precision)"
    native, reason = _cpu_bf16_verdict()
    return (torch.bfloat16, f"bfloat16: {reason}") if native else (torch.float32, f"float32: {reason}")


def fast_float_dtype(device: str | torch.device | None = None) -> torch.dtype:
    """The fastest dtype ``device`` runs well: CUDA bf16 (native) or fp16; CPU bf16 if native, else fp32."""
    return _choose(device, fast=True)[0]


def default_model_dtype(device: str | torch.device | None = None) -> torch.dtype:
    """A prior's default dtype on ``device`` (``model.torch_dtype=auto``): CUDA fp16, CPU fp32 (fp16 on a CPU
    is ~20x slower and bf16 would make results depend on the CPU)."""
    return _choose(device, fast=False)[0]


def describe_dtype_choice(device: str | torch.device | None = None, *, fast: bool = False) -> str:
    """One line naming the dtype chosen for ``device`` and why, e.g. "float32: CPU capability AVX2 has no
    native bfloat16". ``fast=True`` describes :func:`fast_float_dtype`, else :func:`default_model_dtype`."""
    return _choose(device, fast=fast)[1]


def parse_torch_dtype(value: str | torch.dtype, device: str | torch.device | None = None) -> torch.dtype:
    """A config value -> torch.dtype: "auto" is :func:`default_model_dtype` of ``device``; names such as
    "float32"/"fp32", "float16"/"fp16"/"half", "bfloat16"/"bf16" (case-insensitive, "torch." prefix allowed)."""
    if isinstance(value, torch.dtype):
        if not value.is_floating_point:
            raise ValueError(f"torch_dtype must be a floating-point dtype, got {value}")
        return value
    key = str(value).strip().lower().removeprefix("torch.")
    if key == "auto":
        return default_model_dtype(device)
    if key not in _DTYPE_NAMES:
        raise ValueError(f"unknown torch_dtype {value!r}; allowed: {', '.join(ALLOWED_DTYPE_NAMES)} or a torch.dtype")
    return _DTYPE_NAMES[key]
