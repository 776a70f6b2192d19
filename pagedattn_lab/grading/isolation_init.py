"""PID 1 of a submission's sandbox: build its file system, drop privileges, run, wait.

    unshare --fork --pid --kill-child --mount --net --ipc --uts [--user --map-root-user] \\
        python -I -S isolation_init.py          (settings as one JSON object on stdin)

Started by `isolation.py` in fresh PID, mount, network, IPC and UTS namespaces (and a user
namespace when the grader is not root). Standard library only, so it runs before anything
of the submission's can. It

1. builds a new root on a small tmpfs: read-only, nosuid bind mounts of the system
   directories, the Python environment and the package (never the course's solutions/,
   the other submissions or the grader's output), /dev with a few devices, a fresh /proc
   (this namespace's processes only), a size-limited tmpfs /box holding the notebook, and
   a tmpfs /tmp; then pivot_root into it and detaches the old root;
2. forks the runner: in the child, resource limits (memory, processes, open files, file
   size, CPU), no capabilities, no new privileges, a dedicated uid when the grader is
   root; then exec;
3. waits for the runner, reaping orphans, and exits as soon as the runner has exited (or
   at its own deadline). Being PID 1, its exit makes the kernel kill every process left
   in the namespace: setsid, double forks and daemons cannot outlive it. It prints one
   JSON line: {"exit": code} / {"signal": n} / {"timeout": true} / {"error": text}.
"""
import ctypes
import json
import os
import platform
import resource
import shutil
import signal
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
ST_TO_MS = {1: MS_RDONLY, 2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: MS_NOATIME,
            2048: MS_NODIRATIME, 4096: MS_RELATIME}
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 24, 47, 4
PR_SET_DUMPABLE = 4
RLIMITS = {"AS": "RLIMIT_AS", "NPROC": "RLIMIT_NPROC", "NOFILE": "RLIMIT_NOFILE",
           "FSIZE": "RLIMIT_FSIZE", "CPU": "RLIMIT_CPU", "CORE": "RLIMIT_CORE"}

libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def prctl(option: int, *args: int) -> int:
    values = [ctypes.c_ulong(a) for a in (*args, 0, 0, 0, 0)[:4]]
    return libc.prctl(ctypes.c_int(option), *values)


