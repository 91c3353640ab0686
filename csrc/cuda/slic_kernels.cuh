// SLIC on the GPU, step for step the CPU core's (csrc/src/slic.cpp, color.cpp):
//
// - Lab: the same sRGB->linear table (computed on the host with the same double formula and
//   passed by value), the same float matrix, the same bit-trick cube root with three Newton steps,
//   every operation IEEE-rounded and none contracted (--fmad=false), so the planes are the CPU's bits.
// - Centres start at the same pixels; windows, distances and the spatial weight use the same
//   float expressions in the same order.
// - Assignment: the CPU visits clusters in index order and moves a pixel only on a strictly
//   smaller distance, so a pixel ends at the smallest distance, ties to the smallest index. Here
//   each pixel scans the clusters whose window covers its tile and applies exactly that rule.
//   Pixels no window covers keep their previous cluster, as on the CPU.
// - Update: the CPU sums in double, which is exact because Lab floats are multiples of 2^-24
//   (L of 2^-20: 116*fy - 16 with 116*fy in [15.9, 128); a and b of 2^-24: 500 or 200 times a
//   difference of floats in [0.125, 2)) and the sums stay below 2^53 units. So we sum the same
//   values exactly in 64-bit fixed point (order-independent, deterministic), convert to the same
//   double and divide the same way: the centres are the CPU's bits.
// - The CPU stops when no pixel moved (only for subsample_stride 1); a per-sample flag on the
//   device does the same without a host round trip.
#pragma once

#include "common.cuh"

namespace vigsp::cuda::detail {

struct LinearLut {
  float value[256];
};

__global__ void write_descs_kernel(DescChunk chunk, SampleDesc* descs) {
  const int i = threadIdx.x;
  if (i < chunk.count) descs[chunk.first + i] = chunk.desc[i];
}

__device__ inline float fast_cbrt(float t) {
  const int32_t bits = __float_as_int(t);
  float y = __int_as_float(static_cast<int32_t>(static_cast<float>(bits) * (1.0f / 3.0f)) + 709921077);
  y = (2.0f * y + t / (y * y)) * (1.0f / 3.0f);
  y = (2.0f * y + t / (y * y)) * (1.0f / 3.0f);
  y = (2.0f * y + t / (y * y)) * (1.0f / 3.0f);
  return y;
}

__device__ inline float lab_f(float t) {
  const float linear = static_cast<float>(7.787) * t + 16.0f / 116.0f;
  const bool above = t > static_cast<float>(0.008856);
  const float root = fast_cbrt(above ? t : 1.0f);
  return above ? root : linear;
}

// One pixel per thread; blockIdx.y is the sample.
__global__ void lab_kernel(const SampleDesc* descs, LinearLut lut, float* lab, int64_t total) {
  const SampleDesc d = descs[blockIdx.y];
  const int64_t n = static_cast<int64_t>(d.height) * d.width;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= n) return;
  const uint8_t* rgb = d.image + 3 * p;
  const float r = lut.value[rgb[0]], g = lut.value[rgb[1]], b = lut.value[rgb[2]];
  constexpr float kInvWx = static_cast<float>(1.0 / 0.95047), kInvWz = static_cast<float>(1.0 / 1.08883);
  const float fx = lab_f((0.412453f * r + 0.357580f * g + 0.180423f * b) * kInvWx);
  const float fy = lab_f(0.212671f * r + 0.715160f * g + 0.072169f * b);
  const float fz = lab_f((0.019334f * r + 0.119193f * g + 0.950227f * b) * kInvWz);
  const int64_t q = d.pixel_offset + p;
  lab[q] = 116.0f * fy - 16.0f;
  lab[total + q] = 500.0f * (fx - fy);
  lab[2 * total + q] = 200.0f * (fy - fz);
}

