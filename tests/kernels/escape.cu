// Kernels that try to leave their launch: the CPU executor must report each one, naming
// the thread and block, and leave no process behind. (They do not compile under NVRTC.)
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

extern "C" __global__ void calls_fork(int* out)
{
    if (blockIdx.x == 1 && threadIdx.x == 3) {
        int pid = fork();
        if (pid == 0) {          // only without the sandbox: a child that would linger
            out[1] = getpid();
            sleep(60);
        }
        out[0] = pid;
    }
}

extern "C" __global__ void calls_exit(int* out)
{
    if (blockIdx.x == 2 && threadIdx.x == 5) exit(0);
    out[0] = 1;
}

extern "C" __global__ void calls_quick_exit(int* out)
{
    if (threadIdx.x == 7) _exit(3);
}

extern "C" __global__ void calls_abort(int* out)
{
    if (threadIdx.x == 9) abort();
}

extern "C" __global__ void signals_parent(int* out)
{
    if (blockIdx.x == 3 && threadIdx.x == 1) kill(getppid(), SIGKILL);
}

extern "C" __global__ void signals_group(int* out)
{
    if (threadIdx.x == 2) kill(0, SIGTERM);
}

extern "C" __global__ void calls_system(int* out)
{
    if (threadIdx.x == 1) out[0] = system("sleep 60");
}

// Through a libc function that is not wrapped (tgkill): only the seccomp filter sees it.
extern "C" __global__ void signals_indirectly(int* out, int pid)
{
    if (threadIdx.x == 4) tgkill(pid, pid, SIGTERM);
}
