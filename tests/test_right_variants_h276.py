"""Right answers written otherwise than the solutions, for workbooks 00-13: each passes its
check with no hint, or, where the prompt's own rule refuses it, is told that rule.

Told wrongly before (right values, refused by a rule the prompt states, with a hint that
named another mistake):
- decode_partition reading 4 consecutive dims per lane as a float4 (lanes past head_dim / 4
  idle): over the prompt's per-lane budget of 2 x ceil(head_dim / 32) cache values per token
  when head_dim < 128, but told "some lanes read whole rows", which no lane did;
- block_sum through a reduction tree in shared memory, or a shared total zeroed and then
  added to with atomicAdd: over the prompt's one shared-memory write per thread, but told
  "only one lane of each warp stores", which the atomic one already did. The hint now states
  the rule and names both ways past it.
"""
import numpy as np
import pytest

from tests.check_helpers import (KERNEL_CELLS, assert_passes_without_hint, kernel_mutant,
                                 run_check, with_solution_body)


def _hints(result):
    return " ".join(" ".join(c.hint.split()) for c in result.cases if not c.passed)


# --- told wrongly before: decode_partition with float4 loads -------------------------------

# lane i holds dims 4i .. 4i + 3: a right answer, vLLM-style vector loads, but at head_dim 32
# lane 0 reads 8 cache values per token where the prompt allows 2
PARTITION_FLOAT4 = """
    int seq_len = seq_lens[b];
    int start = part * part_len;
    if (start >= seq_len) return;
    int end = min(seq_len, start + part_len);
    int kv_head = h / (num_heads / num_kv_heads);
    const float* q_row = q + ((long long)b * num_heads + h) * head_dim;
    int d0 = 4 * lane;
    bool on = d0 < head_dim;
    float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
    float4 qv = on ? *reinterpret_cast<const float4*>(q_row + d0) : zero;
    float4 acc = zero;
    float m = NEG_INF, l = 0.0f;
    for (int t = start; t < end; ++t) {
        long long slot = (long long)block_tables[(long long)b * max_pages + t / page_size]
                         * page_size + t % page_size;
        long long row = (slot * num_kv_heads + kv_head) * head_dim;
        float dot = 0.0f;
        if (on) {
            float4 k4 = *reinterpret_cast<const float4*>(k_cache + row + d0);
            dot = qv.x * k4.x + qv.y * k4.y + qv.z * k4.z + qv.w * k4.w;
        }
        for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        dot *= scale;
        float mn = fmaxf(m, dot), c = expf(m - mn), w = expf(dot - mn);
        l = l * c + w;
        float4 v4 = on ? *reinterpret_cast<const float4*>(v_cache + row + d0) : zero;
        acc.x = acc.x * c + w * v4.x; acc.y = acc.y * c + w * v4.y;
        acc.z = acc.z * c + w * v4.z; acc.w = acc.w * c + w * v4.w;
        m = mn;
    }
    long long so = ((long long)b * num_heads + h) * max_parts + part;
    if (on) *reinterpret_cast<float4*>(part_out + so * head_dim + d0) =
        make_float4(acc.x / l, acc.y / l, acc.z / l, acc.w / l);
    if (lane == 0) { part_ml[so * 2] = m; part_ml[so * 2 + 1] = l; }
"""


def test_float4_loads_are_told_the_per_lane_share_not_whole_rows():
    source = with_solution_body("06_decode_kernel.ipynb", "SOURCE_PARTITION", PARTITION_FLOAT4)
    result, printed = run_check("decode_partition", source, device="cpu")
    assert result.status == "failed", printed
    first = next(c for c in result.cases if not c.passed)
    assert "right values" in first.message or "correct" in first.message, printed
    hint = _hints(result)
    assert "more than its share" in hint and "float4" in hint, printed
    assert "ceil(head_dim / 32) = 1 value of the K row" in hint, printed
    assert "the reads are not shared out" not in hint, printed


# --- told wrongly before: block_sum writing shared memory more than once -------------------

BLOCK_SUM_TREE = """
    __shared__ float buf[256];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    buf[threadIdx.x] = i < n ? a[i] : 0.0f;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = buf[0];
"""

BLOCK_SUM_ATOMIC = """
    __shared__ float total;
    if (threadIdx.x == 0) total = 0.0f;
    __syncthreads();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = i < n ? a[i] : 0.0f;
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x % 32 == 0) atomicAdd(&total, v);
    __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = total;
"""


