// groupnorm.cu: GroupNorm's per-channel parameter gradients.
//
// GroupNorm's forward and dx are row-wise normalisations over the N * G groups (each group of
// C / G channels is one contiguous row of (C / G) * L values), so they use layernorm.cu's
// rownorm_forward / rownorm_backward_dx with the channel map. Only dgamma and dbeta need a
// different reduction: per channel, over N and L, with the statistics of the channel's group.
#include "common.cuh"

// One warp per (n, c) run of L contiguous values; blocks are (32, rows per block).
// part (2, N, C): sum over L of dy * x_hat and of dy; the caller sums over N.
template <class T>
__global__ void gn_channel_sums(const T* __restrict__ dy, const T* __restrict__ x,
                                const acc_t<T>* __restrict__ mean,
                                const acc_t<T>* __restrict__ inv_std,
                                acc_t<T>* __restrict__ part, int N, int C, int G, int L) {
  using Acc = acc_t<T>;
  const long long nc = static_cast<long long>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (nc >= static_cast<long long>(N) * C) return;  // the whole warp leaves together
  const long long n = nc / C, c = nc - n * C, ng = n * G + c / (C / G);
  const Acc mu = mean[ng], rs = inv_std[ng];
  const T *dyr = dy + nc * L, *xr = x + nc * L;
  Sums<Acc, 2> s = {{0, 0}};
  for (int l = threadIdx.x; l < L; l += 32) {
    const Acc g = to_acc(dyr[l]);
    s.v[0] += g * (to_acc(xr[l]) - mu);
    s.v[1] += g;
  }
  s = warp_sum(s);
  if (threadIdx.x == 0) {
    part[nc] = rs * s.v[0];
    part[static_cast<long long>(N) * C + nc] = s.v[1];
  }
}
