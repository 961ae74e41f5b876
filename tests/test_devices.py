"""csd_exp.infra.devices: dtype choice per device, with simulated CPUs (capability + /proc/cpuinfo flags) and GPUs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from csd_exp.infra import devices

CAP_ENV_VARS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
AVX512_BF16_FLAGS = "fpu sse2 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16"
AVX2_FLAGS = "fpu sse2 avx avx2 fma"


@pytest.fixture
def simulate_cpu(monkeypatch, tmp_path):
    """simulate_cpu(capability, flags): PyTorch reports ``capability``; /proc/cpuinfo lists ``flags`` (None: the
    file is absent). Clears the oneDNN/MKL caps, so the real environment cannot leak in."""
    for name in CAP_ENV_VARS:
        monkeypatch.delenv(name, raising=False)

    def simulate(capability: str, flags: str | None) -> None:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        cpuinfo = tmp_path / "cpuinfo"
        if flags is None:
            cpuinfo = tmp_path / "absent"
        else:
            cpuinfo.write_text(
                f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
            )
        monkeypatch.setattr(devices, "CPUINFO", cpuinfo)

    return simulate


def test_avx2_only_cpu_chooses_float32(simulate_cpu):
    simulate_cpu("AVX2", AVX2_FLAGS)
    assert devices.fast_float_dtype("cpu") == torch.float32
    assert devices.default_model_dtype(torch.device("cpu")) == torch.float32
    assert devices.describe_dtype_choice("cpu", fast=True) == "float32: CPU capability AVX2 has no native bfloat16"
    assert not devices.cpu_has_native_bf16()


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_avx512_cpu_with_native_bf16_chooses_bfloat16(simulate_cpu, flag):
    simulate_cpu("AVX512", f"avx2 avx512f {flag}")
    assert devices.fast_float_dtype("cpu") == torch.bfloat16
    assert devices.default_model_dtype("cpu") == torch.float32  # priors stay float32 on CPUs unless asked
    assert devices.describe_dtype_choice("cpu", fast=True).startswith("bfloat16:")
    assert flag in devices.describe_dtype_choice("cpu", fast=True)


def test_avx512_without_bf16_flags_chooses_float32(simulate_cpu):
    simulate_cpu("AVX512", "avx2 avx512f avx512bw avx512_vnni")
    assert devices.fast_float_dtype("cpu") == torch.float32
    assert "no avx512_bf16/amx_bf16" in devices.describe_dtype_choice("cpu", fast=True)


def test_capability_cap_wins_over_cpu_flags(simulate_cpu):
    # ATEN_CPU_CAPABILITY=avx2 on a bf16-capable CPU: behave like the AVX2 machine.
    simulate_cpu("AVX2", AVX512_BF16_FLAGS)
    assert devices.fast_float_dtype("cpu") == torch.float32


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("ONEDNN_MAX_CPU_ISA", "AVX2", torch.float32),
        ("ONEDNN_MAX_CPU_ISA", "avx512_core_vnni", torch.float32),
        ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", torch.bfloat16),
        ("MKL_ENABLE_INSTRUCTIONS", "AVX2", torch.float32),
        ("MKL_ENABLE_INSTRUCTIONS", "AVX512_E1", torch.float32),
        ("MKL_ENABLE_INSTRUCTIONS", "AVX512_E3", torch.bfloat16),
    ],
)
def test_library_isa_caps_are_honoured(simulate_cpu, monkeypatch, name, value, expected):
    simulate_cpu("AVX512", AVX512_BF16_FLAGS)
    monkeypatch.setenv(name, value)
    assert devices.fast_float_dtype("cpu") == expected
    if expected == torch.float32:
        assert name in devices.describe_dtype_choice("cpu", fast=True)


@pytest.mark.parametrize("probe_result, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_without_proc_cpuinfo_falls_back_to_torch_probe(simulate_cpu, monkeypatch, probe_result, expected):
    simulate_cpu("AVX512", None)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: probe_result, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert devices.cpu_flags() is None
    assert devices.fast_float_dtype("cpu") == expected


def test_without_proc_cpuinfo_or_probes_is_float32(simulate_cpu, monkeypatch):
    simulate_cpu("AVX512", None)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert devices.fast_float_dtype("cpu") == torch.float32


def test_cpu_flags_parses_the_flags_line(simulate_cpu):
    simulate_cpu("AVX512", AVX512_BF16_FLAGS)
    assert devices.cpu_flags() == frozenset(AVX512_BF16_FLAGS.split())


@pytest.mark.parametrize("native, fast", [(True, torch.bfloat16), (False, torch.float16)])
def test_cuda_choices(monkeypatch, native, fast):
    # No GPU needed: only the bf16 query is consulted, and it is replaced here.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native)
    assert devices.fast_float_dtype("cuda") == fast
    assert devices.fast_float_dtype("cuda:1") == fast
    assert devices.default_model_dtype("cuda") == torch.float16
    assert devices.describe_dtype_choice("cuda", fast=True).startswith(str(fast).removeprefix("torch."))


def test_default_model_dtype_is_never_float16_on_cpu(simulate_cpu):
    for capability, flags in [("AVX2", AVX2_FLAGS), ("AVX512", AVX512_BF16_FLAGS), ("DEFAULT", "")]:
        simulate_cpu(capability, flags)
        assert devices.default_model_dtype("cpu") == torch.float32


@pytest.mark.parametrize(
    "value, expected",
    [
        ("float32", torch.float32),
        ("fp32", torch.float32),
        ("FP32", torch.float32),
        ("torch.float32", torch.float32),
        ("float16", torch.float16),
        ("fp16", torch.float16),
        ("half", torch.float16),
        ("bfloat16", torch.bfloat16),
        ("bf16", torch.bfloat16),
        (" bf16 ", torch.bfloat16),
        ("float64", torch.float64),
        (torch.bfloat16, torch.bfloat16),
        (torch.float32, torch.float32),
    ],
)
def test_parse_torch_dtype_names(value, expected):
    assert devices.parse_torch_dtype(value, "cpu") == expected


def test_parse_torch_dtype_auto_follows_the_device(simulate_cpu, monkeypatch):
    simulate_cpu("AVX2", AVX2_FLAGS)
    assert devices.parse_torch_dtype("auto", "cpu") == torch.float32
    simulate_cpu("AVX512", AVX512_BF16_FLAGS)
    assert devices.parse_torch_dtype("AUTO", "cpu") == torch.float32  # auto never depends on the CPU model
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert devices.parse_torch_dtype("auto", "cuda") == torch.float16


@pytest.mark.parametrize("value", ["int8", "fp8", "", "float31", torch.int64, None])
def test_parse_torch_dtype_rejects_the_rest(value):
    with pytest.raises(ValueError) as error:
        devices.parse_torch_dtype(value, "cpu")
    if not isinstance(value, torch.dtype):
        message = str(error.value)
        for name in ("auto", "float32", "fp32", "float16", "fp16", "half", "bfloat16", "bf16"):
            assert name in message


def test_benchmark_dtype_helper_on_avx2_only_cpu(simulate_cpu, monkeypatch):
    from benchmarks.common import DTYPE_ENV, bench_dtype

    simulate_cpu("AVX2", AVX512_BF16_FLAGS)
    monkeypatch.delenv(DTYPE_ENV, raising=False)
    dtype, reason = bench_dtype("cpu")
    assert dtype == torch.float32 and "AVX2" in reason
    monkeypatch.setenv(DTYPE_ENV, "bf16")
    assert bench_dtype("cpu") == (torch.bfloat16, f"bfloat16: forced by {DTYPE_ENV}=bf16")
    assert bench_dtype("cpu", requested="fp32")[0] == torch.float32  # --dtype beats the environment


def test_real_aten_capability_cap_chooses_float32():
    """End to end with the real PyTorch: ATEN_CPU_CAPABILITY=avx2 must give float32, whatever this CPU has."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    code = "from csd_exp.infra.devices import fast_float_dtype as f; print(f('cpu'))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    assert result.stdout.strip() == "torch.float32"
