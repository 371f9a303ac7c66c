// bn_finalize.cu: per-channel parameters for inference.
//
// (Training statistics are finished inside bn_stats.cu, by the last block of each channel;
// this file once held that separate finalize launch too.)
#include "common.cuh"

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
