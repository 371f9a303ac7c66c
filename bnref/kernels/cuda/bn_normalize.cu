// bn_normalize.cu: y = (x - mean) * scale + beta per channel (training and inference).
//
// params (3, C) = (mean, scale = gamma * inv_std, beta), from bn_stats.cu's last blocks
// (training) or bn_inference_params (inference). Subtracting the mean first (rather than
// y = x * scale + shift) keeps y accurate when |mean| >> std. The grid walks the tensor
// exactly like bn_stats.cu.
#include "common.cuh"

// Rows layout, grid (C, S): every block serves one channel, so it reads its params once.
template <class T, int VEC>
__global__ void bn_normalize_rows(const T* __restrict__ x, const acc_t<T>* __restrict__ params,
                                  T* __restrict__ y, int A, int C, int B) {
  using Acc = acc_t<T>;
  const int c = blockIdx.x;
  const Acc mean = params[c], scale = params[C + c], beta = params[2 * C + c];
  for_each_vec_of_channel<VEC>(A, C, B, [&](long long off) {
    Acc v[VEC];
    load<VEC>(x + off, v);
#pragma unroll
    for (int k = 0; k < VEC; ++k) v[k] = (v[k] - mean) * scale + beta;
    store<VEC>(y + off, v);
  });
}

// Cols layout: every thread serves VEC fixed columns, so it reads their params once.
template <class T, int VEC>
__global__ void bn_normalize_cols(const T* __restrict__ x, const acc_t<T>* __restrict__ params,
                                  T* __restrict__ y, long long A, int C, int B) {
  using Acc = acc_t<T>;
  const long long W = static_cast<long long>(C) * B, col = cols_first_column(VEC);
  if (col >= W) return;  // no block-wide synchronisation below
  Acc mean[VEC], scale[VEC], beta[VEC];
  for (int k = 0; k < VEC; ++k) {
    const long long c = (col + k) / B;
    mean[k] = params[c];
    scale[k] = params[C + c];
    beta[k] = params[2 * C + c];
  }
  for_each_row_of_columns<VEC>(A, W, [&](long long, long long off) {
    Acc v[VEC];
    load<VEC>(x + off, v);
#pragma unroll
    for (int k = 0; k < VEC; ++k) v[k] = (v[k] - mean[k]) * scale[k] + beta[k];
    store<VEC>(y + off, v);
  });
}
