// common.cuh: what every bnref kernel shares.
//
//   * 16-bit storage types and their conversions to the accumulation type,
//   * vector loads and stores (16 bytes at a time where the data allow it),
//   * Welford/Chan merging of (count, mean, M2) partials and plain partial sums,
//   * reductions across the threads of a block,
//   * the two ways a (A, C, B) tensor is walked ("rows" and "cols"; see README.md).
//
// Self-contained on purpose: no CUDA header is included. CuPy compiles these files with NVRTC
// at run time, and cuda_bf16.h is not redistributable, so it is not always where NVRTC looks.
// Half and bfloat16 are 16-bit storage types here; arithmetic is done in float.
#ifndef BNREF_COMMON_CUH
#define BNREF_COMMON_CUH

// ---- storage types --------------------------------------------------------------------------
// Bit-compatible with numpy.float16 and ml_dtypes.bfloat16 (CuPy arrays pass raw pointers).
struct bnref_half { unsigned short bits; };
struct bnref_bfloat16 { unsigned short bits; };

// Accumulate in float for 16- and 32-bit inputs, in double for double.
template <class T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <class T> using acc_t = typename AccOf<T>::type;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(bnref_half v) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));  // exact
  return f;
}
__device__ __forceinline__ float to_acc(bnref_bfloat16 v) {
  return __uint_as_float(static_cast<unsigned>(v.bits) << 16);  // bfloat16 = a float's top half
}

template <class T> __device__ T from_acc(acc_t<T> v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <> __device__ __forceinline__ bnref_half from_acc<bnref_half>(float v) {
  bnref_half h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(v));  // round to nearest even
  return h;
}
template <> __device__ __forceinline__ bnref_bfloat16 from_acc<bnref_bfloat16>(float v) {
  // Round to nearest even by hand (cvt.rn.bf16.f32 needs sm_80; this works everywhere).
  unsigned u = __float_as_uint(v);
  bnref_bfloat16 b;
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it a (quiet) NaN
    b.bits = static_cast<unsigned short>((u >> 16) | 0x0040u);
    return b;
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  b.bits = static_cast<unsigned short>(u >> 16);
  return b;
}

__device__ __forceinline__ float inv_sqrt(float v) { return 1.0f / sqrtf(v); }
__device__ __forceinline__ double inv_sqrt(double v) { return 1.0 / sqrt(v); }

// ---- vector loads and stores ----------------------------------------------------------------
// VEC values in one instruction (16 bytes for VEC = 16 / sizeof(T)); the caller guarantees
// that the address is a multiple of sizeof(T) * VEC.
template <class T, int VEC> struct alignas(sizeof(T) * VEC) Pack { T v[VEC]; };

template <int VEC, class T>
__device__ __forceinline__ void load(const T* p, acc_t<T> (&out)[VEC]) {
  const Pack<T, VEC> pk = *reinterpret_cast<const Pack<T, VEC>*>(p);
#pragma unroll
  for (int k = 0; k < VEC; ++k) out[k] = to_acc(pk.v[k]);
}

template <int VEC, class T>
__device__ __forceinline__ void store(T* p, const acc_t<T> (&in)[VEC]) {
  Pack<T, VEC> pk;
#pragma unroll
  for (int k = 0; k < VEC; ++k) pk.v[k] = from_acc<T>(in[k]);
  *reinterpret_cast<Pack<T, VEC>*>(p) = pk;
}