@pytest.mark.parametrize("body", [BLOCK_SUM_TREE, BLOCK_SUM_ATOMIC], ids=["tree", "atomic"])
def test_block_sums_writing_shared_twice_are_told_the_rule(body):
    source = with_solution_body("03_cuda_onramp.ipynb", "SOURCE_BLOCK_SUM", body)
    result, printed = run_check("puzzle_block_sum", source, device="cpu")
    assert result.status == "failed", printed
    assert "the puzzle lets a thread write shared memory once" in _hints(result), printed


# --- kernels that already pass ---------------------------------------------------------------

GATHER_HEAD_LOOP = """
    __shared__ int page_sh;
    if (threadIdx.x == 0)
        page_sh = t < seq_lens[b] ? block_tables[b * max_pages + t / page_size] : -1;
    __syncthreads();
    int page = page_sh;
    for (int hd = 0; hd < num_kv_heads; ++hd) {
        for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
            long long o = (((long long)b * max_len + t) * num_kv_heads + hd) * head_dim + d;
            if (page < 0) { k_out[o] = 0.0f; v_out[o] = 0.0f; continue; }
            long long s = (((long long)page * page_size + t % page_size) * num_kv_heads + hd)
                          * head_dim + d;
            k_out[o] = __ldg(&k_cache[s]);
            v_out[o] = __ldg(&v_cache[s]);
        }
    }
"""

SHARED_WARPSIZE_STRIDE = """
    for (int d = threadIdx.x; d < head_dim; d += warpSize) q_shared[d] = q[d];
    __syncthreads();
    int key = threadIdx.x + blockIdx.x * blockDim.x;
    if (key < n) {
        const float* kr = &k[key * head_dim];
        float acc0 = 0.0f, acc1 = 0.0f;            // two accumulators
        int d = 0;
        for (; d + 1 < head_dim; d += 2) {
            acc0 += q_shared[d] * kr[d];
            acc1 += q_shared[d + 1] * kr[d + 1];
        }
        if (d < head_dim) acc0 += q_shared[d] * kr[d];
        scores[key] = acc0 + acc1;
    }
"""

WARP_SUM_LAST_LANE = """
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = (i < n) ? a[i] : 0.f;
    v += __shfl_xor_sync(0xffffffffu, v, 16);
    v += __shfl_xor_sync(0xffffffffu, v, 8);
    v += __shfl_xor_sync(0xffffffffu, v, 4);
    v += __shfl_xor_sync(0xffffffffu, v, 2);
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    // no __shared__ memory and no atomicAdd: lane 31 stores
    if (threadIdx.x % 32 == 31 && i - 31 < n) out[i / 32] = v;
"""

# the max first, then the sum and the weighted values: two passes over the keys
NAIVE_TWO_PASS = """
    if (t >= seq_lens[b]) { for (int d = 0; d < head_dim; ++d) out[row + d] = 0.0f; return; }
    int kvh = h / (num_heads / num_kv_heads);
    float mx = NEG_INF;
    for (int j = 0; j <= t; ++j) {
        int pg = block_tables[b * max_pages + j / page_size];
        const float* kr = k_cache + (((long long)pg * page_size + j % page_size) * num_kv_heads
                                     + kvh) * head_dim;
        float s = 0.0f;
        for (int d = 0; d < head_dim; ++d) s += q[row + d] * kr[d];
        mx = fmaxf(mx, s * scale);
    }
    float acc[MAX_HEAD_DIM];
    for (int d = 0; d < head_dim; ++d) acc[d] = 0.0f;
    float den = 0.0f;
    for (int j = 0; j <= t; ++j) {
        int pg = block_tables[b * max_pages + j / page_size];
        long long base = (((long long)pg * page_size + j % page_size) * num_kv_heads + kvh)
                         * head_dim;
        float s = 0.0f;
        for (int d = 0; d < head_dim; ++d) s += q[row + d] * k_cache[base + d];
        float p = expf(s * scale - mx);
        den += p;
        for (int d = 0; d < head_dim; ++d) acc[d] += p * v_cache[base + d];
    }
    for (int d = 0; d < head_dim; ++d) out[row + d] = acc[d] * (1.0f / den);
"""

