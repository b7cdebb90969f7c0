// Flash attention forward in CUDA C++ on tensor cores (sm_80 and later): mma.sync m16n8k16, ldmatrix, cp.async double
// buffering, fp32 accumulation.
//
// Layout: q (B, H, Tq, D), k and v (B, KVH, Tk, D), o like q, lse (B, H, Tq) float32; the last dimension contiguous,
// other strides in elements, multiples of 8 (16-byte rows for cp.async). D is 64 or 128. Grouped-query attention: query
// head h reads key/value head h / (H / KVH). Causal masking is bottom-right aligned (query i sees keys j <= i + Tk - Tq),
// as with a KV cache. lse is in base 2 (log2 of the sum of exp2 of the scores in log2 units), the Triton kernel's
// convention; a query with no visible key writes zeros and lse = +inf.
//
// One thread block: 64 query rows of one (batch, head), 4 warps of 16 rows each. The block's query tile is copied to
// shared memory once, and each warp keeps its rows as mma A-fragments in registers. Key and value tiles of 64 rows go
// through two shared-memory buffers: while the warps compute on one, cp.async fills the other. Per key tile, each warp:
//   S = Q K^T     (ldmatrix of K rows gives the "col" B-fragments directly)
//   online softmax on S in registers (row max and sum over the 4 lanes that share a row)
//   O += P V      (the accumulator layout of S is the A-fragment layout of P: no trip through shared memory;
//                  V's B-fragments come from ldmatrix.trans)
// Shared-memory rows are padded by 8 elements so that ldmatrix's 8 row addresses fall in different banks.
// Compiled with nvcc (make kernels); called through the extern "C" launchers at the bottom (ctypes), so it needs no
// PyTorch headers.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>
#include <stdint.h>

namespace {

constexpr int WARPS = 4;
constexpr int BLOCK_M = 16 * WARPS;   // query rows per block
constexpr int BLOCK_N = 64;           // keys per tile
constexpr int PAD = 8;                // elements of padding per shared-memory row

struct Params {
  const void *q, *k, *v;
  void *o;
  float *lse;
  int64_t sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot;
  int B, H, KVH, Tq, Tk;
  float scale_log2;   // softmax scale x log2(e): scores in base-2 units
  int causal;
};

__device__ __forceinline__ uint32_t smem_u32(const void *p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

// 16 bytes global -> shared, asynchronous; src_bytes = 0 fills the 16 bytes with zeros (rows past the end)
__device__ __forceinline__ void cp_async_16(void *dst, const void *src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)));
}

template <typename T> struct Mma;
template <> struct Mma<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
  }
};
template <> struct Mma<__half> {
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
  }
};