// ---- Welford / Chan -------------------------------------------------------------------------
// A partial: n values with mean `mean` and sum of squared deviations `m2` (variance = m2 / n).
// Partials merge exactly (Chan et al. 1979), in any order and at any level: thread, warp,
// block, grid. Nothing ever forms E[x^2] - E[x]^2, so no catastrophic cancellation.
template <class A> struct Welford {
  A n = 0, mean = 0, m2 = 0;

  __device__ __forceinline__ void merge(A nb, A mean_b, A m2_b) {
    if (nb == A(0)) return;
    const A n_ab = n + nb, w = nb / n_ab, d = mean_b - mean;
    mean += d * w;
    m2 += m2_b + d * d * n * w;  // n * nb / n_ab * d^2
    n = n_ab;
  }
  __device__ __forceinline__ void merge(const Welford& o) { merge(o.n, o.mean, o.m2); }

  // VEC values loaded together: exact two-pass statistics in registers, then one merge
  // (one division per VEC values instead of one per value).
  template <int VEC> __device__ __forceinline__ void push(const A (&v)[VEC]) {
    A s = 0;
#pragma unroll
    for (int k = 0; k < VEC; ++k) s += v[k];
    const A mean_v = s / A(VEC);
    A q = 0;
#pragma unroll
    for (int k = 0; k < VEC; ++k) q += (v[k] - mean_v) * (v[k] - mean_v);
    merge(A(VEC), mean_v, q);
  }
};

// Merge across a warp; every lane gets lane 0's result (so all lanes agree bit for bit).
template <class A> __device__ __forceinline__ Welford<A> warp_merge(Welford<A> w) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const A nb = __shfl_down_sync(0xffffffffu, w.n, off);
    const A mb = __shfl_down_sync(0xffffffffu, w.mean, off);
    const A qb = __shfl_down_sync(0xffffffffu, w.m2, off);
    w.merge(nb, mb, qb);
  }
  w.n = __shfl_sync(0xffffffffu, w.n, 0);
  w.mean = __shfl_sync(0xffffffffu, w.mean, 0);
  w.m2 = __shfl_sync(0xffffffffu, w.m2, 0);
  return w;
}

// Merge across the blockDim.x threads that share a threadIdx.y; all of them get the same
// result. blockDim.x is a multiple of 32 and the block has at most 1024 threads. Every thread
// of the block must call this (it synchronises).
template <class A> __device__ Welford<A> merge_across_x(Welford<A> w) {
  __shared__ A sh[3][32];
  w = warp_merge(w);
  const int warps_per_row = blockDim.x / 32;
  if (warps_per_row == 1) return w;
  const int warp = (threadIdx.y * blockDim.x + threadIdx.x) / 32;
  __syncthreads();  // sh may still be read by an earlier call
  if (threadIdx.x % 32 == 0) {
    sh[0][warp] = w.n;
    sh[1][warp] = w.mean;
    sh[2][warp] = w.m2;
  }
  __syncthreads();
  Welford<A> r;
  const int first = threadIdx.y * warps_per_row;
  for (int i = first; i < first + warps_per_row; ++i) r.merge(sh[0][i], sh[1][i], sh[2][i]);
  return r;
}

// N running sums per thread (the backward passes need sum(dy) and sum(dy * x_hat)).
template <class A, int N> struct Sums { A v[N]; };

template <class A, int N> __device__ __forceinline__ Sums<A, N> warp_sum(Sums<A, N> s) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1)
#pragma unroll
    for (int i = 0; i < N; ++i) s.v[i] += __shfl_down_sync(0xffffffffu, s.v[i], off);
#pragma unroll
  for (int i = 0; i < N; ++i) s.v[i] = __shfl_sync(0xffffffffu, s.v[i], 0);
  return s;
}

// Sum across the blockDim.x threads that share a threadIdx.y (same rules as merge_across_x).
template <class A, int N> __device__ Sums<A, N> sum_across_x(Sums<A, N> s) {
  __shared__ A sh[N][32];
  s = warp_sum(s);
  const int warps_per_row = blockDim.x / 32;
  if (warps_per_row == 1) return s;
  const int warp = (threadIdx.y * blockDim.x + threadIdx.x) / 32;
  __syncthreads();
  if (threadIdx.x % 32 == 0)
    for (int i = 0; i < N; ++i) sh[i][warp] = s.v[i];
  __syncthreads();
  Sums<A, N> r;
  const int first = threadIdx.y * warps_per_row;
  for (int i = 0; i < N; ++i) {
    r.v[i] = 0;
    for (int j = first; j < first + warps_per_row; ++j) r.v[i] += sh[i][j];
  }
  return r;
}