# each thread copies whole key rows into the tiles; a barrier before each load and after
TILED_ROW_PER_THREAD = """
    bool live = t < seq_len;
    int kvh = h / (num_heads / num_kv_heads);
    float qv[MAX_HEAD_DIM], o[MAX_HEAD_DIM];
    for (int d = 0; d < head_dim; ++d) { qv[d] = live ? q[row + d] : 0.0f; o[d] = 0.0f; }
    float m = NEG_INF, l = 0.0f;
    int tile_first = blockIdx.x * blockDim.x;
    int keys_needed = tile_first < seq_len ? min(seq_len, tile_first + (int)blockDim.x) : 0;
    for (int p = 0; p * page_size < keys_needed; ++p) {
        int page = block_tables[(long long)b * max_pages + p];
        int n_keys = min(page_size, keys_needed - p * page_size);
        __syncthreads();
        for (int j = threadIdx.x; j < n_keys; j += blockDim.x) {
            long long src = (((long long)page * page_size + j) * num_kv_heads + kvh) * head_dim;
            for (int d = 0; d < head_dim; ++d) {
                k_tile[j * head_dim + d] = k_cache[src + d];
                v_tile[j * head_dim + d] = v_cache[src + d];
            }
        }
        __syncthreads();
        for (int j = 0; live && j < n_keys && p * page_size + j <= t; ++j) {
            float s = 0.0f;
            for (int d = 0; d < head_dim; ++d) s += qv[d] * k_tile[j * head_dim + d];
            s *= scale;
            float mn = fmaxf(m, s), c = expf(m - mn), w = expf(s - mn);
            l = l * c + w;
            for (int d = 0; d < head_dim; ++d) o[d] = o[d] * c + w * v_tile[j * head_dim + d];
            m = mn;
        }
    }
    if (t < max_len)
        for (int d = 0; d < head_dim; ++d) out[row + d] = live ? o[d] / l : 0.0f;
"""

# the partitions folded in one pass, each dim's running (m, l, o) rescaled as it goes
MERGE_ONE_PASS = """
    long long r = (long long)b * num_heads + h;
    int parts = (seq_lens[b] - 1) / part_len + 1;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float M = NEG_INF, L = 0.0f, O = 0.0f;
        for (int p = 0; p < parts; ++p) {
            float mp = part_ml[(r * max_parts + p) * 2], lp = part_ml[(r * max_parts + p) * 2 + 1];
            float mn = fmaxf(M, mp);
            float a = expf(M - mn), c = lp * expf(mp - mn);
            O = O * a + c * part_out[(r * max_parts + p) * head_dim + d];
            L = L * a + c;
            M = mn;
        }
        out[r * head_dim + d] = O / L;
    }
"""

# K stored transposed ([d][c]) and loaded as a row-major B
TC_K_TRANSPOSED = """
    int group = num_heads / num_kv_heads;
    for (int i = lane; i < 16 * head_dim; i += 32) {
        int r = i / head_dim, d = i % head_dim;
        q_tile[i] = r < group ? q[(long long)(kv_head * group + r) * head_dim + d]
                              : __float2half(0.0f);
        int t = 16 * tile + r;
        __half val = __float2half(0.0f);
        if (t < seq_len) {
            long long slot = (long long)block_table[t / page_size] * page_size + t % page_size;
            val = k_cache[(slot * num_kv_heads + kv_head) * head_dim + d];
        }
        k_tile[d * 16 + r] = val;
    }
    __syncwarp();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> bfr;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> s;
    wmma::fill_fragment(s, 0.0f);
    for (int k0 = 0; k0 < head_dim; k0 += 16) {
        wmma::load_matrix_sync(a, q_tile + k0, head_dim);
        wmma::load_matrix_sync(bfr, k_tile + k0 * 16, 16);
        wmma::mma_sync(s, a, bfr, s);
    }
    wmma::store_matrix_sync(scores + ((long long)kv_head * gridDim.x + tile) * 256, s, 16,
                            wmma::mem_row_major);
"""

# lane 0 finds the scale alone and shuffles it to the warp; codes by __float2int_rn
QUANT_LANE0_SCALE = """
    long long slot = slot_mapping[token];
    if (slot < 0) return;
    const float* x = k + ((long long)token * num_kv_heads + head) * head_dim;
    float s = 0.0f;
    if (lane == 0) {
        if (per_token) {
            float mx = 0.0f;
            for (int d = 0; d < head_dim; ++d) mx = fmaxf(mx, fabsf(x[d]));
            s = mx == 0.0f ? 1.0f : mx / 127.0f;
            k_scale[slot * num_kv_heads + head] = s;
        } else s = k_scale[head];
    }
    s = __shfl_sync(0xffffffffu, s, 0);
    for (int d = lane; d < head_dim; d += 32) {
        int c = isnan(x[d]) ? 0 : __float2int_rn(x[d] / s);
        c = c > 127 ? 127 : (c < -127 ? -127 : c);
        k_cache[(slot * num_kv_heads + head) * head_dim + d] = static_cast<signed char>(c);
    }
"""

