// bn_finalize.cu: BatchNorm statistics, pass 2 of 2 -- merge the partials of each channel.
//
// One block per channel (grid C, 1-D blocks) merges the P partials (count, mean, M2) written
// by bn_stats.cu, then thread 0 writes
//   mean, var (biased, M2 / m), inv_std = 1 / sqrt(var + eps),
//   params (3, C) = (mean, gamma * inv_std, beta) for bn_normalize.cu,
// and, if update_running != 0, updates the running statistics in place (PyTorch convention:
// new = (1 - momentum) * old + momentum * batch, with the unbiased batch variance).
#include "common.cuh"

template <class Acc>
__global__ void bn_finalize(const Acc* __restrict__ part, const Acc* __restrict__ gamma,
                            const Acc* __restrict__ beta, Acc eps, int C, int P,
                            Acc* __restrict__ mean, Acc* __restrict__ var,
                            Acc* __restrict__ inv_std, Acc* __restrict__ params,
                            int update_running, Acc momentum, Acc* __restrict__ running_mean,
                            Acc* __restrict__ running_var) {
  const int c = blockIdx.x;
  const long long CP = static_cast<long long>(C) * P, base = static_cast<long long>(c) * P;
  Welford<Acc> w;
  for (int p = threadIdx.x; p < P; p += blockDim.x)
    w.merge(part[base + p], part[CP + base + p], part[2 * CP + base + p]);
  w = merge_across_x(w);
  if (threadIdx.x != 0) return;
  const Acc v = w.m2 / w.n, r = inv_sqrt(v + eps);
  mean[c] = w.mean;
  var[c] = v;
  inv_std[c] = r;
  params[c] = w.mean;
  params[C + c] = gamma[c] * r;
  params[2 * C + c] = beta[c];
  if (update_running) {
    running_mean[c] = (Acc(1) - momentum) * running_mean[c] + momentum * w.mean;
    running_var[c] = (Acc(1) - momentum) * running_var[c] + momentum * w.m2 / (w.n - Acc(1));
  }
}

// Inference: the statistics are the running ones; params = (running_mean, scale, beta).
template <class Acc>
__global__ void bn_inference_params(const Acc* __restrict__ running_mean,
                                    const Acc* __restrict__ running_var,
                                    const Acc* __restrict__ gamma, const Acc* __restrict__ beta,
                                    Acc eps, int C, Acc* __restrict__ params) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  params[c] = running_mean[c];
  params[C + c] = gamma[c] * inv_sqrt(running_var[c] + eps);
  params[2 * C + c] = beta[c];
}
