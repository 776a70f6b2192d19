"""How the grader keeps a submission away from everything else, and how it starts one.

Three levels; `pagedattn_lab.grade --isolation auto` takes the best one that works here
(a probe runs a tiny sandbox first) and warns loudly when it is not the first:

root  the grader runs as root. util-linux's `unshare` puts the submission in new PID,
      mount, network, IPC and UTS namespaces; isolation_init.py, as the namespace's PID 1,
      gives it a private root file system (read-only system directories, Python
      environment and package; a size-limited tmpfs folder of its own; nothing of the
      course's solutions/, the other submissions or the grader's output), runs it as a
      fresh unprivileged uid without capabilities, under resource limits, and exits when
      the notebook ends or at the deadline, which kills every process left in the namespace.
user  the grader is not root but may create user namespaces: the same, inside a user
      namespace; the submission keeps the grader's uid outside (files it could reach would
      be the grader's, which is why the file system view holds nothing writable of
      theirs) and has every capability dropped.
none  no `unshare`, or namespaces refused (macOS, some containers): the submission runs as
      the grader's user in its own process group with resource limits and sandbox.py's
      audit hook. That is a guard against accidents, not against a student who means harm.

Why `unshare` and not bubblewrap or cgroups: util-linux is on every Linux machine and CI
image, bubblewrap is not; cgroups v2 needs a delegated, writable hierarchy, which hybrid
systems and containers rarely give (the PID namespace already guarantees that nothing
outlives the sandbox; memory is bounded per process by RLIMIT_AS and the tmpfs sizes).
"""
from __future__ import annotations

import json
import os
import pwd
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
INIT = Path(__file__).resolve().with_name("isolation_init.py")
LEVELS = ("root", "user", "none")
UID_BASE, UID_SPAN = 1_200_000_000, 100_000_000   # far above any real account
SYSTEM_DIRS = ("/usr", "/etc")
TOP_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
KEPT_ENV = ("PYTHONPATH", "LD_LIBRARY_PATH")
KEPT_ENV_PREFIXES = ("CUDA_", "NVIDIA_", "PAGEDATTN_LAB_CPU_")


@dataclass
class Limits:
    """What one submission may use. memory_mb 0 = no address-space limit (CUDA needs that);
    judge_mb: the heap of its judge, the grader's process that reads its answers (0: none)."""
    memory_mb: int = 4096
    judge_mb: int = 8192
    processes: int = 256
    open_files: int = 512
    file_mb: int = 256
    box_mb: int = 512
    tmp_mb: int = 256


@dataclass
class Level:
    name: str                      # "root", "user" or "none"
    reason: str = ""               # why it is not a better one
    binds: list = field(default_factory=list)      # (source, target) read-only
    symlinks: list = field(default_factory=list)   # (target, link)
    refused: list = field(default_factory=list)    # paths not shared: they hold secrets

    @property
    def isolated(self) -> bool:
        return self.name != "none"


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def secret_paths(inputs=(), outputs=()) -> list[str]:
    """What a sandbox must never see: the course's solutions/, the submissions, the
    grader's output folders, its working folder and home."""
    found = [PACKAGE_DIR.parent / "solutions", Path.cwd(), Path.home(),
             *(Path(p) for p in inputs), *(Path(p).resolve().parent for p in outputs)]
    return sorted({os.path.realpath(p) for p in found})


def compiler_roots(compiler) -> list[str]:
    """The installation folders of `compiler` (a command list): <prefix> for <prefix>/bin/g++
    (its cc1plus, headers and libstdc++ live under <prefix>), else the folder holding it; for
    the path as given and for its target. A GPU image's /opt/gcc/bin/g++ is outside /usr."""
    roots = []
    for path in {os.path.abspath(compiler[0]), os.path.realpath(compiler[0])} if compiler else ():
        folder = os.path.dirname(path)
        root = os.path.dirname(folder) if os.path.basename(folder) == "bin" else folder
        if root != "/":   # /bin/g++: /bin is bound as a top-level folder already
            roots.append(root)
    return sorted(roots)


