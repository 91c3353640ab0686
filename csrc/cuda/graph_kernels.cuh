// The superpixel graph of a batch of label maps on the GPU, equal to csrc/src/graph.cpp:
// - pixel mask: per pixel, the same two bits;
// - features: the same integer accumulators (count, sums, min/max) by atomics, which are exact
//   and order-independent, then the same double expressions. Only the three CIELAB columns can
//   differ: they call the device's double pow/cbrt (within 1-2 ulp in double, the host's glibc is
//   within 1) and so differ after rounding to float only when the double lands within a few ulp
//   of a float rounding boundary, about once in 10^8 values;
// - RAG: a per-sample bitset of (i, j), i < j, like the CPU's; read in row-major order it is sorted.
#pragma once

#include "common.cuh"

namespace vigsp::cuda::detail {

constexpr int kChunk = 32;  // pixels of one row per thread in the graph pass

__global__ void init_accumulators_kernel(const SampleDesc* descs, long long* acc) {
  const SampleDesc d = descs[blockIdx.y];
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= d.node_capacity) return;
  long long* s = acc + (d.node_offset + k) * kAccStride;
  for (int j = 0; j < kAccStride; ++j) s[j] = 0;
  s[kMinY] = s[kMinX] = 0x7fffffffffffffffll;
  s[kMaxY] = s[kMaxX] = -1;
}

__device__ inline void add_edge(unsigned long long* bits, int node_capacity, int32_t i, int32_t j) {
  if (i > j) {
    const int32_t t = i;
    i = j;
    j = t;
  }
  const int64_t bit = static_cast<int64_t>(i) * node_capacity + j;
  atomicOr(bits + (bit >> 6), 1ull << (bit & 63));
}

__device__ inline void flush_run(long long* acc, int32_t k, int y, int x_begin, int x_end, long long r,
                                 long long g, long long b) {
  long long* s = acc + static_cast<int64_t>(k) * kAccStride;
  const long long run = x_end - x_begin;
  atomicAdd(reinterpret_cast<unsigned long long*>(s + kCount), static_cast<unsigned long long>(run));
  atomicAdd(reinterpret_cast<unsigned long long*>(s + kSumY), static_cast<unsigned long long>(run * y));
  atomicAdd(reinterpret_cast<unsigned long long*>(s + kSumX),
            static_cast<unsigned long long>((static_cast<long long>(x_begin) + x_end - 1) * run / 2));
  atomicMin(s + kMinY, static_cast<long long>(y));
  atomicMax(s + kMaxY, static_cast<long long>(y));
  atomicMin(s + kMinX, static_cast<long long>(x_begin));
  atomicMax(s + kMaxX, static_cast<long long>(x_end - 1));
  atomicAdd(reinterpret_cast<unsigned long long*>(s + kSumR), static_cast<unsigned long long>(r));
  atomicAdd(reinterpret_cast<unsigned long long*>(s + kSumG), static_cast<unsigned long long>(g));
  atomicAdd(reinterpret_cast<unsigned long long*>(s + kSumB), static_cast<unsigned long long>(b));
}

// One thread per (row, 32-pixel chunk): mask bits, label runs into the accumulators, and RAG
// bits. check_labels (user label maps): out-of-range labels set status and are skipped, and
// num_nodes becomes max label + 1.
__global__ void graph_pixels_kernel(const SampleDesc* descs, const int32_t* labels, uint8_t* mask, long long* acc,
                                    unsigned long long* bits, int32_t* num_nodes, int32_t* status,
                                    bool check_labels) {
  const int s = blockIdx.z;
  const SampleDesc d = descs[s];
  const int y = blockIdx.y;
  const int x_begin = (blockIdx.x * blockDim.x + threadIdx.x) * kChunk;
  if (y >= d.height || x_begin >= d.width) return;
  const int x_end = min(x_begin + kChunk, d.width);
  const int W = d.width;
  const int32_t* row = labels + d.pixel_offset + static_cast<int64_t>(y) * W;
  const int32_t* below = y + 1 < d.height ? row + W : nullptr;
  uint8_t* mrow = mask + d.pixel_offset + static_cast<int64_t>(y) * W;
  const uint8_t* rgb = d.image + static_cast<int64_t>(y) * W * 3;
  long long* sacc = acc + d.node_offset * kAccStride;
  unsigned long long* sbits = bits + d.bitset_offset;
  const int cap = d.node_capacity;
  auto valid = [&](int32_t k) { return !check_labels || (k >= 0 && k < cap); };

  int32_t run_label = row[x_begin];
  int run_begin = x_begin;
  long long r = 0, g = 0, b = 0;
  int32_t last_a = -1, last_b = -1, local_max = -1;
  bool bad = false;
  for (int x = x_begin; x < x_end; ++x) {
    const int32_t k = row[x];
    const bool same_right = x + 1 < W && row[x + 1] == k;
    const bool same_down = below != nullptr && below[x] == k;
    mrow[x] = static_cast<uint8_t>((same_right ? 1 : 0) | (same_down ? 2 : 0));
    if (k != run_label) {
      if (valid(run_label)) flush_run(sacc, run_label, y, run_begin, x, r, g, b);
      run_label = k;
      run_begin = x;
      r = g = b = 0;
    }
    r += rgb[3 * x];
    g += rgb[3 * x + 1];
    b += rgb[3 * x + 2];
    if (!valid(k)) {
      bad = true;
      continue;
    }
    local_max = max(local_max, k);
    if (x + 1 < W && !same_right && valid(row[x + 1])) add_edge(sbits, cap, k, row[x + 1]);
    if (below != nullptr && !same_down && valid(below[x]) && !(k == last_a && below[x] == last_b)) {
      last_a = k;
      last_b = below[x];
      add_edge(sbits, cap, k, below[x]);
    }
  }
  if (valid(run_label)) flush_run(sacc, run_label, y, run_begin, x_end, r, g, b);
  if (check_labels) {
    if (bad) atomicExch(status + s, static_cast<int32_t>(kLabelOutOfRange));
    if (local_max >= 0) atomicMax(num_nodes + s, local_max + 1);
  }
}