// ---- walking a (A, C, B) tensor -------------------------------------------------------------
// "rows" layout (B large, e.g. NCHW): channel c's values are A contiguous runs of B values at
// offsets (a * C + c) * B. Grid (C, S): block (c, s) owns the s-th of S equal slices of the
// A * B / VEC vectors of channel c; consecutive threads read consecutive vectors (coalesced).
// Calls f(offset of the first of VEC values). Needs B % VEC == 0 and A * B < 2^31.
// The (run a, vector r within the run) of a thread's next vector is stepped incrementally
// (one compare per step) rather than divided out per vector: an integer division is tens of
// instructions. Unrolled by 4 so that several independent loads can be in flight per thread.
template <int VEC, class F>
__device__ __forceinline__ void for_each_vec_of_channel(int A, int C, int B, F&& f) {
  const int c = blockIdx.x;
  const unsigned per_row = static_cast<unsigned>(B / VEC);
  const unsigned total = static_cast<unsigned>(A) * per_row;
  const unsigned chunk = (total + gridDim.y - 1) / gridDim.y;
  const unsigned begin = blockIdx.y * chunk;
  const unsigned end = total < begin + chunk ? total : begin + chunk;
  const unsigned first = begin + threadIdx.x;
  if (first >= end) return;
  // v = a * per_row + r, and v + blockDim.x = (a + step_a) * per_row + r + step_r (+ a carry)
  const unsigned step_a = blockDim.x / per_row, step_r = blockDim.x % per_row;
  const unsigned a = first / per_row;  // the only divisions
  unsigned r = first - a * per_row;
  const long long run = static_cast<long long>(C) * B;  // offset from run a to run a + 1
  long long base = (static_cast<long long>(a) * C + c) * B;  // run a of channel c
#pragma unroll 4
  for (unsigned v = first; v < end; v += blockDim.x) {
    f(base + static_cast<long long>(r) * VEC);
    r += step_r;
    base += step_a * run;
    if (r >= per_row) {
      r -= per_row;
      base += run;
    }
  }
}

