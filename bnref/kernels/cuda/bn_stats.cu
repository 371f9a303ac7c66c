// bn_stats.cu: BatchNorm statistics in one launch -- partial Welford statistics per channel
// and split, merged per channel by the block that finishes last (common.cuh, last_block_done).
//
// Input x: contiguous (A, C, B). Scratch (cached by cupy_bn per plan and stream):
//   part (3, C, P)    accumulation-type partials (count, mean, M2), P per channel;
//   colpart (3, C*B)  column totals (cols layout only);
//   counter           unsigned, zero between launches: C (rows) or gridDim.x + C (cols).
// Outputs, per channel c:
//   mean, var (biased, M2 / m), inv_std = 1 / sqrt(var + eps),
//   params (3, C) = (mean, gamma * inv_std, beta) for bn_normalize.cu,
// and, if update != 0, the running statistics in PyTorch's convention,
//   new = (1 - momentum) * old + momentum * batch, with the unbiased batch variance,
// read from rm_in / rv_in and written to rm_out / rv_out (the same arrays for an update in
// place). Splitting each channel over several blocks keeps the GPU full when C is small.
#include "common.cuh"

#define BN_STATS_OUT(Acc)                                                                     \
  const Acc *__restrict__ gamma, const Acc *__restrict__ beta, Acc eps, Acc *__restrict__ mean, \
      Acc *__restrict__ var, Acc *__restrict__ inv_std, Acc *__restrict__ params, int update,   \
      Acc momentum, const Acc *rm_in, const Acc *rv_in, Acc *rm_out, Acc *rv_out
#define BN_STATS_OUT_ARGS \
  gamma, beta, eps, mean, var, inv_std, params, update, momentum, rm_in, rv_in, rm_out, rv_out

// Channel c's totals w -> its outputs (what a separate finalize kernel used to write).
template <class Acc>
__device__ void bn_finish_stats(int c, int C, const Welford<Acc>& w, BN_STATS_OUT(Acc)) {
  const Acc v = w.m2 / w.n, r = inv_sqrt(v + eps);
  mean[c] = w.mean;
  var[c] = v;
  inv_std[c] = r;
  params[c] = w.mean;
  params[C + c] = gamma[c] * r;
  params[2 * C + c] = beta[c];
  if (update) {  // rm_in may be rm_out: read both before writing
    const Acc rm = rm_in[c], rv = rv_in[c];
    rm_out[c] = (Acc(1) - momentum) * rm + momentum * w.mean;
    rv_out[c] = (Acc(1) - momentum) * rv + momentum * w.m2 / (w.n - Acc(1));
  }
}

// Rows layout, grid (C, S), 1-D blocks: P = S; partial (c, s) comes from block (c, s), and
// the last of channel c's S blocks merges the S partials.
template <class T, int VEC>
__global__ void bn_stats_rows(const T* __restrict__ x, acc_t<T>* part, acc_t<T>* colpart,
                              unsigned* counter, BN_STATS_OUT(acc_t<T>), int A, int C, int B) {
  using Acc = acc_t<T>;
  Welford<Acc> w;
  for_each_vec_of_channel<VEC>(A, C, B, [&](long long off) {
    Acc v[VEC];
    load<VEC>(x + off, v);
    w.push(v);
  });
  w = merge_across_x(w);  // over the block: this block's slice of channel c
  const int c = blockIdx.x;
  const long long P = gridDim.y, CP = static_cast<long long>(C) * P, base = c * P;
  if (threadIdx.x == 0) {
    part[base + blockIdx.y] = w.n;
    part[CP + base + blockIdx.y] = w.mean;
    part[2 * CP + base + blockIdx.y] = w.m2;
  }
  if (!last_block_done(counter + c, gridDim.y)) return;
  Welford<Acc> t;  // the last block of channel c: merge its P partials
  for (long long p = threadIdx.x; p < P; p += blockDim.x)
    t.merge(load_other(part + base + p), load_other(part + CP + base + p),
            load_other(part + 2 * CP + base + p));
  t = merge_across_x(t);
  if (threadIdx.x == 0) bn_finish_stats(c, C, t, BN_STATS_OUT_ARGS);
}