// A 64-row tile (rows row0.. of a (rows, D) matrix with row stride `stride`) into padded shared memory, by all threads
template <typename T, int D>
__device__ __forceinline__ void load_tile(T *dst, const T *src, int64_t stride, int row0, int rows, int tid) {
  constexpr int CHUNKS = D / 8;   // 16-byte chunks per row
#pragma unroll
  for (int c = tid; c < 64 * CHUNKS; c += WARPS * 32) {
    const int r = c / CHUNKS, col = (c % CHUNKS) * 8;
    const bool valid = row0 + r < rows;
    cp_async_16(dst + r * (D + PAD) + col, src + (valid ? (int64_t)(row0 + r) * stride : 0) + col, valid);
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(WARPS * 32, 1) flash_attn_fwd_mma(const Params p) {
  extern __shared__ __align__(16) unsigned char smem[];
  T *sQ = reinterpret_cast<T *>(smem);
  T *sK = sQ + BLOCK_M * (D + PAD);        // two buffers of BLOCK_N rows
  T *sV = sK + 2 * BLOCK_N * (D + PAD);    // two buffers of BLOCK_N rows
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int m0 = blockIdx.x * BLOCK_M, h = blockIdx.y, b = blockIdx.z, kvh = h / (p.H / p.KVH);
  const T *q = static_cast<const T *>(p.q) + b * p.sqb + h * p.sqh;
  const T *k = static_cast<const T *>(p.k) + b * p.skb + kvh * p.skh;
  const T *v = static_cast<const T *>(p.v) + b * p.svb + kvh * p.svh;
  const int shift = p.Tk - p.Tq;            // bottom-right causal alignment
  const int kv_end = p.causal ? min(p.Tk, m0 + BLOCK_M + shift) : p.Tk;
  const int n_tiles = kv_end > 0 ? (kv_end + BLOCK_N - 1) / BLOCK_N : 0;

  load_tile<T, D>(sQ, q, p.sqt, m0, p.Tq, tid);
  if (n_tiles > 0) { load_tile<T, D>(sK, k, p.skt, 0, p.Tk, tid); load_tile<T, D>(sV, v, p.svt, 0, p.Tk, tid); }
  cp_async_commit();

  // this thread's two rows in the m16n8 accumulator layout: lane / 4 and lane / 4 + 8 of its warp's 16
  const int row_a = m0 + warp * 16 + lane / 4, row_b = row_a + 8;
  uint32_t qf[D / 16][4];
  float acc[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  float max_a = -CUDART_INF_F, max_b = -CUDART_INF_F, sum_a = 0.f, sum_b = 0.f;   // sums: this lane's share

  for (int tile = 0; tile < n_tiles; ++tile) {
    const int buf = tile & 1, n0 = tile * BLOCK_N;
    if (tile + 1 < n_tiles) {   // prefetch the next tile into the other buffer while this one is computed on
      load_tile<T, D>(sK + (buf ^ 1) * BLOCK_N * (D + PAD), k, p.skt, n0 + BLOCK_N, p.Tk, tid);
      load_tile<T, D>(sV + (buf ^ 1) * BLOCK_N * (D + PAD), v, p.svt, n0 + BLOCK_N, p.Tk, tid);
    }
    cp_async_commit();
    cp_async_wait<1>();          // everything but the prefetch just issued has landed
    __syncthreads();
    if (tile == 0) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        ldmatrix_x4(qf[kk], sQ + (warp * 16 + lane % 16) * (D + PAD) + kk * 16 + (lane / 16) * 8);
    }
    const T *kt = sK + buf * BLOCK_N * (D + PAD), *vt = sV + buf * BLOCK_N * (D + PAD);

    float s[BLOCK_N / 8][4];
#pragma unroll
    for (int j = 0; j < BLOCK_N / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int j = 0; j < BLOCK_N / 8; j += 2) {   // two key columns of 8 per ldmatrix.x4
        uint32_t kf[4];
        ldmatrix_x4(kf, kt + (j * 8 + lane % 8 + (lane / 16) * 8) * (D + PAD) + kk * 16 + ((lane / 8) % 2) * 8);
        Mma<T>::run(s[j], qf[kk], kf[0], kf[1]);
        Mma<T>::run(s[j + 1], qf[kk], kf[2], kf[3]);
      }
    }
    // scores in base-2 units; mask only the tiles that reach past the keys or the diagonal
    const bool masked = n0 + BLOCK_N > p.Tk || (p.causal && n0 + BLOCK_N - 1 > m0 + shift);
    float tile_max_a = -CUDART_INF_F, tile_max_b = -CUDART_INF_F;
#pragma unroll
    for (int j = 0; j < BLOCK_N / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[j][e] * p.scale_log2;
        if (masked) {
          const int key = n0 + j * 8 + 2 * (lane % 4) + (e & 1), row = e < 2 ? row_a : row_b;
          if (key >= p.Tk || (p.causal && key > row + shift)) x = -CUDART_INF_F;
        }
        s[j][e] = x;
      }
      tile_max_a = fmaxf(tile_max_a, fmaxf(s[j][0], s[j][1]));
      tile_max_b = fmaxf(tile_max_b, fmaxf(s[j][2], s[j][3]));
    }
#pragma unroll
    for (int offset = 1; offset < 4; offset <<= 1) {   // the 4 lanes holding a row
      tile_max_a = fmaxf(tile_max_a, __shfl_xor_sync(0xffffffffu, tile_max_a, offset));
      tile_max_b = fmaxf(tile_max_b, __shfl_xor_sync(0xffffffffu, tile_max_b, offset));
    }
    const float new_a = fmaxf(max_a, tile_max_a), new_b = fmaxf(max_b, tile_max_b);
    const float safe_a = new_a == -CUDART_INF_F ? 0.f : new_a, safe_b = new_b == -CUDART_INF_F ? 0.f : new_b;
    const float alpha_a = exp2f(max_a - safe_a), alpha_b = exp2f(max_b - safe_b);
    max_a = new_a; max_b = new_b;
    sum_a *= alpha_a; sum_b *= alpha_b;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) { acc[i][0] *= alpha_a; acc[i][1] *= alpha_a; acc[i][2] *= alpha_b; acc[i][3] *= alpha_b; }
#pragma unroll
    for (int j = 0; j < BLOCK_N / 8; ++j) {
      s[j][0] = exp2f(s[j][0] - safe_a); s[j][1] = exp2f(s[j][1] - safe_a);
      s[j][2] = exp2f(s[j][2] - safe_b); s[j][3] = exp2f(s[j][3] - safe_b);
      sum_a += s[j][0] + s[j][1]; sum_b += s[j][2] + s[j][3];
    }
    // O += P V: P's accumulator fragments, two key columns of 8 at a time, are the A-fragment of a 16-key step
#pragma unroll
    for (int kk = 0; kk < BLOCK_N / 16; ++kk) {
      const uint32_t pa[4] = {Mma<T>::pack(s[2 * kk][0], s[2 * kk][1]), Mma<T>::pack(s[2 * kk][2], s[2 * kk][3]),
                              Mma<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]), Mma<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dn = 0; dn < D / 8; dn += 2) {   // two head-dim columns of 8 per ldmatrix.x4.trans
        uint32_t vf[4];
        ldmatrix_x4_trans(vf, vt + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * (D + PAD) + dn * 8 + (lane / 16) * 8);
        Mma<T>::run(acc[dn], pa, vf[0], vf[1]);
        Mma<T>::run(acc[dn + 1], pa, vf[2], vf[3]);
      }
    }
    __syncthreads();   // every warp is done with this buffer before the next iteration's prefetch refills it
  }
  cp_async_wait<0>();