// "cols" layout (B small, e.g. (N, C) or channels-last): the tensor is an (A, W = C * B)
// matrix whose column j belongs to channel j / B. Grid (ceil(W / VEC / blockDim.x), S):
// thread x of block (bx, s) owns the VEC columns starting at cols_first_column() and visits
// rows threadIdx.y, threadIdx.y + blockDim.y, ... of the s-th of S slices of the A rows.
// Calls f(row, offset of the first of its VEC values in that row). Needs W % VEC == 0.
__device__ __forceinline__ long long cols_first_column(int VEC) {
  return (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
}

template <int VEC, class F>
__device__ __forceinline__ void for_each_row_of_columns(long long A, long long W, F&& f) {
  const long long col = cols_first_column(VEC);
  if (col >= W) return;
  const long long chunk = (A + gridDim.y - 1) / gridDim.y;
  const long long begin = blockIdx.y * chunk;
  const long long end = A < begin + chunk ? A : begin + chunk;
#pragma unroll 4  // several rows' loads in flight per thread
  for (long long a = begin + threadIdx.y; a < end; a += blockDim.y) f(a, a * W + col);
}

// In the cols layout the threads of one column differ in threadIdx.y: fold their partials
// with a tree over threadIdx.y (blockDim.y a power of two, blockDim.x * blockDim.y <= 256).
// Afterwards the threads with threadIdx.y == 0 hold the column totals.
template <class A, int VEC>
__device__ void merge_across_y(A& n, A (&mean)[VEC], A (&m2)[VEC]) {
  __shared__ A sh_n[256], sh_mean[256 * VEC], sh_m2[256 * VEC];
  const int t = threadIdx.y * blockDim.x + threadIdx.x;
  for (int stride = blockDim.y / 2; stride > 0; stride /= 2) {
    if (threadIdx.y >= stride && threadIdx.y < 2 * stride) {  // upper half hands over ...
      sh_n[t] = n;
      for (int k = 0; k < VEC; ++k) {
        sh_mean[t * VEC + k] = mean[k];
        sh_m2[t * VEC + k] = m2[k];
      }
    }
    __syncthreads();
    if (threadIdx.y < stride) {  // ... lower half merges
      const int o = t + stride * blockDim.x;
      const A nb = sh_n[o];
      if (nb != A(0)) {
        const A n_ab = n + nb, w = nb / n_ab;
        for (int k = 0; k < VEC; ++k) {
          const A d = sh_mean[o * VEC + k] - mean[k];
          mean[k] += d * w;
          m2[k] += sh_m2[o * VEC + k] + d * d * n * w;
        }
        n = n_ab;
      }
    }
    __syncthreads();
  }
}

template <class A, int N>
__device__ void sum_across_y(A (&v)[N]) {
  __shared__ A sh[256 * N];
  const int t = threadIdx.y * blockDim.x + threadIdx.x;
  for (int stride = blockDim.y / 2; stride > 0; stride /= 2) {
    if (threadIdx.y >= stride && threadIdx.y < 2 * stride)
      for (int k = 0; k < N; ++k) sh[t * N + k] = v[k];
    __syncthreads();
    if (threadIdx.y < stride)
      for (int k = 0; k < N; ++k) v[k] += sh[(t + stride * blockDim.x) * N + k];
    __syncthreads();
  }
}

// ---- "last block done": finishing a reduction in the launch that computes it -----------------
// The S blocks that share a counter (one channel's in the rows layout, one column block's in
// the cols layout) each write their partial, then count themselves in; the block that arrives
// last sees every partial and finishes the reduction in the same launch, which saves the
// separate finalize launch (PyTorch's channels-last BatchNorm kernels do the same). Its
// thread 0 also sets the counter back to 0, so the next launch (the counters live in cached
// scratch, zeroed once) starts from 0: every block has counted itself by then.
// Every thread of the block must call this (it synchronises). True in the last block only.
__device__ __forceinline__ bool last_block_done(unsigned* counter, unsigned blocks) {
  __shared__ int is_last;
  __threadfence();  // this block's partials reach device scope before it is counted
  __syncthreads();  // ... for all of its threads
  if (threadIdx.x == 0 && threadIdx.y == 0) {
    const unsigned before = atomicAdd(counter, 1u);
    is_last = before == blocks - 1;
    if (is_last) *counter = 0u;  // all `blocks` have counted: reset for the next launch
  }
  __syncthreads();
  const bool last = is_last != 0;
  __syncthreads();  // is_last is read by every thread before a later call can write it
  if (last) __threadfence();  // order the partials' reads after the count
  return last;
}

// The second level of a cols-layout "last block done" reduction. A channel's B < 16 columns lie
// in one or two column blocks, each finished by its own last block (last_block_done above).
// Every thread of such a last block calls this after the block has written its column totals:
// the block counts itself in on each channel whose columns it holds (one thread per channel,
// on that channel's counter in per_channel, zero between launches), and f(c) runs for each
// channel whose other column block, if any, has counted already, so that all of c's column
// totals are written. Those counters are reset here too, for the next launch.
template <int VEC, class F>
__device__ __forceinline__ void for_each_channel_done(unsigned* per_channel, long long W, int B,
                                                      F&& f) {
  __threadfence();  // the column totals reach device scope before their channels are counted
  __syncthreads();
  const long long Wb = static_cast<long long>(blockDim.x) * VEC;  // columns per column block
  const long long lo = blockIdx.x * Wb, hi = (W < lo + Wb ? W : lo + Wb) - 1;
  const int t = threadIdx.y * blockDim.x + threadIdx.x, threads = blockDim.x * blockDim.y;
  for (long long c = lo / B + t; c <= hi / B; c += threads) {
    const unsigned blocks = static_cast<unsigned>((c * B + B - 1) / Wb - (c * B) / Wb + 1);
    if (atomicAdd(per_channel + c, 1u) != blocks - 1) continue;  // its other block finishes it
    per_channel[c] = 0u;  // both have counted: reset for the next launch
    __threadfence();      // order the column totals' reads after the count
    f(c);
  }
}

// Partials written by other blocks of this launch: read through volatile so that no stale
// cached copy can be used (L1 is not coherent across multiprocessors).
template <class A> __device__ __forceinline__ A load_other(const A* p) {
  return *static_cast<const volatile A*>(p);
}

#endif  // BNREF_COMMON_CUH