// Centres at the middle of each grid cell, coloured by the pixel nearest to it.
__global__ void init_centers_kernel(const SampleDesc* descs, const float* lab, int64_t total, float* centers) {
  const SampleDesc d = descs[blockIdx.y];
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= d.num_clusters) return;
  const int r = k / d.grid_cols, c = k % d.grid_cols;
  const float cy = (r + 0.5f) * d.height / d.grid_rows - 0.5f, cx = (c + 0.5f) * d.width / d.grid_cols - 0.5f;
  const int64_t p = d.pixel_offset + static_cast<int64_t>(lroundf(cy)) * d.width + lroundf(cx);
  float* center = centers + (d.cluster_offset + k) * kCenterStride;
  center[0] = lab[p];
  center[1] = lab[total + p];
  center[2] = lab[2 * total + p];
  center[3] = cy;
  center[4] = cx;
}

struct Window {
  int y0, y1, x0, x1;
};

__device__ inline Window window_of(const float* c, const SampleDesc& d) {
  return {max(0, static_cast<int>(floorf(c[3] - d.step_y))),
          min(d.height, static_cast<int>(ceilf(c[3] + d.step_y)) + 1),
          max(0, static_cast<int>(floorf(c[4] - d.step_x))),
          min(d.width, static_cast<int>(ceilf(c[4] + d.step_x)) + 1)};
}

__device__ inline float slic_distance(float l, float a, float b, int y, int x, const float* c, float w) {
  const float dl = l - c[0], da = a - c[1], db = b - c[2];
  const float dy2 = w * (y - c[3]) * (y - c[3]);
  const float dx2 = w * (x - c[4]) * (x - c[4]);
  return dl * dl + da * da + db * db + dy2 + dx2;
}

constexpr int kTileW = 32, kTileH = 8;  // 256 threads, one pixel each
constexpr int kMaxCandidates = 64;      // clusters whose window meets one tile (~10 typically)

__device__ inline void add_fixed(unsigned long long* s, float l, float a, float b, int y, int x) {
  // Exact: the floats are multiples of 2^-24 and |v| < 2^8 (see the file comment).
  atomicAdd(s + 0, static_cast<unsigned long long>(static_cast<long long>(static_cast<double>(l) * kFixedScale)));
  atomicAdd(s + 1, static_cast<unsigned long long>(static_cast<long long>(static_cast<double>(a) * kFixedScale)));
  atomicAdd(s + 2, static_cast<unsigned long long>(static_cast<long long>(static_cast<double>(b) * kFixedScale)));
  atomicAdd(s + 3, static_cast<unsigned long long>(y));
  atomicAdd(s + 4, static_cast<unsigned long long>(x));
  atomicAdd(s + 5, 1ull);
}