# the online softmax with a branch on the new max (no rescale when the max stays)
DEQUANT_BRANCH = """
        float ks = per_token ? k_scale[slot * num_kv_heads + kv_head] : k_scale[kv_head];
        float vs = per_token ? v_scale[slot * num_kv_heads + kv_head] : v_scale[kv_head];
        float s = 0.0f;
        for (int d = 0; d < head_dim; ++d) s += q_row[d] * (float)k_cache[row + d];
        s = s * ks * scale;
        if (s > m) {
            float c = expf(m - s);
            for (int d = 0; d < head_dim; ++d) acc[d] = acc[d] * c + vs * (float)v_cache[row + d];
            l = l * c + 1.0f;
            m = s;
        } else {
            float w = expf(s - m);
            for (int d = 0; d < head_dim; ++d) acc[d] += w * vs * (float)v_cache[row + d];
            l += w;
        }
"""

PARTITION_HELPER = [
    ('extern "C" __global__ void decode_partition(',
     "__device__ __forceinline__ float warp_allreduce(float x) {\n"
     "    #pragma unroll\n"
     "    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);\n"
     "    return x;\n}\n"
     'extern "C" __global__ void decode_partition('),
    ("        for (int offset = 16; offset > 0; offset /= 2)     // every lane gets the full dot\n"
     "            dot += __shfl_xor_sync(0xffffffffu, dot, offset);",
     "        dot = warp_allreduce(dot);"),
    ("dot += my_q[i] * k_cache[row + d];", "dot += my_q[i] * __ldg(&k_cache[row + d]);"),
]

NAIVE_RESTRICT_PRINTF = [
    ("const float* q, const float* k_cache,",
     "const float* __restrict__ q, const float* __restrict__ k_cache,"),
    ("    if (t >= seq_lens[b]) {                          // padding row: zeros",
     '    if (t == 0 && h == 0 && b == 0) printf("debug: seq_len %d\\n", seq_lens[0]);\n'
     "    if (t >= seq_lens[b]) {"),
    ("float rescale = expf(running_max - new_max);",
     "float rescale = exp2f((running_max - new_max) * 1.4426950408889634f);"),
]

# (task, a right body between the solution markers, or edits (old, new) of the solution)
KERNELS = [
    ("gather_kernel", GATHER_HEAD_LOOP),
    ("puzzle_shared", SHARED_WARPSIZE_STRIDE),
    ("puzzle_warp_sum", WARP_SUM_LAST_LANE),
    ("naive_kernel", NAIVE_TWO_PASS),
    ("naive_kernel", NAIVE_RESTRICT_PRINTF),
    ("tiled_kernel", TILED_ROW_PER_THREAD),
    ("decode_partition", PARTITION_HELPER),
    ("decode_merge", MERGE_ONE_PASS),
    ("tc_tile_scores", TC_K_TRANSPOSED),
    ("quantize_write", QUANT_LANE0_SCALE),
    ("dequant_decode", DEQUANT_BRANCH),
]


@pytest.mark.parametrize("task, change", KERNELS,
                         ids=["gather head loop", "shared warpSize stride", "warp sum lane 31",
                              "naive two pass", "naive restrict printf exp2f",
                              "tiled row per thread", "partition helper ldg",
                              "merge one pass", "tc K transposed", "quantize lane 0 scale",
                              "dequant branch"])
def test_kernel_variants_pass(task, change):
    source = kernel_mutant(task, change) if isinstance(change, list) else \
        with_solution_body(*KERNEL_CELLS[task], change)
    assert_passes_without_hint(task, source, device="cpu")


# --- Python answers that already pass --------------------------------------------------------

def pages_by_divmod_printing(seq_len, page_size):
    q, r = divmod(seq_len, page_size)
    print("debug", q, r)
    return q + (r > 0)


def reserved_as_float32(seq_lens, max_len):
    if not len(seq_lens):
        return 0.0
    return np.float32(1.0 - np.sum(seq_lens) / (len(seq_lens) * max_len))


