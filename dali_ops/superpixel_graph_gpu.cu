// fn.vigsp.superpixel_graph on the GPU backend: the same schema and outputs as the CPU operator
// (superpixel_graph.cc registers the schema), computed for the whole batch by the CUDA backend
// (csrc/cuda) on the operator's stream.
//
// rag_edges and features have data-dependent sizes, and DALI outputs must be sized on the host,
// so RunImpl synchronises once per batch to read the counts, then copies every sample's results
// from contiguous scratch into DALI's outputs with one batched copy kernel.
#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "dali/pipeline/operator/checkpointing/stateless_operator.h"
#include "vigsp/superpixel.hpp"
#include "vigsp/superpixel_cuda.hpp"
#include "superpixel_graph.h"

namespace vigsp_dali {

using ::dali::GPUBackend;
using ::dali::TensorListShape;
namespace vc = vigsp::cuda;

namespace {

enum Output : int { kLabels, kRagEdges, kFeatures, kPixelMask, kNumOutputs };

struct CopyJob {
  const void* src;
  void* dst;
  int64_t bytes;
};
constexpr int kJobsPerLaunch = 128;  // 3 KB of kernel arguments
struct CopyJobs {
  CopyJob job[kJobsPerLaunch];
};

// blockIdx.y picks the job; 16-byte words when both ends allow it.
__global__ void batched_copy_kernel(CopyJobs jobs) {
  const CopyJob j = jobs.job[blockIdx.y];
  const auto* src = static_cast<const uint8_t*>(j.src);
  auto* dst = static_cast<uint8_t*>(j.dst);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (((reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst)) & 15) == 0) {
    const int64_t words = j.bytes / 16;
    for (int64_t i = first; i < words; i += stride)
      reinterpret_cast<uint4*>(dst)[i] = reinterpret_cast<const uint4*>(src)[i];
    for (int64_t i = words * 16 + first; i < j.bytes; i += stride) dst[i] = src[i];
  } else {
    for (int64_t i = first; i < j.bytes; i += stride) dst[i] = src[i];
  }
}

void batched_copy(const std::vector<CopyJob>& jobs, cudaStream_t stream) {
  for (size_t first = 0; first < jobs.size(); first += kJobsPerLaunch) {
    CopyJobs chunk{};
    const int count = static_cast<int>(std::min<size_t>(kJobsPerLaunch, jobs.size() - first));
    std::copy_n(jobs.begin() + first, count, chunk.job);
    batched_copy_kernel<<<dim3(16, count), 256, 0, stream>>>(chunk);
    const cudaError_t err = cudaGetLastError();
    DALI_ENFORCE(err == cudaSuccess, std::string("vigsp.superpixel_graph: copy kernel: ") + cudaGetErrorString(err));
  }
}

std::string describe_sample(const ::dali::TensorList<GPUBackend>& input, int i) {
  const std::string& source = input.GetMeta(i).GetSourceInfo();
  return source.empty() ? "sample " + std::to_string(i) + " of the batch" : "'" + source + "'";
}

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

}  // namespace

class SuperpixelGraphGPU : public ::dali::StatelessOperator<GPUBackend> {
 public:
  explicit SuperpixelGraphGPU(const ::dali::OpSpec& spec) : ::dali::StatelessOperator<GPUBackend>(spec) {
    const OpArgs args = read_op_args(spec);  // the CPU operator's parsing (superpixel_graph.cc)
    mode_ = args.grid ? vc::Mode::kGrid : vc::Mode::kSlic;
    params_ = args.params;
  }
  ~SuperpixelGraphGPU() override { vc::device_free(scratch_); }

 protected:
  bool SetupImpl(std::vector<::dali::OutputDesc>& output_desc, const ::dali::Workspace& ws) override {
    return false;  // sizes depend on the data; RunImpl sets them
  }
  void RunImpl(::dali::Workspace& ws) override;

 private:
  vc::Mode mode_ = vc::Mode::kSlic;
  vigsp::SlicParams params_;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
};

