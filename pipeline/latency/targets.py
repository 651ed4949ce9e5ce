"""Where latency is measured: this machine, a Linux board or phone over ssh, an Android device over
adb, or the aarch64 build under qemu (correct results, timings flagged as emulated).

    local | ssh://user@host[:port] | adb[:serial] | qemu-aarch64

Each target runs the standalone `lowrank_bench` built for its architecture (copied once per kernel
version) on a model file's LSTM stack or a synthetic stack, or on a whole model file and an utterance, and
returns its JSON report. Extra options for ssh
and scp (a key, a known-hosts file) come from the environment variable PIPELINE_SSH_OPTS.
"""
import hashlib
import json
import os
import platform
import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("PIPELINE_CACHE", Path.home() / ".cache/asr-pipeline"))
TOOLCHAINS = {"aarch64": ROOT / "cmake/aarch64-linux-gnu.cmake"}
QEMU = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]


def build_programs(out_dir, toolchain=None):
    """Builds the standalone programs (`lowrank_bench`, `lrk_info`, `kernel_check`) with CMake into
    `out_dir`, for this machine or, with a CMake toolchain file, for another (e.g.
    cmake/aarch64-linux-gnu.cmake)."""
    out = Path(out_dir)
    cmd = ["cmake", "-S", str(ROOT), "-B", str(out), "-DLRK_PYTHON=OFF", "-DCMAKE_BUILD_TYPE=Release"]
    if toolchain:
        cmd.append(f"-DCMAKE_TOOLCHAIN_FILE={Path(toolchain).resolve()}")
    for step in (cmd, ["cmake", "--build", str(out), "--parallel", "2"]):
        res = subprocess.run(step, capture_output=True, text=True)
        if res.returncode != 0:
            raise PipelineError(f"building the native programs in {out} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    return out


def kernel_version():
    """The hash of the sources lowrank_bench is built from (all of csrc/ but the Python bindings):
    binaries and latency tables are keyed by it, so a kernel change invalidates both."""
    h = hashlib.sha256()
    files = sorted(p for p in (ROOT / "csrc").rglob("*") if p.is_file() and p.name != "bindings.cc")
    for p in files + [ROOT / "CMakeLists.txt"]:
        h.update(p.relative_to(ROOT).as_posix().encode() + p.read_bytes())
    return h.hexdigest()[:16]


def binary_for(arch):
    """`lowrank_bench` for `arch`, built once per kernel version into the cache."""
    out = CACHE / "bin" / f"{arch}-{kernel_version()}"
    binary = out / "lowrank_bench"
    if not binary.exists():
        if arch != platform.machine() and arch not in TOOLCHAINS:
            raise PipelineError(f"no toolchain to build lowrank_bench for {arch} (have: {platform.machine()}, "
                                f"{', '.join(TOOLCHAINS)})")
        build_programs(out, None if arch == platform.machine() else TOOLCHAINS[arch])
    return binary


@dataclass
class Target:
    spec: str
    kind: str            # local, ssh, adb, qemu
    emulated: bool = False
    host: str = ""
    port: int = 22
    serial: str = ""

    def key(self):
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.spec)


def parse_target(spec):
    if spec == "local":
        return Target(spec, "local")
    if spec == "qemu-aarch64":
        return Target(spec, "qemu", emulated=True)
    m = re.fullmatch(r"ssh://([^@/:]+@)?([^@/:]+)(?::(\d+))?", spec)
    if m:
        return Target(spec, "ssh", host=(m.group(1) or "") + m.group(2), port=int(m.group(3) or 22))
    m = re.fullmatch(r"adb(?::(\S+))?", spec)
    if m:
        return Target(spec, "adb", serial=m.group(1) or "")
    raise PipelineError(f"--target {spec!r}: expected local, ssh://user@host[:port], adb[:serial] or qemu-aarch64")


def _run(cmd, target, what, timeout=600, stdin=None):
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=stdin)
    except FileNotFoundError:
        raise PipelineError(f"{target.spec}: {cmd[0]} is not installed") from None
    except OSError as e:  # ENOEXEC: a binary of another architecture
        raise PipelineError(f"{target.spec}: {Path(cmd[0]).name} does not run there ({e.strerror})") from None
    except subprocess.TimeoutExpired:
        raise PipelineError(f"{target.spec}: {what} timed out after {timeout} s") from None
    return res