def file_system_view(secrets, compiler=None) -> tuple[list, list, list]:
    """(binds, symlinks, refused) for the sandbox's root: system directories, the Python
    environment, the package, the compiler (`compiler`, a command list: its installation
    folder), never a folder that holds a secret."""
    candidates, symlinks = list(SYSTEM_DIRS), []
    for top in TOP_LINKS:
        if os.path.islink(top):
            symlinks.append((os.readlink(top), top))
        elif os.path.isdir(top):
            candidates.append(top)
    candidates += [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                   *(p for p in sys.path if p), str(PACKAGE_DIR)]
    candidates += [os.environ[k] for k in ("CUDA_PATH", "CUDA_HOME") if os.environ.get(k)]
    candidates += compiler_roots(compiler)
    if any(Path("/dev").glob("nvidia*")):
        candidates.append("/sys")   # the CUDA driver reads the PCI devices there
    binds, refused = [], []
    for path in candidates:
        path = os.path.abspath(path)
        real = os.path.realpath(path)
        if not os.path.exists(real):
            continue
        if any(_inside(secret, real) or _inside(secret, path) for secret in secrets):
            refused.append(path)
            continue
        for target in {real, path}:
            if not any(_inside(target, t) for _, t in binds):
                binds = [(s, t) for s, t in binds if not _inside(t, target)]
                binds.append((real, target))
    return sorted(binds, key=lambda b: b[1]), symlinks, sorted(set(refused))


def devices() -> list[str]:
    return [d for d in DEVICES if os.path.exists(d)] + sorted(
        str(p) for p in Path("/dev").glob("nvidia*") if p.is_char_device())


# BLAS and OpenMP on one thread: OpenBLAS starts a thread per core (up to 64) at NumPy's
# import, each with its buffer and stack (40 MiB of private writable memory measured: what
# RLIMIT_DATA counts), in every sandbox and judge of a run of `jobs` at once.
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def runner_env(box: str, compiler: list[str] | None) -> dict:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": box, "TMPDIR": f"{box}/tmp",
           "LANG": "C.UTF-8", "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONNOUSERSITE": "1", "XDG_CACHE_HOME": f"{box}/.cache",
           "XDG_CONFIG_HOME": f"{box}/.config", "MPLCONFIGDIR": f"{box}/.config/matplotlib",
           "IPYTHONDIR": f"{box}/.config/ipython", "CUPY_CACHE_DIR": f"{box}/.cache/cupy",
           "PAGEDATTN_LAB_CACHE_DIR": f"{box}/.cache/pagedattn_lab", **ONE_THREAD}
    for key, value in os.environ.items():
        if key in KEPT_ENV or key.startswith(KEPT_ENV_PREFIXES):
            env[key] = value
    if compiler:   # the only compiler the executor may use (see cpu/toolchain.py)
        env["PAGEDATTN_LAB_GRADING_CXX"] = shlex.join(compiler)
    return env


def fresh_uid(taken=()) -> int:
    while True:
        uid = UID_BASE + random.randrange(UID_SPAN)
        if uid in taken:
            continue
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid


def unshare_command(level: str) -> list[str]:
    cmd = [shutil.which("unshare") or "unshare", "--fork", "--pid", "--kill-child", "--mount",
           "--net", "--ipc", "--uts"]
    if level == "user":
        cmd += ["--user", "--map-root-user"]
    return cmd + [sys.executable, "-I", "-S", str(INIT)]


@dataclass
class Sandbox:
    """A started submission: its process (unshare, or the runner itself at level none)."""
    proc: subprocess.Popen
    level: str

    def wait(self, timeout: float) -> dict:
        """What became of it: {"exit": n} / {"signal": n} / {"timeout": True} / {"error": s}."""
        try:
            out, _ = self.proc.communicate(timeout=max(0.1, timeout))
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.communicate()
            return {"timeout": True}
        finally:
            self.kill()   # level none: whatever is left in the process group
        if self.level == "none":
            code = self.proc.returncode
            return {"signal": -code} if code < 0 else {"exit": code}
        lines = (out or b"").decode(errors="replace").strip().splitlines()
        try:
            return json.loads(lines[-1])
        except (IndexError, ValueError):
            return {"error": f"the sandbox ended without a report (exit code "
                             f"{self.proc.returncode})"}

    def kill(self) -> None:
        try:
            if self.level == "none":
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:   # unshare --kill-child: its child, the namespace's PID 1, dies with it
                self.proc.kill()
        except (ProcessLookupError, PermissionError):
            pass


