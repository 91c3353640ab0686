#include "superpixel_graph.h"

#include <algorithm>
#include <exception>
#include <mutex>

namespace vigsp_dali {

using ::dali::CPUBackend;
using ::dali::TensorListShape;

namespace {

enum Output : int { kLabels, kRagEdges, kFeatures, kPixelMask, kNumOutputs };

std::string describe_sample(const ::dali::TensorList<CPUBackend> &input, int i) {
  const std::string &source = input.GetMeta(i).GetSourceInfo();
  return source.empty() ? "sample " + std::to_string(i) + " of the batch" : "'" + source + "'";
}

}  // namespace

OpArgs read_op_args(const ::dali::OpSpec &spec) {
  OpArgs args;
  const auto method = spec.GetArgument<std::string>("method");
  DALI_ENFORCE(method == "slic" || method == "grid",
               "vigsp.superpixel_graph: method must be 'slic' or 'grid', got '" + method + "'");
  args.grid = method == "grid";
  args.params.n_segments = spec.GetArgument<int>("n_segments");
  args.params.compactness = spec.GetArgument<float>("compactness");
  args.params.max_iter = spec.GetArgument<int>("max_iter");
  args.params.min_size_factor = spec.GetArgument<float>("min_size_factor");
  args.params.subsample_stride = spec.GetArgument<int>("subsample_stride");
  DALI_ENFORCE(args.params.n_segments > 0, "vigsp.superpixel_graph: n_segments must be positive");
  return args;
}

SuperpixelGraphCPU::SuperpixelGraphCPU(const ::dali::OpSpec &spec)
    : ::dali::StatelessOperator<CPUBackend>(spec) {
  const OpArgs args = read_op_args(spec);
  grid_mode_ = args.grid;
  params_ = args.params;
}

void SuperpixelGraphCPU::RunImpl(::dali::Workspace &ws) {
  const auto &input = ws.Input<CPUBackend>(0);
  const int batch = input.num_samples();
  DALI_ENFORCE(input.type() == DALI_UINT8,
               "vigsp.superpixel_graph expects uint8 images (decoded RGB, before normalisation)");
  const auto &in_shape = input.shape();
  TensorListShape<> map_shape(batch, 2);
  for (int i = 0; i < batch; ++i) {
    const auto sh = in_shape.tensor_shape_span(i);
    DALI_ENFORCE(sh.size() == 3 && sh[2] == 3,
                 "vigsp.superpixel_graph expects HWC images with 3 channels (RGB); " +
                     describe_sample(input, i) + " has a different shape. Decode with output_type=types.RGB.");
    map_shape.set_tensor_shape(i, {sh[0], sh[1]});
  }

  auto &labels_out = ws.Output<CPUBackend>(kLabels);
  auto &mask_out = ws.Output<CPUBackend>(kPixelMask);
  labels_out.Resize(map_shape, DALI_INT32);
  mask_out.Resize(map_shape, DALI_UINT8);
  labels_out.SetLayout("HW");
  mask_out.SetLayout("HW");

  auto &pool = ws.GetThreadPool();
  workspaces_.resize(pool.NumThreads() + 1);
  graphs_.resize(batch);
  num_labels_.assign(batch, 0);
  std::mutex error_mutex;
  std::string first_error;

  auto process = [&](int i, int tid) {
    const auto sh = in_shape.tensor_shape_span(i);
    try {
      const auto image =
          vigsp::make_image_view(input.tensor<uint8_t>(i), static_cast<int>(sh[0]), static_cast<int>(sh[1]));
      int32_t *labels = labels_out.mutable_tensor<int32_t>(i);
      auto &scratch = workspaces_[tid + 1];
      num_labels_[i] = grid_mode_ ? vigsp::grid_labels(image.height, image.width, params_.n_segments, labels)
                                  : vigsp::slic(image, params_, labels, scratch);
      vigsp::build_graph(image, labels, num_labels_[i], mask_out.mutable_tensor<uint8_t>(i), graphs_[i], scratch);
    } catch (const std::exception &e) {
      // Report the user's problem (file and reason), not a C++ stack trace.
      std::lock_guard<std::mutex> lock(error_mutex);
      if (first_error.empty()) first_error = describe_sample(input, i) + ": " + e.what();
    }
  };
  // Small images (Fashion-MNIST: 28x28 in tens of microseconds) go to the pool in groups of
  // consecutive samples, so that queueing a task per sample does not cost as much as the work;
  // but at least kTasksPerThread groups per thread, or a few large groups leave threads idle
  // (3 groups on 2 threads take as long as 4).
  constexpr int64_t kMinTaskPixels = 32 * 32 * 4, kMaxTaskPixels = 64 * 64 * 4;
  constexpr int kTasksPerThread = 4;
  int64_t batch_pixels = 0;
  for (int i = 0; i < batch; ++i) batch_pixels += in_shape.tensor_size(i) / 3;
  const int64_t task_pixels = std::clamp<int64_t>(
      batch_pixels / (kTasksPerThread * std::max(1, pool.NumThreads())), kMinTaskPixels, kMaxTaskPixels);
  int first = 0;
  while (first < batch) {
    int last = first;
    int64_t pixels = 0;
    while (last < batch && (last == first || pixels < task_pixels)) pixels += in_shape.tensor_size(last++) / 3;
    pool.AddWork(
        [&process, first, last](int tid) {
          for (int i = first; i < last; ++i) process(i, tid);
        },
        pixels);  // larger work first
    first = last;
  }
  pool.RunAll();
  if (!first_error.empty()) throw std::invalid_argument("vigsp.superpixel_graph failed on " + first_error);

  TensorListShape<> edge_shape(batch, 2), feature_shape(batch, 2);
  for (int i = 0; i < batch; ++i) {
    edge_shape.set_tensor_shape(i, {graphs_[i].num_rag_edges(), 2});
    feature_shape.set_tensor_shape(i, {graphs_[i].num_nodes, vigsp::kNumFeatures});
  }
  auto &edges_out = ws.Output<CPUBackend>(kRagEdges);
  auto &features_out = ws.Output<CPUBackend>(kFeatures);
  edges_out.Resize(edge_shape, DALI_INT32);
  features_out.Resize(feature_shape, DALI_FLOAT);
  for (int i = 0; i < batch; ++i) {
    std::copy(graphs_[i].rag_edges.begin(), graphs_[i].rag_edges.end(), edges_out.mutable_tensor<int32_t>(i));
    std::copy(graphs_[i].features.begin(), graphs_[i].features.end(), features_out.mutable_tensor<float>(i));
  }
}

}  // namespace vigsp_dali