void SuperpixelGraphGPU::RunImpl(::dali::Workspace& ws) {
  const auto& input = ws.Input<GPUBackend>(0);
  const int batch = input.num_samples();
  DALI_ENFORCE(input.type() == DALI_UINT8,
               "vigsp.superpixel_graph expects uint8 images (decoded RGB, before normalisation)");
  const auto& in_shape = input.shape();
  std::vector<vc::SampleShape> shapes(batch);
  std::vector<const uint8_t*> images(batch);
  TensorListShape<> map_shape(batch, 2);
  for (int i = 0; i < batch; ++i) {
    const auto sh = in_shape.tensor_shape_span(i);
    DALI_ENFORCE(sh.size() == 3 && sh[2] == 3,
                 "vigsp.superpixel_graph expects HWC images with 3 channels (RGB); " + describe_sample(input, i) +
                     " has a different shape. Decode with output_type=types.RGB.");
    shapes[i] = {static_cast<int>(sh[0]), static_cast<int>(sh[1])};
    images[i] = input.tensor<uint8_t>(i);
    map_shape.set_tensor_shape(i, {sh[0], sh[1]});
  }
  vc::BatchPlan plan;
  try {
    plan = vc::make_plan(shapes, mode_, params_);
  } catch (const std::exception& whole) {
    // Name the first sample that fails on its own, as the CPU operator does.
    for (int i = 0; i < batch; ++i) {
      try {
        vc::make_plan(std::span(shapes).subspan(i, 1), mode_, params_);
      } catch (const std::exception& e) {
        throw std::invalid_argument("vigsp.superpixel_graph failed on " + describe_sample(input, i) + ": " +
                                    e.what());
      }
    }
    throw std::invalid_argument(std::string("vigsp.superpixel_graph failed: ") + whole.what());
  }

  // One scratch block: the backend's workspace, then the contiguous outputs.
  const int64_t pixels = plan.total_pixels(), nodes = plan.total_nodes(), edges = plan.total_edges();
  const size_t work = align256(vc::workspace_bytes(plan));
  const size_t off_labels = work, off_mask = off_labels + align256(pixels * 4),
               off_features = off_mask + align256(pixels), off_edges = off_features + align256(nodes * 13 * 4),
               off_counts = off_edges + align256(edges * 8), total = off_counts + align256(batch * 16);
  cudaStream_t stream = ws.stream();
  if (total > scratch_bytes_) {
    vc::stream_synchronize(stream);  // the previous batch's copies may still read the old block
    vc::device_free(scratch_);
    scratch_ = nullptr;
    scratch_bytes_ = 0;
    scratch_ = vc::device_alloc(total + total / 4);  // headroom for slightly larger batches
    scratch_bytes_ = total + total / 4;
  }
  auto* base = static_cast<char*>(scratch_);
  vc::BatchOutputs out;
  out.labels = reinterpret_cast<int32_t*>(base + off_labels);
  out.pixel_mask = reinterpret_cast<uint8_t*>(base + off_mask);
  out.features = reinterpret_cast<float*>(base + off_features);
  out.rag_edges = reinterpret_cast<int32_t*>(base + off_edges);
  out.num_edges = reinterpret_cast<int64_t*>(base + off_counts);
  out.num_nodes = reinterpret_cast<int32_t*>(base + off_counts + batch * 8);
  out.status = reinterpret_cast<int32_t*>(base + off_counts + batch * 12);
  vc::run(plan, images, base, out, stream);

  std::vector<int64_t> counts(batch * 2);  // num_edges, then num_nodes and status as int32 pairs
  vc::copy_to_host(counts.data(), base + off_counts, batch * 16, stream);
  const auto* num_edges = counts.data();
  const auto* num_nodes = reinterpret_cast<const int32_t*>(counts.data() + batch);
  const auto* status = num_nodes + batch;
  for (int i = 0; i < batch; ++i)
    if (status[i] != vc::kOk)
      throw std::invalid_argument("vigsp.superpixel_graph failed on " + describe_sample(input, i) + ": " +
                                  vc::status_message(status[i]));

  TensorListShape<> edge_shape(batch, 2), feature_shape(batch, 2);
  for (int i = 0; i < batch; ++i) {
    edge_shape.set_tensor_shape(i, {num_edges[i], 2});
    feature_shape.set_tensor_shape(i, {num_nodes[i], vigsp::kNumFeatures});
  }
  auto& labels_out = ws.Output<GPUBackend>(kLabels);
  auto& mask_out = ws.Output<GPUBackend>(kPixelMask);
  auto& edges_out = ws.Output<GPUBackend>(kRagEdges);
  auto& features_out = ws.Output<GPUBackend>(kFeatures);
  labels_out.Resize(map_shape, DALI_INT32);
  mask_out.Resize(map_shape, DALI_UINT8);
  edges_out.Resize(edge_shape, DALI_INT32);
  features_out.Resize(feature_shape, DALI_FLOAT);
  labels_out.SetLayout("HW");
  mask_out.SetLayout("HW");

  std::vector<CopyJob> jobs;
  jobs.reserve(4 * batch);
  for (int i = 0; i < batch; ++i) {
    const int64_t n = plan.pixel_offset[i + 1] - plan.pixel_offset[i];
    jobs.push_back({out.labels + plan.pixel_offset[i], labels_out.mutable_tensor<int32_t>(i), n * 4});
    jobs.push_back({out.pixel_mask + plan.pixel_offset[i], mask_out.mutable_tensor<uint8_t>(i), n});
    if (num_edges[i] > 0)
      jobs.push_back({out.rag_edges + 2 * plan.edge_offset[i], edges_out.mutable_tensor<int32_t>(i),
                      num_edges[i] * 8});
    if (num_nodes[i] > 0)
      jobs.push_back({out.features + plan.node_offset[i] * vigsp::kNumFeatures,
                      features_out.mutable_tensor<float>(i), int64_t{num_nodes[i]} * vigsp::kNumFeatures * 4});
  }
  batched_copy(jobs, stream);
}

}  // namespace vigsp_dali

DALI_REGISTER_OPERATOR(vigsp__SuperpixelGraph, ::vigsp_dali::SuperpixelGraphGPU, ::dali::GPU);