def start(level: Level, *, private: Path, notebook: Path, name: str, channel_fd: int,
          timeout: float, limits: Limits, compiler: list[str] | None, seed_cache: str | None,
          argv: list[str] | None = None, audit: bool | None = None) -> Sandbox:
    """Start the runner for `notebook` (a copy in `private`) in a sandbox of `level`.

    argv: another program in its place (the kernel host, a probe); audit (level none): pass
    it the runner's --audit/--limits/--compiler options, by default only for the runner."""
    box = "/box" if level.isolated else str(private / "box")
    runner = argv or [sys.executable, "-m", "pagedattn_lab.grading.runner", f"{box}/{name}",
                      "--channel-fd", str(channel_fd)]
    env = runner_env(box, compiler)
    rlimits = {"AS": limits.memory_mb << 20 if limits.memory_mb else None,
               "NPROC": limits.processes, "NOFILE": limits.open_files,
               "FSIZE": limits.file_mb << 20, "CPU": int(timeout) + 5, "CORE": 0}
    if not level.isolated:
        return _start_unisolated(private, notebook, name, runner, env, rlimits, compiler,
                                 seed_cache, channel_fd, argv is None if audit is None else audit)
    settings = {"root": str(private / "root"), "binds": level.binds,
                "symlinks": level.symlinks, "devices": devices(),
                "box_mb": limits.box_mb, "tmp_mb": limits.tmp_mb,
                "uid": fresh_uid() if level.name == "root" else None,
                "notebook": str(notebook), "notebook_name": name, "seed_cache": seed_cache,
                "log": str(private / "runner.log"), "argv": runner, "env": env,
                "channel_fd": channel_fd, "rlimits": rlimits, "timeout": timeout}
    (private / "root").mkdir(exist_ok=True)
    with open(private / "init.log", "wb") as log:
        proc = subprocess.Popen(unshare_command(level.name), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log, pass_fds=[channel_fd],
                                start_new_session=True)
    proc.stdin.write((json.dumps(settings) + "\n").encode())
    proc.stdin.close()
    proc.stdin = None   # so that communicate() does not flush it
    return Sandbox(proc, level.name)


def _start_unisolated(private, notebook, name, runner, env, rlimits, compiler, seed_cache,
                      channel_fd, audit) -> Sandbox:
    box = private / "box"
    for sub in ("tmp", ".cache", ".config"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(notebook, box / name)
    if seed_cache:
        shutil.copytree(seed_cache, box / ".cache" / "pagedattn_lab" / "cpu")
    if audit:   # the runner sets the limits (NPROC would count all our processes) and the hook
        limits = {k: v for k, v in rlimits.items() if k != "NPROC" and v is not None}
        runner = runner + ["--audit", str(box), "--limits", json.dumps(limits)] + (
            ["--compiler", json.dumps(compiler)] if compiler else [])
    with open(private / "runner.log", "wb") as log:
        proc = subprocess.Popen(runner, cwd=box, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, pass_fds=[channel_fd],
                                start_new_session=True)
    return Sandbox(proc, "none")


def probe(level: Level, limits: Limits) -> str | None:
    """None if a sandbox of `level` starts and imports the package here, else why not."""
    private = Path(tempfile.mkdtemp(prefix="pagedattn-probe-"))
    try:
        (private / "probe.ipynb").write_text("{}")
        argv = [sys.executable, "-c", "import pagedattn_lab.grading.runner"]
        read_end, write_end = os.pipe()
        try:
            box = start(level, private=private, notebook=private / "probe.ipynb",
                        name="probe.ipynb", channel_fd=write_end, timeout=60, limits=limits,
                        compiler=None, seed_cache=None, argv=argv)
        finally:
            os.close(write_end)
            os.close(read_end)
        result = box.wait(60)
        if result.get("exit") == 0:
            return None
        tail = []
        for log in ("init.log", "runner.log"):
            try:
                tail += (private / log).read_text(errors="replace").strip().splitlines()[-3:]
            except OSError:
                pass
        return f"{result}: " + " | ".join(tail)[-600:]
    except OSError as exc:
        return str(exc)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def choose(requested: str = "auto", *, secrets=(), limits: Limits | None = None,
           compiler=None) -> Level:
    """The isolation level to grade with (see the module docstring); `compiler`: the command
    list of the only compiler graded kernels are built with (its folder is shared)."""
    limits = limits or Limits()
    if requested not in ("auto", *LEVELS):
        raise ValueError(f"isolation: expected auto, root, user or none, got {requested!r}")
    if requested == "none":
        return Level("none", "asked for with --isolation none")
    binds, symlinks, refused = file_system_view(secrets, compiler)
    reasons = []
    wanted = [requested] if requested != "auto" else ["root", "user"]
    for name in wanted:
        if not sys.platform.startswith("linux") or not shutil.which("unshare"):
            reasons.append("util-linux's unshare is not available (Linux only)")
            break
        if name == "root" and os.geteuid() != 0:
            reasons.append("the grader is not root, so it cannot give each submission its "
                           "own uid")
            continue
        if name == "user" and os.geteuid() == 0 and requested == "auto":
            reasons.append("a user namespace of root's maps the submission to root")
            continue   # asked for explicitly (e.g. to test it), it is allowed
        level = Level(name, "; ".join(reasons), binds, symlinks, refused)
        why = probe(level, limits)
        if why is None:
            return level
        reasons.append(f"{name}-level sandbox failed: {why}")
    if requested != "auto":
        raise RuntimeError(f"--isolation {requested} is not possible here: "
                           + "; ".join(reasons))
    return Level("none", "; ".join(reasons))
