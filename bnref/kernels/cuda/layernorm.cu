// layernorm.cu: row-wise normalisation, for LayerNorm and (with a channel map) GroupNorm.
//
// x is (M, K): M independent rows of K contiguous values, each normalised by its own mean
// and variance. Blocks are (tpr, rpb): tpr threads per row (a multiple of 32), rpb rows per
// block, so short rows still give every block enough work.
//
// Affine parameters: value k of row r uses gamma[ch], beta[ch] with
//     ch = (r % G) * (K / L) + k / L.
// LayerNorm passes G = 1, L = 1, so ch = k. GroupNorm on (N, C, L) with G groups passes
// its N * G groups as rows of K = (C / G) * L contiguous values, so ch is the channel.
#include "common.cuh"

__device__ __forceinline__ long long affine_index(long long r, int k, int K, int G, int L) {
  return L == 1 ? (G == 1 ? k : (r % G) * K + k) : (r % G) * (K / L) + k / L;
}

// Forward: Welford over the row (one merge across the row's threads), then normalise.
template <class T>
__global__ void rownorm_forward(const T* __restrict__ x, const acc_t<T>* __restrict__ gamma,
                                const acc_t<T>* __restrict__ beta, T* __restrict__ y,
                                acc_t<T>* __restrict__ mean_out,
                                acc_t<T>* __restrict__ inv_std_out, long long M, int K, int G,
                                int L, acc_t<T> eps) {
  using Acc = acc_t<T>;
  const long long r = static_cast<long long>(blockIdx.x) * blockDim.y + threadIdx.y;
  const bool valid = r < M;  // no early return: merge_across_x synchronises the block
  const T* xr = x + r * K;
  Welford<Acc> w;
  if (valid)
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
      const Acc v[1] = {to_acc(xr[k])};
      w.push(v);
    }
  w = merge_across_x(w);
  if (!valid) return;
  const Acc mean = w.mean, inv_std = inv_sqrt(w.m2 / w.n + eps);
  if (threadIdx.x == 0) {
    mean_out[r] = mean;
    inv_std_out[r] = inv_std;
  }
  T* yr = y + r * K;
  for (int k = threadIdx.x; k < K; k += blockDim.x) {  // second read: hits L1/L2
    const long long ch = affine_index(r, k, K, G, L);
    yr[k] = from_acc<T>((to_acc(xr[k]) - mean) * inv_std * gamma[ch] + beta[ch]);
  }
}

// Backward, dx only. With g = gamma[ch] * dy (the gradient of x_hat):
//   dx = inv_std * (g - mean_k(g) - x_hat * mean_k(g * x_hat)).
template <class T>
__global__ void rownorm_backward_dx(const T* __restrict__ dy, const T* __restrict__ x,
                                    const acc_t<T>* __restrict__ gamma,
                                    const acc_t<T>* __restrict__ mean,
                                    const acc_t<T>* __restrict__ inv_std, T* __restrict__ dx,
                                    long long M, int K, int G, int L) {
  using Acc = acc_t<T>;
  const long long r = static_cast<long long>(blockIdx.x) * blockDim.y + threadIdx.y;
  const bool valid = r < M;
  const T *dyr = dy + r * K, *xr = x + r * K;
  const Acc mu = valid ? mean[r] : Acc(0), rs = valid ? inv_std[r] : Acc(0);
  Sums<Acc, 2> s = {{0, 0}};  // sum g, sum g * (x - mean)
  if (valid)
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
      const Acc g = gamma[affine_index(r, k, K, G, L)] * to_acc(dyr[k]);
      s.v[0] += g;
      s.v[1] += g * (to_acc(xr[k]) - mu);
    }
  s = sum_across_x(s);
  if (!valid) return;
  const Acc mean_g = s.v[0] / K, mean_gx = rs * s.v[1] / K;  // mean_gx = mean(g * x_hat)
  T* dxr = dx + r * K;
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
    const Acc g = gamma[affine_index(r, k, K, G, L)] * to_acc(dyr[k]);
    const Acc x_hat = (to_acc(xr[k]) - mu) * rs;
    dxr[k] = from_acc<T>(rs * (g - mean_g - x_hat * mean_gx));
  }
}

// LayerNorm dgamma/dbeta: column sums over the M rows of dy * x_hat and dy. Cols walk with
// one column per thread; grid (ceil(K / blockDim.x), S), part (2, S, K) is then summed over S.
template <class T>
__global__ void ln_param_grads(const T* __restrict__ dy, const T* __restrict__ x,
                               const acc_t<T>* __restrict__ mean,
                               const acc_t<T>* __restrict__ inv_std,
                               acc_t<T>* __restrict__ part, long long M, int K) {
  using Acc = acc_t<T>;
  Acc s[2] = {0, 0};  // sum dy * x_hat, sum dy
  for_each_row_of_columns<1>(M, K, [&](long long r, long long off) {
    const Acc g = to_acc(dy[off]);
    s[0] += g * (to_acc(x[off]) - mean[r]) * inv_std[r];
    s[1] += g;
  });
  sum_across_y<Acc, 2>(s);
  const long long j = cols_first_column(1);
  if (threadIdx.y == 0 && j < K) {
    const long long S = gridDim.y;
    part[static_cast<long long>(blockIdx.y) * K + j] = s[0];
    part[(S + blockIdx.y) * K + j] = s[1];
  }
}
