// bn_stats.cu: BatchNorm statistics, pass 1 of 2 -- per-channel partial Welford statistics.
//
// Input x: contiguous (A, C, B). Output part: (3, C, P) accumulation-type partials
// (count, mean, M2) -- P per channel -- that bn_finalize (bn_finalize.cu) merges.
// Splitting each channel over several blocks keeps the GPU full when C is small.
#include "common.cuh"

// Rows layout, grid (C, S), 1-D blocks: P = S; partial (c, s) comes from block (c, s).
template <class T, int VEC>
__global__ void bn_stats_rows(const T* __restrict__ x, acc_t<T>* __restrict__ part,
                              int A, int C, int B) {
  using Acc = acc_t<T>;
  Welford<Acc> w;
  for_each_vec_of_channel<VEC>(A, C, B, [&](long long off) {
    Acc v[VEC];
    load<VEC>(x + off, v);
    w.push(v);
  });
  w = merge_across_x(w);  // over the block: this block's slice of channel c
  if (threadIdx.x == 0) {
    const long long P = gridDim.y, i = static_cast<long long>(blockIdx.x) * P + blockIdx.y;
    part[i] = w.n;
    part[C * P + i] = w.mean;
    part[2 * C * P + i] = w.m2;
  }
}

// Cols layout, grid (ceil(W / VEC / blockDim.x), S), 2-D blocks: every thread keeps VEC
// column accumulators (they share the count: all its columns see the same rows), the block
// merges them over threadIdx.y, and column j = c * B + b of slice s becomes partial
// (c, s * B + b), so P = S * B.
template <class T, int VEC>
__global__ void bn_stats_cols(const T* __restrict__ x, acc_t<T>* __restrict__ part,
                              long long A, int C, int B) {
  using Acc = acc_t<T>;
  const long long W = static_cast<long long>(C) * B;
  Acc n = 0, mean[VEC], m2[VEC];
  for (int k = 0; k < VEC; ++k) mean[k] = m2[k] = 0;
  for_each_row_of_columns<VEC>(A, W, [&](long long, long long off) {
    Acc v[VEC];
    load<VEC>(x + off, v);
    n += Acc(1);
    const Acc r = Acc(1) / n;  // Welford, one division shared by the VEC columns
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const Acc d = v[k] - mean[k];
      mean[k] += d * r;
      m2[k] += d * (v[k] - mean[k]);
    }
  });
  merge_across_y<Acc, VEC>(n, mean, m2);
  const long long col = cols_first_column(VEC);
  if (threadIdx.y == 0 && col < W) {
    const long long P = static_cast<long long>(gridDim.y) * B;
    for (int k = 0; k < VEC; ++k) {
      const long long j = col + k, c = j / B, b = j - c * B;
      const long long i = c * P + static_cast<long long>(blockIdx.y) * B + b;
      part[i] = n;
      part[C * P + i] = mean[k];
      part[2 * C * P + i] = m2[k];
    }
  }
}
