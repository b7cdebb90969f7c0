// Flash attention forward in CUDA C++: tiled over keys, online softmax, fp32 accumulation.
//
// Layout: q (B, H, Tq, D), k and v (B, KVH, Tk, D), o like q, lse (B, H, Tq) float32; the last dimension contiguous,
// other strides in elements. Grouped-query attention: query head h reads key/value head h / (H / KVH). Causal masking is
// bottom-right aligned (query i sees keys j <= i + Tk - Tq), as with a KV cache. A query with no visible key writes zeros
// and lse = +inf.
//
// One thread block handles ROWS query rows of one (batch, head); each warp owns ROWS / WARPS rows and each lane D / 32
// of a row's elements (q and the output accumulator stay in registers). Key and value tiles of TILE_N rows are staged
// in shared memory once per block and read by every warp. Compiled with nvcc for sm_80 and sm_90a; called through the
// extern "C" launchers at the bottom (ctypes), so it needs no PyTorch headers.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>
#include <stdint.h>

namespace {

constexpr int WARPS = 4;
constexpr int ROWS_PER_WARP = 4;
constexpr int ROWS = WARPS * ROWS_PER_WARP;
constexpr int TILE_N = 64;

template <typename T> __device__ __forceinline__ float to_float(T x);
template <> __device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

struct Params {
  const void *q, *k, *v;
  void *o;
  float *lse;
  int64_t sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot;
  int B, H, KVH, Tq, Tk;
  float scale;
  int causal;
};

template <typename T, int D>
__global__ void __launch_bounds__(WARPS * 32, 1) flash_attn_fwd_kernel(Params p) {
  constexpr int PER_LANE = D / 32;
  __shared__ T k_tile[TILE_N][D];
  __shared__ T v_tile[TILE_N][D];

  const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H, kvh = h / (p.H / p.KVH);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row0 = blockIdx.x * ROWS + warp * ROWS_PER_WARP;
  const T *q = static_cast<const T *>(p.q) + b * p.sqb + h * p.sqh;
  const T *k = static_cast<const T *>(p.k) + b * p.skb + kvh * p.skh;
  const T *v = static_cast<const T *>(p.v) + b * p.svb + kvh * p.svh;
  T *o = static_cast<T *>(p.o) + b * p.sob + h * p.soh;
  const int offset = p.Tk - p.Tq;

  float qr[ROWS_PER_WARP][PER_LANE], acc[ROWS_PER_WARP][PER_LANE], m[ROWS_PER_WARP], l[ROWS_PER_WARP];
#pragma unroll
  for (int r = 0; r < ROWS_PER_WARP; ++r) {
    const int i = row0 + r;
    m[r] = -CUDART_INF_F;
    l[r] = 0.f;
#pragma unroll
    for (int e = 0; e < PER_LANE; ++e) {
      qr[r][e] = i < p.Tq ? to_float(q[i * p.sqt + lane + 32 * e]) * p.scale : 0.f;
      acc[r][e] = 0.f;
    }
  }
  // keys past the block's last query are never visible under causal masking
  int kv_end = p.Tk;
  if (p.causal) kv_end = min(p.Tk, blockIdx.x * ROWS + ROWS + offset);

  for (int n0 = 0; n0 < kv_end; n0 += TILE_N) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < TILE_N * D; idx += WARPS * 32) {
      const int n = idx / D, d = idx % D, j = n0 + n;
      k_tile[n][d] = j < p.Tk ? k[j * p.skt + d] : from_float<T>(0.f);
      v_tile[n][d] = j < p.Tk ? v[j * p.svt + d] : from_float<T>(0.f);
    }
    __syncthreads();
    const int n_end = min(TILE_N, kv_end - n0);
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r) {
      const int i = row0 + r;
      if (i >= p.Tq) continue;  // warp-uniform: every lane of the warp has the same row
      const int last = p.causal ? min(n_end, i + offset - n0 + 1) : n_end;
      for (int n = 0; n < last; ++n) {
        float s = 0.f;
#pragma unroll
        for (int e = 0; e < PER_LANE; ++e) s += qr[r][e] * to_float(k_tile[n][lane + 32 * e]);
        s = warp_sum(s);
        const float m_new = fmaxf(m[r], s);
        const float alpha = __expf(m[r] - m_new), pr = __expf(s - m_new);
        l[r] = l[r] * alpha + pr;
#pragma unroll
        for (int e = 0; e < PER_LANE; ++e) acc[r][e] = acc[r][e] * alpha + pr * to_float(v_tile[n][lane + 32 * e]);
        m[r] = m_new;
      }
    }
  }
#pragma unroll
  for (int r = 0; r < ROWS_PER_WARP; ++r) {
    const int i = row0 + r;
    if (i >= p.Tq) continue;
    const bool empty = l[r] == 0.f;
    const float inv = empty ? 0.f : 1.f / l[r];
#pragma unroll
    for (int e = 0; e < PER_LANE; ++e) o[i * p.sot + lane + 32 * e] = from_float<T>(acc[r][e] * inv);
    if (lane == 0) p.lse[(int64_t)bh * p.Tq + i] = empty ? CUDART_INF_F : m[r] + __logf(l[r]);
  }
}

template <typename T>
int launch(const Params &p, int head_dim, cudaStream_t stream) {
  const dim3 grid((p.Tq + ROWS - 1) / ROWS, p.B * p.H), block(WARPS * 32);
  switch (head_dim) {
    case 64: flash_attn_fwd_kernel<T, 64><<<grid, block, 0, stream>>>(p); break;
    case 128: flash_attn_fwd_kernel<T, 128><<<grid, block, 0, stream>>>(p); break;
    default: return 1;  // unsupported head_dim
  }
  return cudaGetLastError() == cudaSuccess ? 0 : 2;
}

Params make_params(const void *q, const void *k, const void *v, void *o, float *lse, const int64_t *strides, int B, int H,
                   int KVH, int Tq, int Tk, float scale, int causal) {
  Params p{q, k, v, o, lse, strides[0], strides[1], strides[2], strides[3], strides[4], strides[5], strides[6], strides[7],
           strides[8], strides[9], strides[10], strides[11], B, H, KVH, Tq, Tk, scale, causal};
  return p;
}

}  // namespace

// Returns 0 on success, 1 for an unsupported head_dim, 2 for a launch error. `strides`: 12 values, q/k/v/o x (b, h, t).
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