DALI_REGISTER_OPERATOR(vigsp__SuperpixelGraph, ::vigsp_dali::SuperpixelGraphCPU, ::dali::CPU);

DALI_SCHEMA(vigsp__SuperpixelGraph)
    .DocStr(R"(SLIC (or grid) superpixels and the superpixel graph of each RGB image.

Outputs, per sample:
  labels      [H, W] int32   compact superpixel ids 0..N-1, each one 4-connected region
  rag_edges   [E, 2] int32   unique region adjacency edges (i < j), sorted
  features    [N, 13] float32 count, centroid (y, x), bbox (y0, x0, y1, x1), mean RGB, mean Lab
  pixel_mask  [H, W] uint8   intra-superpixel pixel graph: bit 0 = right neighbour has the same
                             label, bit 1 = down neighbour has the same label)")
    .NumInput(1)
    .NumOutput(4)
    .InputLayout(0, "HWC")
    .AddOptionalArg("method", "'slic' for SLIC superpixels, 'grid' for square cells (ViG-SP-Grid)",
                    std::string("slic"))
    .AddOptionalArg("n_segments", "wanted number of superpixels (SLIC's result is close to it)", 196)
    .AddOptionalArg("compactness", "SLIC's balance of space against colour (skimage's meaning)", 10.0f)
    .AddOptionalArg("max_iter", "SLIC k-means iterations", 10)
    .AddOptionalArg("min_size_factor", "SLIC segments below this fraction of the mean size are merged", 0.5f)
    .AddOptionalArg("subsample_stride",
                    "SLIC iterations assign every n-th row (rotating), then one full pass; 1 = classic SLIC", 1);