def paged_by_slack(seq_lens, page_size):
    seq_lens = np.asarray(seq_lens, dtype=np.int64)
    slack = (-seq_lens) % page_size
    allocated = seq_lens.sum() + slack.sum()
    return float(slack.sum() / allocated) if allocated else 0.0


def offset_by_ravel(slot, kv_head, dim, num_kv_heads, head_dim):
    return int(np.ravel_multi_index((slot, kv_head, dim), (slot + 1, num_kv_heads, head_dim)))


def gather_by_outer_slots(k_cache, row, seq_len):
    _, ps, h, d = k_cache.shape
    pages = np.asarray(row[:-(-seq_len // ps)], dtype=np.int64)
    slots = (pages[:, None] * ps + np.arange(ps)[None, :]).ravel()[:seq_len]
    return np.ascontiguousarray(k_cache.reshape(-1, h, d)[slots])


class SoftmaxKeepingAllScores:
    def __init__(self, head_dim):
        self.scores, self.values = [], []
        self.m, self.l, self.acc = -np.inf, 0.0, np.zeros(head_dim)

    def update(self, score, value):
        self.scores.append(float(score))
        self.values.append(np.array(value, dtype=float))
        self.m = max(self.scores)
        w = np.exp(np.array(self.scores) - self.m)
        self.l, self.acc = float(w.sum()), w @ np.array(self.values)

    def result(self):
        return self.acc / self.l


def tile_pages_as_ndarray(seq_len, q_start, tile_q, page_size):
    if q_start >= seq_len:
        return np.arange(0)
    return np.arange(-(-min(seq_len, q_start + tile_q) // page_size))


def merge_one_after_another(m, l, o):
    big_m, big_l, out = m[0], l[0], o[0].astype(np.float64)
    for i in range(1, len(m)):
        new_m = max(big_m, m[i])
        a, b = big_l * np.exp(big_m - new_m), l[i] * np.exp(m[i] - new_m)
        out = (a * out + b * o[i]) / (a + b)
        big_l, big_m = a + b, new_m
    return out


def choose_page_size_in_numpy(seq_lens, candidates, max_waste):
    s = np.array(seq_lens, dtype=np.int64)
    c = np.array(sorted(candidates))
    allocated = np.array([((s + p - 1) // p * p).sum() for p in c])
    waste = np.where(allocated > 0, 1 - s.sum() / np.maximum(allocated, 1), 0.0)
    ok = c[waste <= max_waste]
    return int(ok.max()) if ok.size else int(c.min())


def rows_by_loop(q, kv_head, group):
    out = np.zeros((-(-group // 16), 16, q.shape[1]), dtype=q.dtype)
    for r in range(group):
        out[r // 16, r % 16, :] = q[kv_head * group + r]
    return out


def mask_by_tril(q_len, seq_len):
    return np.tril(np.ones((q_len, seq_len), dtype=bool), k=seq_len - q_len)


def tiles_as_generator(qo_indptr, seq_lens, rows, kv_tile):
    for b in range(len(seq_lens)):
        q_len = int(qo_indptr[b + 1] - qo_indptr[b])
        for first in range(0, q_len, rows):
            keys = int(seq_lens[b]) - q_len + min(first + rows, q_len)
            yield (b, first, -(-keys // kv_tile))


def gather_heads_by_split(gathered, world_size, batch, num_heads, head_dim):
    parts = np.split(gathered.reshape(world_size * batch, num_heads // world_size, head_dim),
                     world_size)
    return np.concatenate(parts, axis=1)


PYTHON = [
    ("pages_needed", pages_by_divmod_printing),
    ("reserved_waste", reserved_as_float32),
    ("paged_waste", paged_by_slack),
    ("kv_offset", offset_by_ravel),
    ("gather_numpy", gather_by_outer_slots),
    ("online_softmax", SoftmaxKeepingAllScores),
    ("tile_pages", tile_pages_as_ndarray),
    ("merge_partitions", merge_one_after_another),
    ("choose_page_size", choose_page_size_in_numpy),
    ("group_rows", rows_by_loop),
    ("chunk_mask", mask_by_tril),
    ("tile_work", tiles_as_generator),
    ("gather_heads", gather_heads_by_split),
]


@pytest.mark.parametrize("task, impl", PYTHON, ids=[t for t, _ in PYTHON])
def test_python_variants_pass(task, impl):
    assert_passes_without_hint(task, impl)
