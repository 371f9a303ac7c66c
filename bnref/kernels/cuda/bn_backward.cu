// bn_backward.cu: BatchNorm backward in two launches.
//
//   1. bn_grad_rows / bn_grad_cols: per-channel partial sums of dy and dy * (x - mean),
//      walking the tensor like bn_stats.cu (part (2, C, P), colpart (2, C * B), counters);
//      the last block of each channel (common.cuh, last_block_done) adds the P partials and
//      writes
//        dbeta  = sum(dy),  dgamma = inv_std * sum(dy * (x - mean)) = sum(dy * x_hat),
//        coef (4, C) = (mean, scale = gamma * inv_std, dbeta / m, inv_std * dgamma / m).
//   2. bn_dx_rows / bn_dx_cols:
//        dx = gamma * inv_std / m * (m * dy - dbeta - x_hat * dgamma)
//           = scale * (dy - dbeta / m - (x - mean) * inv_std * dgamma / m).
// x_hat is recomputed from x (never stored), as in the NumPy reference.
#include "common.cuh"

#define BN_GRAD_OUT(Acc)                                                                     \
  const Acc *__restrict__ inv_std, const Acc *__restrict__ gamma, Acc m, Acc *__restrict__ dgamma, \
      Acc *__restrict__ dbeta, Acc *__restrict__ coef
#define BN_GRAD_OUT_ARGS inv_std, gamma, m, dgamma, dbeta, coef

// Channel c's sums -> its outputs (what a separate finalize kernel used to write).
template <class Acc>
__device__ void bn_finish_grad(int c, int C, Acc sum_dy, Acc sum_dy_xmu, const Acc* mean,
                               BN_GRAD_OUT(Acc)) {
  const Acc r = inv_std[c], db = sum_dy, dg = r * sum_dy_xmu;
  dbeta[c] = db;
  dgamma[c] = dg;
  coef[c] = mean[c];
  coef[C + c] = gamma[c] * r;
  coef[2 * C + c] = db / m;
  coef[3 * C + c] = r * dg / m;
}

template <class T, int VEC>
__global__ void bn_grad_rows(const T* __restrict__ dy, const T* __restrict__ x,
                             const acc_t<T>* __restrict__ mean, acc_t<T>* part,
                             acc_t<T>* colpart, unsigned* counter, BN_GRAD_OUT(acc_t<T>),
                             int A, int C, int B) {
  using Acc = acc_t<T>;
  const int c = blockIdx.x;
  const Acc mu = mean[c];
  Sums<Acc, 2> s = {{0, 0}};
  for_each_vec_of_channel<VEC>(A, C, B, [&](long long off) {
    Acc g[VEC], v[VEC];
    load<VEC>(dy + off, g);
    load<VEC>(x + off, v);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      s.v[0] += g[k];
      s.v[1] += g[k] * (v[k] - mu);
    }
  });
  s = sum_across_x(s);
  const long long P = gridDim.y, CP = static_cast<long long>(C) * P, base = c * P;
  if (threadIdx.x == 0) {
    part[base + blockIdx.y] = s.v[0];
    part[CP + base + blockIdx.y] = s.v[1];
  }
  if (!last_block_done(counter + c, gridDim.y)) return;
  Sums<Acc, 2> t = {{0, 0}};  // the last block of channel c: add its P partials
  for (long long p = threadIdx.x; p < P; p += blockDim.x) {
    t.v[0] += load_other(part + base + p);
    t.v[1] += load_other(part + CP + base + p);
  }
  t = sum_across_x(t);
  if (threadIdx.x == 0) bn_finish_grad(c, C, t.v[0], t.v[1], mean, BN_GRAD_OUT_ARGS);
}

