"""The runtime layer: CPU model name and feature flags from /proc/cpuinfo, and the device a job runs on."""

import pytest
import torch

from fcnseg.runtime import cpu
from fcnseg.runtime.device import resolve_device

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2
"""


def test_cpu_name_and_flags_come_from_the_first_cpu_in_cpuinfo(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO)
    monkeypatch.setattr(cpu, "CPUINFO", info)
    assert cpu.cpu_name() == "Intel(R) Xeon(R) Platinum 8480+"
    assert cpu.cpu_flags() == frozenset({"fpu", "sse2", "avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    assert cpu.key_flags() == {"avx2": True, "avx512f": True, "avx512_vnni": False, "avx512_bf16": True,
                               "amx_bf16": True, "amx_int8": False, "amx_tile": True}
    monkeypatch.setattr(cpu, "CPUINFO", tmp_path / "missing")  # not Linux: no file
    assert cpu.cpu_flags() == frozenset() and cpu.cpu_name()  # the platform's name instead
    assert not any(cpu.key_flags().values())


def test_this_machines_cpu_is_described():
    assert isinstance(cpu.cpu_name(), str) and cpu.cpu_name()
    flags = cpu.cpu_flags()
    assert isinstance(flags, frozenset) and all(isinstance(f, str) and " " not in f for f in flags)
    assert isinstance(cpu.cpu_has_fast_bf16(), bool)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(RuntimeError):
        resolve_device("gpu0")
