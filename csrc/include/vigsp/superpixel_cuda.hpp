// vigsp CUDA backend: SLIC (or grid cells) and the superpixel graph for a whole batch on one
// CUDA stream. Host-side API only: no CUDA headers needed to include it.
//
// Semantics mirror the CPU core (superpixel.hpp) step by step; csrc/cuda/slic_kernels.cuh and
// graph_kernels.cuh say how. In short:
//  - Lab conversion, centre init, distances (no FMA contraction) and the k-means sums (exact
//    fixed-point integers) are bit-identical to the CPU, so SLIC labels match exactly unless the
//    device's arithmetic differs from the host's, which IEEE float ops do not;
//  - the graph parts of one label map equal the CPU's exactly, except the three CIELAB feature
//    columns, which use the device's double pow/cbrt (<= 2 ulp in double) and may differ from
//    the host's by one float ulp with a probability of about 1e-8 per value.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "vigsp/superpixel.hpp"

// The same type as cuda_runtime.h's cudaStream_t (a redeclaration of an identical typedef).
typedef struct CUstream_st* cudaStream_t;

namespace vigsp::cuda {

// Number of usable CUDA devices; 0 when there is no driver or no device. Never throws.
int device_count() noexcept;

// Raised on CUDA runtime failures (the message names the call and CUDA's error string).
class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class Mode : int { kSlic = 0, kGrid = 1, kLabels = 2 };

struct SampleShape {
  int height = 0;
  int width = 0;
};

// Where each sample's data lives in the contiguous batch buffers, and how large they are.
// Computed on the host from the shapes and parameters alone (no device access).
struct BatchPlan {
  Mode mode = Mode::kSlic;
  SlicParams params;
  int batch = 0;
  std::vector<SampleShape> shapes;
  std::vector<int64_t> pixel_offset;    // per sample, into labels / pixel_mask (batch + 1 entries)
  std::vector<int32_t> grid_rows, grid_cols;
  std::vector<int64_t> cluster_offset;  // into k-means centres (batch + 1)
  std::vector<int32_t> node_capacity;   // most labels a sample can have
  std::vector<int64_t> node_offset;     // into features, in nodes (batch + 1)
  std::vector<int64_t> edge_capacity;   // most RAG edges a sample can have
  std::vector<int64_t> edge_offset;     // into rag_edges, in edges (batch + 1)
  std::vector<int64_t> bitset_offset;   // into the RAG bitset, in 64-bit words (batch + 1)
  int max_height = 0, max_width = 0, max_clusters = 0, max_nodes = 0;

  int64_t total_pixels() const { return pixel_offset.back(); }
  int64_t total_nodes() const { return node_offset.back(); }
  int64_t total_edges() const { return edge_offset.back(); }
};

// Validates parameters and shapes (throws InvalidArgument like the CPU core) and lays out the
// batch. label_capacity: for Mode::kLabels, an upper bound on labels per sample (max label + 1).
BatchPlan make_plan(std::span<const SampleShape> shapes, Mode mode, const SlicParams& params,
                    int label_capacity = 0);

// Device scratch bytes run() needs for this plan.
size_t workspace_bytes(const BatchPlan& plan);

// Device pointers, contiguous per the plan's offsets.
struct BatchOutputs {
  int32_t* labels = nullptr;      // total_pixels; for Mode::kLabels the caller's input labels go here
  uint8_t* pixel_mask = nullptr;  // total_pixels
  float* features = nullptr;      // total_nodes * kNumFeatures; rows past num_nodes are zero
  int32_t* rag_edges = nullptr;   // total_edges * 2; pairs past num_edges are -1
  int32_t* num_nodes = nullptr;   // batch
  int64_t* num_edges = nullptr;   // batch (may exceed edge_capacity only if the plan was wrong;
                                  // then only edge_capacity pairs were written)
  // Per sample, 0 = fine; else an InvalidArgument reason for Mode::kLabels (see error_message).
  int32_t* status = nullptr;      // batch
};

enum Status : int32_t { kOk = 0, kLabelOutOfRange = 1, kLabelMissing = 2, kEdgeOverflow = 3 };
const char* status_message(int32_t status);

// Runs the whole batch on `stream`: kernels and async memsets/copies only, no synchronisation
// and no allocation. images[i] points to sample i's dense HxWx3 uint8 RGB on the device.
// workspace: workspace_bytes(plan) device bytes (any alignment >= 256).
void run(const BatchPlan& plan, std::span<const uint8_t* const> images, void* workspace,
         const BatchOutputs& outputs, cudaStream_t stream);

// For Mode::kLabels on a uniform batch (batch x pixels_per_sample labels, device): writes
// out[s] = max label + 1 and out[batch + s] = 1 if sample s has a negative label (2 * batch
// int32 on the device), so a caller can size the plan. Asynchronous on `stream`.
void label_bounds(const int32_t* labels, int batch, int64_t pixels_per_sample, int32_t* out,
                  cudaStream_t stream);

// Thin wrappers over the runtime for callers that do not include cuda_runtime.h.
void* device_alloc(size_t bytes);
void device_free(void* ptr) noexcept;
void* device_alloc_async(size_t bytes, cudaStream_t stream);
void device_free_async(void* ptr, cudaStream_t stream) noexcept;
void copy_to_host(void* dst, const void* src, size_t bytes, cudaStream_t stream);  // then syncs
void copy_to_device(void* dst, const void* src, size_t bytes, cudaStream_t stream);
void copy_device(void* dst, const void* src, size_t bytes, cudaStream_t stream);  // device to device
void stream_synchronize(cudaStream_t stream);
int current_device();
void set_device(int device);
// The device a pointer lives on, or -1 when it is not device memory.
int pointer_device(const void* ptr) noexcept;

}  // namespace vigsp::cuda