// Cols layout: as bn_stats_cols (column totals by the last block of each column block, then
// each channel's B columns by the later of its one or two column blocks).
template <class T, int VEC>
__global__ void bn_grad_cols(const T* __restrict__ dy, const T* __restrict__ x,
                             const acc_t<T>* __restrict__ mean, acc_t<T>* part,
                             acc_t<T>* colpart, unsigned* counter, BN_GRAD_OUT(acc_t<T>),
                             long long A, int C, int B) {
  using Acc = acc_t<T>;
  const long long W = static_cast<long long>(C) * B, col = cols_first_column(VEC);
  Acc mu[VEC], s[2 * VEC];  // s[k] = sum dy, s[VEC + k] = sum dy * (x - mean), column k
  for (int k = 0; k < VEC; ++k) {
    mu[k] = col < W ? mean[(col + k) / B] : Acc(0);
    s[k] = s[VEC + k] = 0;
  }
  for_each_row_of_columns<VEC>(A, W, [&](long long, long long off) {
    Acc g[VEC], v[VEC];
    load<VEC>(dy + off, g);
    load<VEC>(x + off, v);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      s[k] += g[k];
      s[VEC + k] += g[k] * (v[k] - mu[k]);
    }
  });
  sum_across_y<Acc, 2 * VEC>(s);
  const long long P = static_cast<long long>(gridDim.y) * B, CP = C * P;
  auto at = [&](long long j, long long sl) { return (j / B) * P + sl * B + j % B; };
  if (threadIdx.y == 0 && col < W)
    for (int k = 0; k < VEC; ++k) {
      const long long i = at(col + k, blockIdx.y);
      part[i] = s[k];
      part[CP + i] = s[VEC + k];
    }
  if (!last_block_done(counter + blockIdx.x, gridDim.y)) return;
  for (int k = 0; k < 2 * VEC; ++k) s[k] = 0;  // the last block: column totals over the slices
  if (col < W)
    for (long long sl = threadIdx.y; sl < gridDim.y; sl += blockDim.y)
      for (int k = 0; k < VEC; ++k) {
        const long long i = at(col + k, sl);
        s[k] += load_other(part + i);
        s[VEC + k] += load_other(part + CP + i);
      }
  sum_across_y<Acc, 2 * VEC>(s);
  if (threadIdx.y == 0 && col < W)
    for (int k = 0; k < VEC; ++k) {
      colpart[col + k] = s[k];
      colpart[W + col + k] = s[VEC + k];
    }
  // counters after the column blocks': one per channel
  for_each_channel_done<VEC>(counter + gridDim.x, W, B, [&](long long c) {
    Acc sum_dy = 0, sum_dy_xmu = 0;
    for (int b = 0; b < B; ++b) {
      sum_dy += load_other(colpart + c * B + b);
      sum_dy_xmu += load_other(colpart + W + c * B + b);
    }
    bn_finish_grad(static_cast<int>(c), C, sum_dy, sum_dy_xmu, mean, BN_GRAD_OUT_ARGS);
  });
}

template <class T, int VEC>
__global__ void bn_dx_rows(const T* __restrict__ dy, const T* __restrict__ x,
                           const acc_t<T>* __restrict__ coef, T* __restrict__ dx,
                           int A, int C, int B) {
  using Acc = acc_t<T>;
  const int c = blockIdx.x;
  const Acc mu = coef[c], scale = coef[C + c], a = coef[2 * C + c], b = coef[3 * C + c];
  for_each_vec_of_channel<VEC>(A, C, B, [&](long long off) {
    Acc g[VEC], v[VEC];
    load<VEC>(dy + off, g);
    load<VEC>(x + off, v);
#pragma unroll
    for (int k = 0; k < VEC; ++k) v[k] = scale * (g[k] - a - (v[k] - mu) * b);
    store<VEC>(dx + off, v);
  });
}

template <class T, int VEC>
__global__ void bn_dx_cols(const T* __restrict__ dy, const T* __restrict__ x,
                           const acc_t<T>* __restrict__ coef, T* __restrict__ dx,
                           long long A, int C, int B) {
  using Acc = acc_t<T>;
  const long long W = static_cast<long long>(C) * B, col = cols_first_column(VEC);
  if (col >= W) return;  // no block-wide synchronisation below
  Acc mu[VEC], scale[VEC], a[VEC], b[VEC];
  for (int k = 0; k < VEC; ++k) {
    const long long c = (col + k) / B;
    mu[k] = coef[c];
    scale[k] = coef[C + c];
    a[k] = coef[2 * C + c];
    b[k] = coef[3 * C + c];
  }
  for_each_row_of_columns<VEC>(A, W, [&](long long, long long off) {
    Acc g[VEC], v[VEC];
    load<VEC>(dy + off, g);
    load<VEC>(x + off, v);
#pragma unroll
    for (int k = 0; k < VEC; ++k) v[k] = scale[k] * (g[k] - a[k] - (v[k] - mu[k]) * b[k]);
    store<VEC>(dx + off, v);
  });
}