// One k-means assignment over rows y % stride == phase (phase = iteration % stride), then the
// exact sums of every assigned pixel with its current cluster, which equal the CPU's running
// sums. Grid: (tiles_x, tiles_y, batch).
__global__ void __launch_bounds__(kTileW* kTileH)
    assign_kernel(const SampleDesc* descs, const float* lab, int64_t total, const float* centers,
                  int32_t* assignment, unsigned long long* sums, unsigned long long* changed, const int32_t* done,
                  int iteration, bool final_pass) {
  const int s = blockIdx.z;
  if (done[s]) return;
  const SampleDesc d = descs[s];
  // The final pass labels every row of subsampled samples; a stride-1 sample is finished already.
  if (final_pass && d.stride == 1) return;
  const int stride = final_pass ? 1 : d.stride, phase = final_pass ? 0 : iteration % d.stride;
  const bool accumulate = !final_pass;
  const int x0 = blockIdx.x * kTileW, y0 = blockIdx.y * kTileH;
  if (x0 >= d.width || y0 >= d.height) return;  // uniform per block
  const int x1 = min(x0 + kTileW, d.width), y1 = min(y0 + kTileH, d.height);
  const int tid = threadIdx.y * kTileW + threadIdx.x;

  __shared__ int num_candidates;
  __shared__ int candidate[kMaxCandidates];
  __shared__ float cand_center[kMaxCandidates][kCenterStride];
  __shared__ Window cand_window[kMaxCandidates];
  __shared__ unsigned long long cand_sums[kMaxCandidates][kSumStride];
  if (tid == 0) num_candidates = 0;
  __syncthreads();
  const float* c_base = centers + d.cluster_offset * kCenterStride;
  for (int k = tid; k < d.num_clusters; k += kTileW * kTileH) {
    const float* c = c_base + k * kCenterStride;
    if (!isfinite(c[3])) continue;  // emptied cluster, skipped as on the CPU
    const Window w = window_of(c, d);
    if (w.y0 < y1 && y0 < w.y1 && w.x0 < x1 && x0 < w.x1) {
      const int slot = atomicAdd(&num_candidates, 1);
      if (slot < kMaxCandidates) candidate[slot] = k;
    }
  }
  __syncthreads();
  const int count = num_candidates;
  const bool overflow = count > kMaxCandidates;  // then every pixel scans all clusters (slow, same result)
  const int listed = min(count, kMaxCandidates);
  for (int j = tid; j < listed; j += kTileW * kTileH) {
    const float* c = c_base + candidate[j] * kCenterStride;
    for (int i = 0; i < kCenterStride; ++i) cand_center[j][i] = c[i];
    cand_window[j] = window_of(c, d);
  }
  for (int j = tid; j < listed * kSumStride; j += kTileW * kTileH) cand_sums[j / kSumStride][j % kSumStride] = 0;
  __syncthreads();

  const int x = x0 + threadIdx.x, y = y0 + threadIdx.y;
  const bool inside = x < x1 && y < y1;
  int32_t current = -1;
  int slot_of_current = -1;
  float l = 0, a = 0, b = 0;
  int64_t q = 0;
  if (inside) {
    q = d.pixel_offset + static_cast<int64_t>(y) * d.width + x;
    l = lab[q];
    a = lab[total + q];
    b = lab[2 * total + q];
    current = assignment[q];
    if (y % stride == phase) {
      float best = __int_as_float(0x7f800000);  // +inf, like the CPU's initial distance
      int32_t best_k = -1;
      int best_slot = -1;
      if (!overflow) {
        for (int j = 0; j < listed; ++j) {
          const Window w = cand_window[j];
          if (y < w.y0 || y >= w.y1 || x < w.x0 || x >= w.x1) continue;
          const float dist = slic_distance(l, a, b, y, x, cand_center[j], d.spatial_weight);
          const int32_t k = candidate[j];
          if (dist < best || (dist == best && k < best_k)) {
            best = dist;
            best_k = k;
            best_slot = j;
          }
        }
      } else {
        for (int k = 0; k < d.num_clusters; ++k) {  // in index order: strict < keeps the smallest k
          const float* c = c_base + k * kCenterStride;
          if (!isfinite(c[3])) continue;
          const Window w = window_of(c, d);
          if (y < w.y0 || y >= w.y1 || x < w.x0 || x >= w.x1) continue;
          const float dist = slic_distance(l, a, b, y, x, c, d.spatial_weight);
          if (dist < best) {
            best = dist;
            best_k = k;
          }
        }
      }
      if (best_k >= 0) {
        if (best_k != current) atomicAdd(changed + s, 1ull);
        current = best_k;
        slot_of_current = best_slot;
        assignment[q] = current;
      }
    }
  }
  if (!accumulate) return;  // no __syncthreads below on this path, and it is uniform
  if (inside && current >= 0) {
    if (slot_of_current < 0 && !overflow)
      for (int j = 0; j < listed; ++j)
        if (candidate[j] == current) slot_of_current = j;
    if (slot_of_current >= 0)
      add_fixed(cand_sums[slot_of_current], l, a, b, y, x);
    else  // a pixel kept from an earlier iteration whose cluster no longer covers this tile
      add_fixed(sums + (d.cluster_offset + current) * kSumStride, l, a, b, y, x);
  }
  __syncthreads();
  for (int j = tid; j < listed * kSumStride; j += kTileW * kTileH) {
    const unsigned long long v = cand_sums[j / kSumStride][j % kSumStride];
    if (v != 0) atomicAdd(sums + (d.cluster_offset + candidate[j / kSumStride]) * kSumStride + j % kSumStride, v);
  }
}