__device__ inline double srgb_to_linear(double c) { return c <= 0.04045 ? c / 12.92 : pow((c + 0.055) / 1.055, 2.4); }

__device__ inline double lab_f_exact(double t) { return t > 0.008856 ? cbrt(t) : 7.787 * t + 16.0 / 116.0; }

__global__ void features_kernel(const SampleDesc* descs, const long long* acc, const int32_t* num_nodes,
                                float* features, int32_t* status) {
  const int s = blockIdx.y;
  const SampleDesc d = descs[s];
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= min(num_nodes[s], d.node_capacity)) return;
  const long long* a = acc + (d.node_offset + k) * kAccStride;
  float* f = features + (d.node_offset + k) * kNumFeatures;
  if (a[kCount] == 0) {  // a hole in a user label map; the CPU rejects it too
    atomicCAS(status + s, static_cast<int32_t>(kOk), static_cast<int32_t>(kLabelMissing));
    return;
  }
  const double count = static_cast<double>(a[kCount]);
  const double mean_r = a[kSumR] / count, mean_g = a[kSumG] / count, mean_b = a[kSumB] / count;
  const double rl = srgb_to_linear(mean_r / 255.0), gl = srgb_to_linear(mean_g / 255.0),
               bl = srgb_to_linear(mean_b / 255.0);
  const double X = (0.412453 * rl + 0.357580 * gl + 0.180423 * bl) / 0.95047;
  const double Y = 0.212671 * rl + 0.715160 * gl + 0.072169 * bl;
  const double Z = (0.019334 * rl + 0.119193 * gl + 0.950227 * bl) / 1.08883;
  const double fx = lab_f_exact(X), fy = lab_f_exact(Y), fz = lab_f_exact(Z);
  const double values[kNumFeatures] = {count,
                                       (a[kSumY] / count + 0.5) / d.height,
                                       (a[kSumX] / count + 0.5) / d.width,
                                       static_cast<double>(a[kMinY]) / d.height,
                                       static_cast<double>(a[kMinX]) / d.width,
                                       static_cast<double>(a[kMaxY] + 1) / d.height,
                                       static_cast<double>(a[kMaxX] + 1) / d.width,
                                       mean_r / 255.0,
                                       mean_g / 255.0,
                                       mean_b / 255.0,
                                       116.0 * fy - 16.0,
                                       500.0 * (fx - fy),
                                       200.0 * (fy - fz)};
  for (int j = 0; j < kNumFeatures; ++j) f[j] = static_cast<float>(values[j]);
}

// One block per sample: writes the set bits of the bitset as sorted (i, j) pairs.
__global__ void __launch_bounds__(1024)
    emit_edges_kernel(const SampleDesc* descs, const unsigned long long* bits, int32_t* edges, int64_t* num_edges,
                      int32_t* status) {
  constexpr int kThreads = 1024;
  const int s = blockIdx.x;
  const SampleDesc d = descs[s];
  const int64_t cap = d.node_capacity;
  const int64_t words = (cap * cap + 63) / 64;
  const unsigned long long* sbits = bits + d.bitset_offset;
  int32_t* out = edges + d.edge_offset * 2;
  __shared__ int64_t warp_sums[kThreads / 32];
  int64_t running = 0;
  for (int64_t base = 0; base < words; base += kThreads) {
    const int64_t w = base + threadIdx.x;
    unsigned long long word = w < words ? sbits[w] : 0ull;
    int64_t round_total;
    int64_t pos = running + block_exclusive_scan<kThreads>(__popcll(word), warp_sums, &round_total);
    for (; word != 0; word &= word - 1, ++pos) {
      const int64_t bit = w * 64 + __ffsll(static_cast<long long>(word)) - 1;
      if (pos < d.edge_capacity) {
        out[2 * pos] = static_cast<int32_t>(bit / cap);
        out[2 * pos + 1] = static_cast<int32_t>(bit % cap);
      }
    }
    running += round_total;
  }
  if (threadIdx.x == 0) {
    num_edges[s] = running;
    if (running > d.edge_capacity) atomicCAS(status + s, static_cast<int32_t>(kOk), static_cast<int32_t>(kEdgeOverflow));
  }
}

// Max label + 1 per sample into out[s], and out[batch + s] = 1 when a label is negative; for
// sizing a plan from user labels. out must start zeroed.
__global__ void label_bounds_kernel(const int32_t* labels, int64_t pixels_per_sample, int batch, int32_t* out) {
  const int s = blockIdx.y;
  const int64_t begin = s * pixels_per_sample, end = begin + pixels_per_sample;
  int32_t local = 0;
  bool negative = false;
  for (int64_t p = begin + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < end;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t v = labels[p];
    negative |= v < 0;
    local = max(local, v == 0x7fffffff ? v : v + 1);
  }
  if (negative) out[batch + s] = 1;
  if (local > 0) atomicMax(out + s, local);
}

}  // namespace vigsp::cuda::detail
