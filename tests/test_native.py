"""The C++ extension imports and reports what it was built with and what this CPU can do."""
import json
import platform
from pathlib import Path

from conftest import QEMU, run_cli


def cpuinfo_flags():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def test_native_imports_and_reports_build_info():
    from pipeline import _native

    info = _native.build_info()
    assert set(info) == {"version", "compiler", "build_type", "arch"}
    assert info["arch"] == platform.machine()
    assert info["build_type"] == "Release"


def test_cpu_features_match_proc_cpuinfo():
    from pipeline import _native

    feats, flags = _native.cpu_features(), cpuinfo_flags()
    if platform.machine() == "x86_64":
        assert feats["avx2"] == ("avx2" in flags)
        assert feats["fma"] == ("fma" in flags)
        assert feats["avx512f"] == ("avx512f" in flags)
        assert feats["avx512_vnni"] == ("avx512_vnni" in flags)
        assert not feats["neon"]
    expected = ("avx512" if feats["avx512f"] and feats["avx512bw"] and feats["avx512vl"] and feats["avx512_vnni"]
                else "avx2" if feats["avx2"] and feats["fma"] else "neon-dotprod" if feats["neon"] and feats["dotprod"]
                else "neon" if feats["neon"] else "scalar")
    assert _native.best_isa() == expected
    assert json.loads(_native.report_json())["features"] == feats


def test_cli_info_and_help():
    res = run_cli("info")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["best_isa"] in ("avx512", "avx2", "neon-dotprod", "neon", "scalar")
    res = run_cli("--help")
    assert res.returncode == 0 and "data" in res.stdout and "info" in res.stdout


def test_aarch64_build_detects_neon_under_qemu(aarch64_build):
    """The kernel library cross-compiles for aarch64 and detects NEON (and dotprod where the core has it)."""
    import subprocess

    def report(cpu):
        out = subprocess.run([QEMU[0], "-cpu", cpu, *QEMU[1:], str(aarch64_build / "lrk_info")],
                             check=True, capture_output=True, text=True).stdout
        return json.loads(out)

    a53, a_max = report("cortex-a53"), report("max")
    assert a53["arch"] == "aarch64" and a53["best_isa"] == "neon"
    assert a53["features"]["neon"] and not a53["features"]["dotprod"] and not a53["features"]["avx2"]
    assert a_max["features"]["dotprod"] and a_max["best_isa"] == "neon-dotprod"
