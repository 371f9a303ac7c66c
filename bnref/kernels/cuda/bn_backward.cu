// bn_backward.cu: BatchNorm backward in three steps.
//
//   1. bn_grad_rows / bn_grad_cols: per-channel partial sums of dy and dy * (x - mean),
//      walking the tensor like bn_stats.cu; part (2, C, P).
//   2. bn_backward_finalize: one block per channel adds the P partials and writes
//        dbeta  = sum(dy),  dgamma = inv_std * sum(dy * (x - mean)) = sum(dy * x_hat),
//        coef (4, C) = (mean, scale = gamma * inv_std, dbeta / m, inv_std * dgamma / m).
//   3. bn_dx_rows / bn_dx_cols:
//        dx = gamma * inv_std / m * (m * dy - dbeta - x_hat * dgamma)
//           = scale * (dy - dbeta / m - (x - mean) * inv_std * dgamma / m).
// x_hat is recomputed from x (never stored), as in the NumPy reference.
#include "common.cuh"

template <class T, int VEC>
__global__ void bn_grad_rows(const T* __restrict__ dy, const T* __restrict__ x,
                             const acc_t<T>* __restrict__ mean, acc_t<T>* __restrict__ part,
                             int A, int C, int B) {
  using Acc = acc_t<T>;
  const Acc mu = mean[blockIdx.x];
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
  if (threadIdx.x == 0) {
    const long long P = gridDim.y, i = static_cast<long long>(blockIdx.x) * P + blockIdx.y;
    part[i] = s.v[0];
    part[C * P + i] = s.v[1];
  }
}

template <class T, int VEC>
__global__ void bn_grad_cols(const T* __restrict__ dy, const T* __restrict__ x,
                             const acc_t<T>* __restrict__ mean, acc_t<T>* __restrict__ part,
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
  if (threadIdx.y == 0 && col < W) {
    const long long P = static_cast<long long>(gridDim.y) * B;
    for (int k = 0; k < VEC; ++k) {
      const long long j = col + k, c = j / B, b = j - c * B;
      const long long i = c * P + static_cast<long long>(blockIdx.y) * B + b;
      part[i] = s[k];
      part[C * P + i] = s[VEC + k];
    }
  }
}

template <class Acc>
__global__ void bn_backward_finalize(const Acc* __restrict__ part, const Acc* __restrict__ mean,
                                     const Acc* __restrict__ inv_std,
                                     const Acc* __restrict__ gamma, Acc m, int C, int P,
                                     Acc* __restrict__ dgamma, Acc* __restrict__ dbeta,
                                     Acc* __restrict__ coef) {
  const int c = blockIdx.x;
  const long long CP = static_cast<long long>(C) * P, base = static_cast<long long>(c) * P;
  Sums<Acc, 2> s = {{0, 0}};
  for (int p = threadIdx.x; p < P; p += blockDim.x) {
    s.v[0] += part[base + p];
    s.v[1] += part[CP + base + p];
  }
  s = sum_across_x(s);
  if (threadIdx.x != 0) return;
  const Acc r = inv_std[c], db = s.v[0], dg = r * s.v[1];
  dbeta[c] = db;
  dgamma[c] = dg;
  coef[c] = mean[c];
  coef[C + c] = gamma[c] * r;
  coef[2 * C + c] = db / m;
  coef[3 * C + c] = r * dg / m;
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
