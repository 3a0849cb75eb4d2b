"""The host probe every `make benchmarks` result carries (benchmarks/machine.py)."""

from benchmarks.machine import cpu_info, numpy_gemm_gflops, python_loop_mops

CPUINFO = """processor\t: 0
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512_vnni
processor\t: 1
model name\t: something else
flags\t\t: fpu
"""


def test_cpu_info_names_the_cpu_and_its_vector_extensions():
    info = cpu_info(CPUINFO)
    assert info["model"] == "AMD EPYC 7B13"          # the first processor speaks for all
    assert info["isa"] == ["avx2", "fma", "avx512f", "avx512_vnni"]
    assert cpu_info("processor\t: 0\n")["isa"] is None  # no flags line: unknown, not "none"


def test_the_speed_probes_measure_something():
    assert numpy_gemm_gflops(n=64, seconds=0.05) > 0
    assert python_loop_mops(n=10_000, seconds=0.05) > 0