// Centres = sums / count in double, as move_centers does; an empty cluster gets a NaN row.
__global__ void move_centers_kernel(const SampleDesc* descs, const unsigned long long* sums,
                                    const unsigned long long* changed, int32_t* done, float* centers) {
  const int s = blockIdx.y;
  const SampleDesc d = descs[s];
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= d.num_clusters || done[s]) return;
  if (d.stride == 1 && changed[s] == 0) {  // a fixed point: the CPU stops here too
    if (k == 0) done[s] = 1;
    return;
  }
  const auto* raw = reinterpret_cast<const long long*>(sums + (d.cluster_offset + k) * kSumStride);
  float* c = centers + (d.cluster_offset + k) * kCenterStride;
  const double count = static_cast<double>(raw[5]);
  if (count == 0) {
    c[3] = __int_as_float(0x7fc00000);  // quiet NaN: nothing to attract, drop it
    return;
  }
  const double values[kCenterStride] = {static_cast<double>(raw[0]) / kFixedScale,
                                        static_cast<double>(raw[1]) / kFixedScale,
                                        static_cast<double>(raw[2]) / kFixedScale, static_cast<double>(raw[3]),
                                        static_cast<double>(raw[4])};
  for (int j = 0; j < kCenterStride; ++j) c[j] = static_cast<float>(values[j] / count);
}

// ---- connectivity enforcement ------------------------------------------------------------
// The CPU scans pixels in raster order and floods each unlabelled pixel's 4-connected component
// of equal cluster; a component smaller than min_size (and not starting at pixel 0) takes the
// final label of the pixel left of its first pixel (above it when in column 0), else it gets
// the next new label. That is a function of the components alone, which we compute in parallel:
// union-find whose root is the component's smallest raster index (= the CPU's first pixel), sizes
// by atomics, then a per-sample scan over roots in raster order numbers the new labels, and merged
// components follow the chain of "left/above" pointers (always to a smaller index) to a new label.

__device__ inline int32_t find_root(const volatile int32_t* parent, int32_t x) {
  int32_t p;
  while ((p = parent[x]) != x) x = p;
  return x;
}

// Links a and b's trees, always under the smaller root, so roots stay minimal indices.
__device__ inline void unite(int32_t* parent, int32_t a, int32_t b) {
  while (true) {
    a = find_root(parent, a);
    b = find_root(parent, b);
    if (a == b) return;
    if (a > b) {
      const int32_t t = a;
      a = b;
      b = t;
    }
    const int32_t old = atomicMin(parent + b, a);
    if (old == b) return;
    b = old;  // someone linked b meanwhile: join that tree too
  }
}

__global__ void cc_init_kernel(const SampleDesc* descs, int32_t* parent) {
  const SampleDesc d = descs[blockIdx.y];
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p < static_cast<int64_t>(d.height) * d.width) parent[d.pixel_offset + p] = static_cast<int32_t>(p);
}

__global__ void cc_union_kernel(const SampleDesc* descs, const int32_t* assignment, int32_t* parent) {
  const SampleDesc d = descs[blockIdx.y];
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t n = static_cast<int64_t>(d.height) * d.width;
  if (p >= n) return;
  const int32_t* cl = assignment + d.pixel_offset;
  int32_t* par = parent + d.pixel_offset;
  const int x = static_cast<int>(p % d.width);
  if (x + 1 < d.width && cl[p] == cl[p + 1]) unite(par, static_cast<int32_t>(p), static_cast<int32_t>(p + 1));
  if (p + d.width < n && cl[p] == cl[p + d.width])
    unite(par, static_cast<int32_t>(p), static_cast<int32_t>(p + d.width));
}