#pragma unroll
  for (int offset = 1; offset < 4; offset <<= 1) {
    sum_a += __shfl_xor_sync(0xffffffffu, sum_a, offset);
    sum_b += __shfl_xor_sync(0xffffffffu, sum_b, offset);
  }
  const float inv_a = sum_a > 0.f ? 1.f / sum_a : 0.f, inv_b = sum_b > 0.f ? 1.f / sum_b : 0.f;
  T *o = static_cast<T *>(p.o) + b * p.sob + h * p.soh;
#pragma unroll
  for (int i = 0; i < D / 8; ++i) {
    const int col = i * 8 + 2 * (lane % 4);
    if (row_a < p.Tq) *reinterpret_cast<uint32_t *>(o + (int64_t)row_a * p.sot + col) = Mma<T>::pack(acc[i][0] * inv_a, acc[i][1] * inv_a);
    if (row_b < p.Tq) *reinterpret_cast<uint32_t *>(o + (int64_t)row_b * p.sot + col) = Mma<T>::pack(acc[i][2] * inv_b, acc[i][3] * inv_b);
  }
  if (lane % 4 == 0) {
    float *lse = p.lse + ((int64_t)b * p.H + h) * p.Tq;
    if (row_a < p.Tq) lse[row_a] = sum_a > 0.f ? max_a + log2f(sum_a) : CUDART_INF_F;
    if (row_b < p.Tq) lse[row_b] = sum_b > 0.f ? max_b + log2f(sum_b) : CUDART_INF_F;
  }
}

template <typename T, int D> int launch_d(const Params &p, cudaStream_t stream) {
  const int smem = (BLOCK_M + 4 * BLOCK_N) * (D + PAD) * (int)sizeof(T);   // query tile + two key and two value buffers
  if (cudaFuncSetAttribute(flash_attn_fwd_mma<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) != cudaSuccess) return 2;
  const dim3 grid((p.Tq + BLOCK_M - 1) / BLOCK_M, p.H, p.B);
  flash_attn_fwd_mma<T, D><<<grid, WARPS * 32, smem, stream>>>(p);
  return cudaGetLastError() == cudaSuccess ? 0 : 2;
}

template <typename T> int launch(const Params &p, int head_dim, cudaStream_t stream) {
  const int64_t strides[] = {p.sqb, p.sqh, p.sqt, p.skb, p.skh, p.skt, p.svb, p.svh, p.svt, p.sob, p.soh, p.sot};
  for (int64_t s : strides) if (s % 8) return 3;                       // 16-byte rows for cp.async
  for (const void *ptr : {p.q, p.k, p.v, (const void *)p.o}) if (reinterpret_cast<uintptr_t>(ptr) % 16) return 3;
  if (p.B > 65535 || p.H > 65535 || p.KVH <= 0 || p.H % p.KVH) return 4;
  if (head_dim == 64) return launch_d<T, 64>(p, stream);
  if (head_dim == 128) return launch_d<T, 128>(p, stream);
  return 1;
}

Params make_params(const void *q, const void *k, const void *v, void *o, float *lse, const int64_t *s, int B, int H, int KVH,
                   int Tq, int Tk, float scale, int causal) {
  return Params{q, k, v, o, lse, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], s[10], s[11],
                B, H, KVH, Tq, Tk, scale * 1.4426950408889634f, causal};
}

}  // namespace

// Status: 0 ok, 1 head_dim not 64 or 128, 2 launch error, 3 a stride or pointer not 16-byte aligned, 4 bad shape.
extern "C" int llmlab_flash_attn_fwd_f16(const void *q, const void *k, const void *v, void *o, float *lse, const int64_t *strides,
                                         int B, int H, int KVH, int Tq, int Tk, int head_dim, float scale, int causal,
                                         void *stream) {
  return launch<__half>(make_params(q, k, v, o, lse, strides, B, H, KVH, Tq, Tk, scale, causal), head_dim,
                        static_cast<cudaStream_t>(stream));
}

extern "C" int llmlab_flash_attn_fwd_bf16(const void *q, const void *k, const void *v, void *o, float *lse, const int64_t *strides,
                                          int B, int H, int KVH, int Tq, int Tk, int head_dim, float scale, int causal,
                                          void *stream) {
  return launch<__nv_bfloat16>(make_params(q, k, v, o, lse, strides, B, H, KVH, Tq, Tk, scale, causal), head_dim,
                               static_cast<cudaStream_t>(stream));
}
