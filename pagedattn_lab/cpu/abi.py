"""ctypes mirror of runtime.h (pal_config, pal_result, pal_ctl) and the library's functions."""
from __future__ import annotations

import ctypes as C

ABI_VERSION = 8
MAX_THREADS = 1024
MAX_WORKERS = 32
OUT_CAP = 1 << 20
MSG_CAP = 1024

(OK, FAULT, DEADLOCK, WARP, ASSERT, TRAP, INTERNAL, STOPPED, RACE, SYSCALL, BOUNDS,
 SHIFT, OBJSIZE) = range(13)
(REGION_UNKNOWN, REGION_STACK, REGION_DYN_SHARED, REGION_STATIC_SHARED,
 REGION_PAST_ARRAY) = range(5)
INSTR_COUNT, INSTR_RACE = 1, 2
VAR_SHIM = 2   # pal_config.vars: the shim's state, writable, not counted (runtime.h)
NCOUNT, NBUFSTAT = 8, 8   # uint32 counters per thread, uint64 counters per buffer
RACE_WAW, RACE_RAW, RACE_WAR = 1, 2, 3
T_RUN, T_BARRIER, T_WARP, T_EXITED = range(4)
OP_NAMES = {0: "__syncthreads()", 1: "__shfl_sync", 2: "__shfl_up_sync", 3: "__shfl_down_sync",
            4: "__shfl_xor_sync", 5: "__ballot_sync", 6: "__any_sync", 7: "__all_sync",
            8: "__syncwarp", 9: "wmma::load_matrix_sync", 10: "wmma::store_matrix_sync",
            11: "wmma::mma_sync", 12: "ldmatrix_x1", 13: "ldmatrix_x2", 14: "ldmatrix_x4",
            15: "ldmatrix_x1_trans", 16: "ldmatrix_x2_trans", 17: "ldmatrix_x4_trans",
            18: "mma_m16n8k16", 19: "mma_m16n8k16_bf16", 20: "movmatrix_trans",
            21: "mma_m16n8k32_e4m3", 22: "mma_m16n8k32_s8", 23: "__match_*_sync",
            24: "__reduce_*_sync"}
# Warp-wide collectives (WMMA, kernels/mma_ptx.cuh): no mask, all 32 lanes take part.
WARP_WIDE_OPS = frozenset(range(9, 23))


class Config(C.Structure):
    _fields_ = [
        ("entry", C.c_void_p),
        ("args", C.c_void_p),
        ("grid", C.c_uint32 * 3),
        ("block", C.c_uint32 * 3),
        ("shared_mem", C.c_uint64),
        ("stack_bytes", C.c_uint64),
        ("nworkers", C.c_int32),
        ("checked", C.c_int32),
        ("poison", C.c_int32),
        ("timeout_s", C.c_int32),
        ("instrument", C.c_uint32),
        ("nranges", C.c_uint32),
        ("ranges", C.c_void_p),
        ("counts", C.c_void_p),
        ("bufstats", C.c_void_p),
        ("written", C.c_void_p),
        ("nvars", C.c_uint32),
        ("vars", C.c_void_p),
        ("last_first", C.c_int32),
        ("vars_known", C.c_int32),
    ]


class Result(C.Structure):
    _fields_ = [
        ("status", C.c_int32),
        ("signo", C.c_int32),
        ("sicode", C.c_int32),
        ("is_write", C.c_int32),
        ("addr", C.c_uint64),
        ("region", C.c_int32),
        ("region_thread", C.c_int32),
        ("has_thread", C.c_int32),
        ("line", C.c_int32),
        ("block", C.c_uint32 * 3),
        ("thread", C.c_uint32 * 3),
        ("block_linear", C.c_uint64),
        ("warp", C.c_uint32),
        ("mask", C.c_uint32),
        ("bad_lanes", C.c_uint32),
        ("op", C.c_uint32),
        ("nthreads", C.c_int32),
        ("pad0", C.c_int32),
        ("tstate", C.c_uint8 * MAX_THREADS),
        ("top", C.c_uint8 * MAX_THREADS),
        ("tline", C.c_int32 * MAX_THREADS),
        ("tmask", C.c_uint32 * MAX_THREADS),
        ("race_kind", C.c_int32),
        ("other_thread", C.c_int32),
        ("offset", C.c_uint64),
        ("pc", C.c_uint64),
        ("other_pc", C.c_uint64),
        ("access_size", C.c_int32),
        ("other_atomic", C.c_int32),
        ("run_thread", C.c_int32),
        ("pad1", C.c_int32),
        ("run_block", C.c_uint64),
        ("msg", C.c_char * MSG_CAP),
    ]


class Ctl(C.Structure):
    _fields_ = [
        ("next_block", C.c_int64),
        ("abort", C.c_int32),
        ("nworkers", C.c_int32),
        ("out_len", C.c_int64),
        ("blocks_done", C.c_int64),
        ("out_truncated", C.c_int32),
        ("pad0", C.c_int32),
        ("res", Result * MAX_WORKERS),
        ("out", C.c_char * OUT_CAP),
    ]


def bind(lib: C.CDLL) -> C.CDLL:
    """Declare the runtime's exported functions on a loaded kernel library; check the ABI."""
    u64, vp, i32 = C.c_uint64, C.c_void_p, C.c_int
    sigs = {
        "pal_abi_version": (i32, []),
        "pal_sizeof_config": (u64, []),
        "pal_sizeof_result": (u64, []),
        "pal_sizeof_ctl": (u64, []),
        "pal_fiber_kind": (C.c_char_p, []),
        "pal_buffer_alloc": (vp, [u64, u64, u64, C.POINTER(u64), C.POINTER(u64)]),
        "pal_buffer_free": (None, [u64, u64]),
        "pal_launch_begin": (vp, [C.POINTER(Config)]),
        "pal_launch_wait": (i32, [vp, i32]),
        "pal_launch_kill": (None, [vp]),
        "pal_launch_interrupt": (None, [vp]),
        "pal_launch_ctl": (C.POINTER(Ctl), [vp]),
        "pal_launch_nworkers": (i32, [vp]),
        "pal_launch_worker_status": (i32, [vp, i32]),
        "pal_decode_status": (i32, [i32, C.POINTER(i32)]),
        "pal_launch_end": (None, [vp]),
    }
    for name, (res, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = argtypes
    if lib.pal_abi_version() != ABI_VERSION or lib.pal_sizeof_config() != C.sizeof(Config) or \
            lib.pal_sizeof_result() != C.sizeof(Result) or lib.pal_sizeof_ctl() != C.sizeof(Ctl):
        raise RuntimeError("the CPU executor's runtime and its Python side disagree on the ABI; "
                           "reinstall pagedattn_lab or clear the kernel cache")
    return lib