// Flattens every pixel to its root and counts component sizes at the root.
__global__ void cc_flatten_kernel(const SampleDesc* descs, int32_t* parent, int32_t* size) {
  const SampleDesc d = descs[blockIdx.y];
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool inside = p < static_cast<int64_t>(d.height) * d.width;
  int32_t root = -1;
  if (inside) {
    root = find_root(parent + d.pixel_offset, static_cast<int32_t>(p));
    parent[d.pixel_offset + p] = root;
  }
  // Neighbouring pixels mostly share a root: one atomic per distinct root in the warp.
  const unsigned peers = __match_any_sync(0xffffffffu, root);
  if (inside && (threadIdx.x & 31) == __ffs(peers) - 1) atomicAdd(size + d.pixel_offset + root, __popc(peers));
}

constexpr int kScanThreads = 1024;

// One block per sample: numbers the components that keep a label in raster order of their first
// pixel, and points each merged one at the component of its left (or upper) neighbour.
// head_label[root] = new label >= 0, or -(target root + 1).
__global__ void __launch_bounds__(kScanThreads)
    number_components_kernel(const SampleDesc* descs, const int32_t* parent, const int32_t* size,
                             int32_t* head_label, int32_t* num_nodes) {
  const SampleDesc d = descs[blockIdx.x];
  const int64_t n = static_cast<int64_t>(d.height) * d.width;
  const int32_t* par = parent + d.pixel_offset;
  __shared__ int64_t warp_sums[kScanThreads / 32];
  int64_t running = 0;
  for (int64_t base = 0; base < n; base += kScanThreads) {
    const int64_t p = base + threadIdx.x;
    bool head = false, keeps = false;
    if (p < n) {
      head = par[p] == p;
      keeps = head && !(size[d.pixel_offset + p] < d.min_size && p > 0);
    }
    int64_t round_total;
    const int64_t before = block_exclusive_scan<kScanThreads>(keeps ? 1 : 0, warp_sums, &round_total);
    if (head) {
      if (keeps) {
        head_label[d.pixel_offset + p] = static_cast<int32_t>(running + before);
      } else {
        const int64_t neighbour = (p % d.width) > 0 ? p - 1 : p - d.width;
        head_label[d.pixel_offset + p] = -(par[neighbour] + 1);
      }
    }
    running += round_total;
  }
  if (threadIdx.x == 0) num_nodes[blockIdx.x] = static_cast<int32_t>(running);
}

__global__ void final_labels_kernel(const SampleDesc* descs, const int32_t* parent, const int32_t* head_label,
                                    int32_t* labels) {
  const SampleDesc d = descs[blockIdx.y];
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= static_cast<int64_t>(d.height) * d.width) return;
  const int32_t* hl = head_label + d.pixel_offset;
  int32_t v = hl[parent[d.pixel_offset + p]];
  while (v < 0) v = hl[-(v + 1)];  // each step goes to a smaller index, so it ends
  labels[d.pixel_offset + p] = v;
}

// Grid mode: the CPU's grid_labels.
__global__ void grid_labels_kernel(const SampleDesc* descs, int32_t* labels, int32_t* num_nodes) {
  const SampleDesc d = descs[blockIdx.y];
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p == 0) num_nodes[blockIdx.y] = d.grid_rows * d.grid_cols;
  if (p >= static_cast<int64_t>(d.height) * d.width) return;
  const int64_t y = p / d.width, x = p % d.width;
  labels[d.pixel_offset + p] =
      static_cast<int32_t>((y * d.grid_rows / d.height) * d.grid_cols + x * d.grid_cols / d.width);
}

}  // namespace vigsp::cuda::detail