// Cols layout, grid (ceil(W / VEC / blockDim.x), S), 2-D blocks: every thread keeps VEC
// column accumulators (they share the count: all its columns see the same rows), the block
// merges them over threadIdx.y, and column j = c * B + b of slice s becomes partial
// (c, s * B + b), so P = S * B. The last of a column block's S blocks merges each of its
// columns over the S slices (colpart); a channel's B columns lie in one or two column blocks,
// and the later of those merges them (a counter per channel after the column blocks').
template <class T, int VEC>
__global__ void bn_stats_cols(const T* __restrict__ x, acc_t<T>* part, acc_t<T>* colpart,
                              unsigned* counter, BN_STATS_OUT(acc_t<T>), long long A, int C,
                              int B) {
  using Acc = acc_t<T>;
  const long long W = static_cast<long long>(C) * B;
  Acc n = 0, mu[VEC], m2[VEC];
  for (int k = 0; k < VEC; ++k) mu[k] = m2[k] = 0;
  for_each_row_of_columns<VEC>(A, W, [&](long long, long long off) {
    Acc v[VEC];
    load<VEC>(x + off, v);
    n += Acc(1);
    const Acc r = Acc(1) / n;  // Welford, one division shared by the VEC columns
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const Acc d = v[k] - mu[k];
      mu[k] += d * r;
      m2[k] += d * (v[k] - mu[k]);
    }
  });
  merge_across_y<Acc, VEC>(n, mu, m2);
  const long long col = cols_first_column(VEC);
  const long long P = static_cast<long long>(gridDim.y) * B, CP = C * P;
  // partial of column j in slice s
  auto at = [&](long long j, long long s) { return (j / B) * P + s * B + j % B; };
  if (threadIdx.y == 0 && col < W)
    for (int k = 0; k < VEC; ++k) {
      const long long i = at(col + k, blockIdx.y);
      part[i] = n;
      part[CP + i] = mu[k];
      part[2 * CP + i] = m2[k];
    }
  if (!last_block_done(counter + blockIdx.x, gridDim.y)) return;
  // The last block of this column block: its columns' totals over the S slices, thread y
  // taking slices y, y + blockDim.y, ...; the count is shared as above.
  n = 0;
  for (int k = 0; k < VEC; ++k) mu[k] = m2[k] = 0;
  if (col < W)
    for (long long s = threadIdx.y; s < gridDim.y; s += blockDim.y) {
      const Acc nb = load_other(part + at(col, s));
      if (nb == Acc(0)) continue;
      const Acc n_ab = n + nb, w = nb / n_ab;  // Chan's merge, as Welford::merge
      for (int k = 0; k < VEC; ++k) {
        const long long i = at(col + k, s);
        const Acc d = load_other(part + CP + i) - mu[k];
        mu[k] += d * w;
        m2[k] += load_other(part + 2 * CP + i) + d * d * n * w;
      }
      n = n_ab;
    }
  merge_across_y<Acc, VEC>(n, mu, m2);
  if (threadIdx.y == 0 && col < W)
    for (int k = 0; k < VEC; ++k) {
      colpart[col + k] = n;
      colpart[W + col + k] = mu[k];
      colpart[2 * W + col + k] = m2[k];
    }
  // counters after the column blocks': one per channel
  for_each_channel_done<VEC>(counter + gridDim.x, W, B, [&](long long c) {
    Welford<Acc> wc;
    for (int b = 0; b < B; ++b) {
      const long long j = c * B + b;
      wc.merge(load_other(colpart + j), load_other(colpart + W + j),
               load_other(colpart + 2 * W + j));
    }
    bn_finish_stats(static_cast<int>(c), C, wc, BN_STATS_OUT_ARGS);
  });
}