class Runner:
    """Runs lowrank_bench on a target. Copies the binary once, weights files per call."""

    def __init__(self, target):
        self.t = parse_target(target) if isinstance(target, str) else target
        self.arch = self._arch()
        self.binary = binary_for(self.arch)
        self.remote_bin = self._install() if self.t.kind in ("ssh", "adb") else None

    # -- transport --
    @staticmethod
    def _ssh_opts():
        return ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "StrictHostKeyChecking=accept-new",
                *shlex.split(os.environ.get("PIPELINE_SSH_OPTS", ""))]

    def _ssh(self, remote_cmd):
        return ["ssh", "-p", str(self.t.port), *self._ssh_opts(), self.t.host, remote_cmd]

    def _adb(self, *args):
        return ["adb", *(["-s", self.t.serial] if self.t.serial else []), *args]

    def _shell(self, remote_cmd, what):
        cmd = self._ssh(remote_cmd) if self.t.kind == "ssh" else self._adb("shell", remote_cmd)
        res = _run(cmd, self.t, what)
        if self.t.kind == "ssh" and res.returncode == 255:
            raise PipelineError(f"{self.t.spec}: unreachable ({res.stderr.strip().splitlines()[-1:] or 'ssh failed'})")
        return res

    def _copy(self, local, remote):
        if self.t.kind == "ssh":  # through the shell, so boards without sftp or scp work too
            with open(local, "rb") as f:
                res = _run(self._ssh(f"cat > {shlex.quote(remote)}"), self.t, f"copying {Path(local).name}", stdin=f)
        else:
            res = _run(self._adb("push", str(local), remote), self.t, f"copying {Path(local).name}")
        if res.returncode != 0:
            raise PipelineError(f"{self.t.spec}: copying {Path(local).name} failed ({res.stderr.strip()[:200]})")

    def _arch(self):
        if self.t.kind == "local":
            return platform.machine()
        if self.t.kind == "qemu":
            return "aarch64"
        res = self._shell("uname -m", "uname")
        arch = res.stdout.strip()
        if res.returncode != 0 or not re.fullmatch(r"[A-Za-z0-9_]+", arch):
            raise PipelineError(f"{self.t.spec}: cannot tell its architecture (uname -m said {arch!r})")
        return "aarch64" if arch == "arm64" else arch

    def _install(self):
        base = "/data/local/tmp/lrk" if self.t.kind == "adb" else ".cache/lrk-bench"
        remote_dir = f"{base}/{kernel_version()}"
        remote = f"{remote_dir}/lowrank_bench"
        if self._shell(f"test -x {remote}", "checking the binary").returncode != 0:
            self._shell(f"mkdir -p {remote_dir}", "mkdir")
            self._copy(self.binary, remote)
            self._shell(f"chmod +x {remote}", "chmod")
        return remote

    # -- benchmark --
    def bench(self, args, weights=None):
        """The JSON report of `lowrank_bench ARGS` (plus `--weights FILE` when given) on the target."""
        report = self._run(args, {"--weights": weights} if weights else {})
        try:
            report["us_per_frame"]["median"]
        except (KeyError, TypeError):
            raise PipelineError(f"{self.t.spec}: lowrank_bench returned no latency report (got {report!r:.120})") from None
        return report

    def model(self, model_file, audio_file, reps=5, warmup=1):
        """The JSON report of `lowrank_bench --model` on one utterance: a wav file, or raw float32 samples
        (`.f32`)."""
        flag = "--raw-audio" if Path(audio_file).suffix == ".f32" else "--audio"
        report = self._run(["--reps", reps, "--warmup", warmup], {"--model": model_file, flag: audio_file})
        if not isinstance(report.get("total_ms"), dict) or "text" not in report:
            raise PipelineError(f"{self.t.spec}: lowrank_bench returned no model report (got {report!r:.120})")
        return report

    def _run(self, args, files):
        """lowrank_bench ARGS with each FLAG FILE of `files` (copied to the device first), parsed."""
        args = [str(a) for a in args]
        if self.t.kind in ("local", "qemu"):
            cmd = ([*QEMU] if self.t.kind == "qemu" else []) + [str(self.binary)] + args
            cmd += [str(x) for flag, path in files.items() for x in (flag, path)]
            res = _run(cmd, self.t, "lowrank_bench")
        else:
            remote_args = list(args)
            for flag, path in files.items():
                remote = f"{Path(self.remote_bin).parent}/{flag.strip('-')}-{os.getpid()}{Path(path).suffix}"
                self._copy(path, remote)
                remote_args += [flag, remote]
            res = self._shell(" ".join(shlex.quote(a) for a in [self.remote_bin, *remote_args]), "lowrank_bench")
        if res.returncode != 0:
            msg = (res.stderr.strip() or res.stdout.strip())[:300]
            if "Exec format error" in msg or "cannot execute" in msg:
                raise PipelineError(f"{self.t.spec}: lowrank_bench built for {self.arch} does not run there ({msg})")
            raise PipelineError(f"{self.t.spec}: lowrank_bench failed: {msg}")
        try:
            report = json.loads(res.stdout)
        except json.JSONDecodeError:
            raise PipelineError(f"{self.t.spec}: lowrank_bench returned no latency report "
                                f"(got {res.stdout.strip()[:120]!r})") from None
        report["emulated"] = self.t.emulated
        return report


def temp_weights_path():
    fd, path = tempfile.mkstemp(suffix=".lrkm")
    os.close(fd)
    return Path(path)