def mount(source, target, fstype, flags, data=None) -> None:
    enc = (lambda s: s.encode() if s is not None else None)
    _check(libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {source} on {target}")


def bind(source: str, target: str, *, readonly: bool = True, device: bool = False) -> None:
    """Bind `source` at `target` (created), read-only and nosuid unless it is a device."""
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    mount(source, target, None, MS_BIND | (0 if device else MS_REC))
    if device:
        return
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | (MS_RDONLY if readonly else 0)
    have = os.statvfs(target).f_flag
    for st, ms in ST_TO_MS.items():   # keep what the source mount has (a user namespace
        if have & st and ms != MS_RDONLY:   # may not clear those flags)
            flags |= ms
    mount(None, target, None, flags)


def build_root(cfg: dict) -> None:
    root = cfg["root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=0755")
    # The scratch folders first, the read-only binds after: a repository or environment
    # under /tmp (a CI clone, say) must stay visible above the sandbox's own empty /tmp.
    owner = f",uid={cfg['uid']},gid={cfg['uid']}" if cfg.get("uid") else ""
    for path, options in (("/tmp", f"size={cfg['tmp_mb']}m,mode=1777"),
                          ("/box", f"size={cfg['box_mb']}m,mode=0700{owner}")):
        os.makedirs(root + path, exist_ok=True)
        mount("tmpfs", root + path, "tmpfs", MS_NOSUID | MS_NODEV, options)
    for source, target in cfg["binds"]:
        bind(source, root + target)
    for target, link in cfg["symlinks"]:
        os.makedirs(os.path.dirname(root + link), exist_ok=True)
        os.symlink(target, root + link)
    dev = root + "/dev"
    os.makedirs(dev)
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=0755")
    for node in cfg["devices"]:
        bind(node, root + node, device=True)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")
    os.makedirs(dev + "/shm")
    mount("tmpfs", dev + "/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=1777")
    os.makedirs(root + "/proc")
    try:
        mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError as exc:   # e.g. a container that masks parts of /proc, as a non-root user
        print(f"warning: no /proc in the sandbox ({exc})", file=sys.stderr)
    box = root + "/box"
    shutil.copyfile(cfg["notebook"], f"{box}/{cfg['notebook_name']}")
    if cfg.get("seed_cache"):
        shutil.copytree(cfg["seed_cache"], f"{box}/.cache/pagedattn_lab/cpu")
    for sub in ("tmp", ".cache", ".config"):
        os.makedirs(f"{box}/{sub}", exist_ok=True)
    if cfg.get("uid"):
        for dirpath, dirnames, filenames in os.walk(box):
            for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
                os.lchown(name, cfg["uid"], cfg["uid"])
    _pivot(root)


def _pivot(root: str) -> None:
    old = root + "/.old-root"
    os.makedirs(old)
    number = PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(f"pivot_root: unknown system call number on {platform.machine()}")
    _check(libc.syscall(number, root.encode(), old.encode()), "pivot_root")
    os.chdir("/")
    _check(libc.umount2(b"/.old-root", MNT_DETACH), "detach the old root")
    os.rmdir("/.old-root")
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def drop_privileges(cfg: dict) -> None:
    """In the runner's process, before exec: limits, no capabilities, maybe a new uid."""
    for key, value in cfg["rlimits"].items():
        if value is not None:
            limit = getattr(resource, RLIMITS[key])
            resource.setrlimit(limit, (int(value), int(value)))
    last = int(open("/proc/sys/kernel/cap_last_cap").read()) if os.path.exists(
        "/proc/sys/kernel/cap_last_cap") else 63
    for cap in range(last + 1):
        prctl(PR_CAPBSET_DROP, cap)   # so that exec as uid 0 gets no capabilities
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    uid = cfg.get("uid")
    if uid:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    _check(prctl(PR_SET_NO_NEW_PRIVS, 1), "no_new_privs")


def run_child(cfg: dict, log_fd: int) -> int:
    pid = os.fork()
    if pid:
        return pid
    try:
        os.setsid()
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        keep = cfg["channel_fd"]
        os.closerange(3, keep)
        os.closerange(keep + 1, 65536)
        os.set_inheritable(keep, True)
        drop_privileges(cfg)
        os.chdir("/box")
        os.umask(0o077)
        os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])
    except BaseException as exc:  # noqa: BLE001 - report and never return into the parent's code
        os.write(2, f"sandbox: could not start the runner: {exc}\n".encode())
    os._exit(127)


def main() -> int:
    cfg = json.loads(sys.stdin.readline())
    report = sys.stdout
    prctl(PR_SET_DUMPABLE, 0)   # nothing in the sandbox may trace or read this process

    def finish(result: dict) -> None:
        report.write(json.dumps(result) + "\n")
        report.flush()
        os._exit(0)   # PID 1 exits: the kernel kills whatever is left in the namespace

    signal.signal(signal.SIGALRM, lambda *_: finish({"timeout": True}))
    signal.alarm(max(1, int(cfg["timeout"]) + 1))
    try:
        log_fd = os.open(cfg["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        build_root(cfg)
    except OSError as exc:
        finish({"error": f"could not build the sandbox: {exc}"})
    child = run_child(cfg, log_fd)
    os.close(log_fd)
    os.close(cfg["channel_fd"])
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            finish({"error": "the runner vanished"})
        if pid == child:
            if os.WIFSIGNALED(status):
                finish({"signal": os.WTERMSIG(status)})
            finish({"exit": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    main()
