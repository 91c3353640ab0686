// Pieces every vigsp CUDA kernel shares: the per-sample descriptor, error checks, a block scan.
//
// All files in csrc/cuda are compiled with --fmad=false: the CPU core is built without FMA
// contraction, and the GPU must round every multiply and add the same way to get the same bits.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "vigsp/superpixel_cuda.hpp"

namespace vigsp::cuda::detail {

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear a sticky launch error so later calls can report their own
    throw CudaError(std::string("vigsp CUDA: ") + what + " failed: " + cudaGetErrorString(err));
  }
}
#define VIGSP_CUDA_CHECK(call) ::vigsp::cuda::detail::check((call), #call)
#define VIGSP_CUDA_LAUNCHED(name) ::vigsp::cuda::detail::check(cudaGetLastError(), "launching " name)

constexpr int kCenterStride = 5;  // L, a, b, y, x (as in slic.cpp)
constexpr int kSumStride = 6;     // L, a, b (fixed point), y, x, count
// Lab values are multiples of 2^-24 (see slic_kernels.cuh), so this fixed point holds them exactly.
constexpr double kFixedScale = 16777216.0;
enum Acc : int { kCount, kSumY, kSumX, kMinY, kMinX, kMaxY, kMaxX, kSumR, kSumG, kSumB, kAccStride };

// Everything a kernel needs to know about one sample. Built on the host from the BatchPlan and
// written to device scratch by a kernel (no host memory involved, so nothing waits on the stream).
struct SampleDesc {
  const uint8_t* image;
  int height, width;
  int64_t pixel_offset;
  int grid_rows, grid_cols;
  int64_t cluster_offset;
  int num_clusters;
  int stride;             // min(subsample_stride, height), as on the CPU
  float step_y, step_x;   // window half-extent, float(H)/rows and float(W)/cols as on the CPU
  float spatial_weight;   // (compactness / S)^2
  int64_t min_size;       // components smaller than this are merged
  int node_capacity;
  int64_t node_offset;
  int64_t edge_capacity, edge_offset;
  int64_t bitset_offset;
};

constexpr int kDescChunk = 24;  // keeps the by-value kernel argument under the portable 4 KB
struct DescChunk {
  SampleDesc desc[kDescChunk];
  int first, count;
};

// Exclusive prefix sum over a block of kThreads threads; *total gets the block's sum.
// `warp_sums` needs kThreads / 32 entries of shared memory.
template <int kThreads>
__device__ inline int64_t block_exclusive_scan(int64_t value, int64_t* warp_sums, int64_t* total) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int64_t inclusive = value;
  for (int d = 1; d < 32; d <<= 1) {
    const int64_t other = __shfl_up_sync(0xffffffffu, inclusive, d);
    if (lane >= d) inclusive += other;
  }
  if (lane == 31) warp_sums[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    int64_t w = lane < kThreads / 32 ? warp_sums[lane] : 0;
    for (int d = 1; d < 32; d <<= 1) {
      const int64_t other = __shfl_up_sync(0xffffffffu, w, d);
      if (lane >= d) w += other;
    }
    if (lane < kThreads / 32) warp_sums[lane] = w;  // now inclusive over warps
  }
  __syncthreads();
  const int64_t warp_base = warp > 0 ? warp_sums[warp - 1] : 0;
  *total = warp_sums[kThreads / 32 - 1];
  __syncthreads();  // warp_sums may be reused by the caller's next round
  return warp_base + inclusive - value;
}

inline unsigned blocks_for(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

}  // namespace vigsp::cuda::detail
