// Host side of the CUDA backend: plans, scratch layout and the launch sequence of one batch.
// Kernels live in slic_kernels.cuh and graph_kernels.cuh; semantics are documented there.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "common.cuh"
#include "graph_kernels.cuh"
#include "slic_kernels.cuh"
#include "vigsp/superpixel_cuda.hpp"

namespace vigsp::cuda {
namespace {

using namespace detail;

constexpr int kThreads = 256;
constexpr int64_t kMaxBitsetBytesPerSample = int64_t{256} << 20;

int64_t slic_min_size(const SlicParams& p, int64_t n, int num_clusters) {
  return static_cast<int64_t>(p.min_size_factor * static_cast<double>(n) / num_clusters);
}

// The CPU's sRGB byte -> linear table, computed with the same double formula on the host.
LinearLut make_lut() {
  LinearLut lut{};
  for (int i = 0; i < 256; ++i) {
    const double c = i / 255.0;
    lut.value[i] = static_cast<float>(c <= 0.04045 ? c / 12.92 : std::pow((c + 0.055) / 1.055, 2.4));
  }
  return lut;
}

struct Layout {
  size_t descs = 0, lab = 0, assignment = 0, centers = 0, sums = 0, changed = 0, done = 0, parent = 0, size = 0,
         head_label = 0, acc = 0, bits = 0, total = 0;
};

Layout layout_of(const BatchPlan& plan) {
  Layout l;
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t here = at;
    at += (bytes + 255) / 256 * 256;
    return here;
  };
  const auto pixels = static_cast<size_t>(plan.total_pixels());
  const auto batch = static_cast<size_t>(plan.batch);
  l.descs = take(batch * sizeof(SampleDesc));
  if (plan.mode == Mode::kSlic) {
    const auto clusters = static_cast<size_t>(plan.cluster_offset.back());
    l.lab = take(3 * pixels * sizeof(float));
    l.assignment = take(pixels * sizeof(int32_t));
    l.centers = take(clusters * kCenterStride * sizeof(float));
    l.sums = take(clusters * kSumStride * sizeof(unsigned long long));
    l.changed = take(batch * sizeof(unsigned long long));
    l.done = take(batch * sizeof(int32_t));
    l.parent = take(pixels * sizeof(int32_t));
    l.size = take(pixels * sizeof(int32_t));
    l.head_label = take(pixels * sizeof(int32_t));
  }
  l.acc = take(static_cast<size_t>(plan.total_nodes()) * kAccStride * sizeof(long long));
  l.bits = take(static_cast<size_t>(plan.bitset_offset.back()) * sizeof(unsigned long long));
  l.total = at;
  return l;
}

std::vector<SampleDesc> descs_of(const BatchPlan& plan, std::span<const uint8_t* const> images) {
  std::vector<SampleDesc> out(plan.batch);
  for (int i = 0; i < plan.batch; ++i) {
    SampleDesc& d = out[i];
    const auto [h, w] = plan.shapes[i];
    const int64_t n = static_cast<int64_t>(h) * w;
    d.image = images[i];
    d.height = h;
    d.width = w;
    d.pixel_offset = plan.pixel_offset[i];
    d.grid_rows = plan.grid_rows[i];
    d.grid_cols = plan.grid_cols[i];
    d.cluster_offset = plan.cluster_offset[i];
    d.num_clusters = d.grid_rows * d.grid_cols;
    d.stride = std::min(plan.params.subsample_stride, h);
    if (plan.mode == Mode::kSlic) {
      d.step_y = static_cast<float>(h) / d.grid_rows;
      d.step_x = static_cast<float>(w) / d.grid_cols;
      const double step = std::sqrt(static_cast<double>(n) / d.num_clusters);
      const float c = plan.params.compactness;
      d.spatial_weight = static_cast<float>((c / step) * (c / step));
      d.min_size = slic_min_size(plan.params, n, d.num_clusters);
    }
    d.node_capacity = plan.node_capacity[i];
    d.node_offset = plan.node_offset[i];
    d.edge_capacity = plan.edge_capacity[i];
    d.edge_offset = plan.edge_offset[i];
    d.bitset_offset = plan.bitset_offset[i];
  }
  return out;
}

}  // namespace

int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver / no device: not an error for us
    return 0;
  }
  return n;
}

const char* status_message(int32_t status) {
  switch (status) {
    case kOk:
      return "ok";
    case kLabelOutOfRange:
      return "labels must lie in 0..n-1 (a label is negative or too large)";
    case kLabelMissing:
      return "labels must be compact 0..n-1 but some label in that range has no pixel; relabel with "
             "numpy.unique(labels, return_inverse=True)";
    case kEdgeOverflow:
      return "internal error: more region adjacency edges than the plan allowed";
    default:
      return "unknown status";
  }
}

BatchPlan make_plan(std::span<const SampleShape> shapes, Mode mode, const SlicParams& params, int label_capacity) {
  if (mode == Mode::kSlic) vigsp::check_slic_params(params);  // the CPU core's checks
  if (mode != Mode::kLabels && params.n_segments <= 0)
    throw InvalidArgument("n_segments must be positive, got " + std::to_string(params.n_segments));
  if (mode == Mode::kLabels && label_capacity <= 0)
    throw InvalidArgument("a label map needs at least one label");
  if (shapes.empty()) throw InvalidArgument("the batch is empty");
  if (shapes.size() > 65535) throw InvalidArgument("a CUDA batch holds at most 65535 images");
  BatchPlan plan;
  plan.mode = mode;
  plan.params = params;
  plan.batch = static_cast<int>(shapes.size());
  plan.shapes.assign(shapes.begin(), shapes.end());
  plan.pixel_offset = {0};
  plan.cluster_offset = {0};
  plan.node_offset = {0};
  plan.edge_offset = {0};
  plan.bitset_offset = {0};
  for (const auto [h, w] : shapes) {
    if (h <= 0 || w <= 0)
      throw InvalidArgument("image must be at least 1x1, got " + std::to_string(h) + "x" + std::to_string(w));
    if (h > 65535) throw InvalidArgument("the CUDA backend handles images up to 65535 rows, got " + std::to_string(h));
    const int64_t n = static_cast<int64_t>(h) * w;
    if (n > std::numeric_limits<int32_t>::max()) throw InvalidArgument("image too large for the CUDA backend");
    int rows = 0, cols = 0;
    if (mode != Mode::kLabels) {
      const GridShape g = grid_shape(h, w, params.n_segments);
      rows = g.rows;
      cols = g.cols;
    }
    const int64_t clusters = static_cast<int64_t>(rows) * cols;
    int64_t nodes = 0;
    if (mode == Mode::kSlic) {
      // A label is a component of at least min_size pixels, or the one holding pixel 0.
      const int64_t min_size = slic_min_size(params, n, static_cast<int>(clusters));
      nodes = min_size >= 1 ? std::min(n, n / min_size + 1) : n;
    } else if (mode == Mode::kGrid) {
      nodes = clusters;
    } else {
      nodes = std::min<int64_t>(label_capacity, n);
    }
    // Connected regions (SLIC, grid) make a planar adjacency graph: E <= 3N - 6. Any map: each
    // edge needs its own boundary pixel pair, of which there are at most 2n.
    int64_t edges = std::min(nodes * (nodes - 1) / 2, 2 * n);
    if (mode != Mode::kLabels) edges = std::min(edges, 3 * nodes);
    const int64_t words = (nodes * nodes + 63) / 64;
    if (words * 8 > kMaxBitsetBytesPerSample)
      throw InvalidArgument("the CUDA backend's adjacency bitset would need " + std::to_string(words * 8 >> 20) +
                            " MiB for " + std::to_string(nodes) +
                            " possible superpixels in one image; raise min_size_factor, use fewer segments, or "
                            "use the CPU core");
    plan.grid_rows.push_back(rows);
    plan.grid_cols.push_back(cols);
    plan.node_capacity.push_back(static_cast<int32_t>(nodes));
    plan.edge_capacity.push_back(edges);
    plan.pixel_offset.push_back(plan.pixel_offset.back() + n);
    plan.cluster_offset.push_back(plan.cluster_offset.back() + clusters);
    plan.node_offset.push_back(plan.node_offset.back() + nodes);
    plan.edge_offset.push_back(plan.edge_offset.back() + edges);
    plan.bitset_offset.push_back(plan.bitset_offset.back() + words);
    plan.max_height = std::max(plan.max_height, h);
    plan.max_width = std::max(plan.max_width, w);
    plan.max_clusters = std::max(plan.max_clusters, static_cast<int>(clusters));
    plan.max_nodes = std::max(plan.max_nodes, static_cast<int>(nodes));
  }
  return plan;
}

size_t workspace_bytes(const BatchPlan& plan) { return layout_of(plan).total; }

void run(const BatchPlan& plan, std::span<const uint8_t* const> images, void* workspace, const BatchOutputs& out,
         cudaStream_t stream) {
  if (static_cast<int>(images.size()) != plan.batch)
    throw InvalidArgument("run: " + std::to_string(images.size()) + " images for a plan of " +
                          std::to_string(plan.batch));
  const Layout lay = layout_of(plan);
  char* ws = static_cast<char*>(workspace);
  auto* descs = reinterpret_cast<SampleDesc*>(ws + lay.descs);
  const int B = plan.batch;
  const int64_t total = plan.total_pixels();
  const int64_t max_pixels = static_cast<int64_t>(plan.max_height) * plan.max_width;
  const dim3 per_pixel(blocks_for(max_pixels, kThreads), B);

  {  // descriptors travel as kernel arguments: no host buffer the stream would have to wait for
    const std::vector<SampleDesc> host = descs_of(plan, images);
    for (int first = 0; first < B; first += kDescChunk) {
      DescChunk chunk{};
      chunk.first = first;
      chunk.count = std::min(kDescChunk, B - first);
      std::copy_n(host.begin() + first, chunk.count, chunk.desc);
      write_descs_kernel<<<1, kDescChunk, 0, stream>>>(chunk, descs);
      VIGSP_CUDA_LAUNCHED("write_descs_kernel");
    }
  }
  VIGSP_CUDA_CHECK(cudaMemsetAsync(out.status, 0, B * sizeof(int32_t), stream));
  VIGSP_CUDA_CHECK(cudaMemsetAsync(out.num_edges, 0, B * sizeof(int64_t), stream));
  VIGSP_CUDA_CHECK(cudaMemsetAsync(out.features, 0, plan.total_nodes() * kNumFeatures * sizeof(float), stream));
  VIGSP_CUDA_CHECK(cudaMemsetAsync(out.rag_edges, 0xff, plan.total_edges() * 2 * sizeof(int32_t), stream));

  if (plan.mode == Mode::kSlic) {
    auto* lab = reinterpret_cast<float*>(ws + lay.lab);
    auto* assignment = reinterpret_cast<int32_t*>(ws + lay.assignment);
    auto* centers = reinterpret_cast<float*>(ws + lay.centers);
    auto* sums = reinterpret_cast<unsigned long long*>(ws + lay.sums);
    auto* changed = reinterpret_cast<unsigned long long*>(ws + lay.changed);
    auto* done = reinterpret_cast<int32_t*>(ws + lay.done);
    const int64_t clusters = plan.cluster_offset.back();
    lab_kernel<<<per_pixel, kThreads, 0, stream>>>(descs, make_lut(), lab, total);
    VIGSP_CUDA_LAUNCHED("lab_kernel");
    const dim3 per_cluster(blocks_for(plan.max_clusters, 128), B);
    init_centers_kernel<<<per_cluster, 128, 0, stream>>>(descs, lab, total, centers);
    VIGSP_CUDA_LAUNCHED("init_centers_kernel");
    VIGSP_CUDA_CHECK(cudaMemsetAsync(assignment, 0xff, total * sizeof(int32_t), stream));
    VIGSP_CUDA_CHECK(cudaMemsetAsync(done, 0, B * sizeof(int32_t), stream));
    const dim3 tiles(blocks_for(plan.max_width, kTileW), blocks_for(plan.max_height, kTileH), B);
    const dim3 tile_threads(kTileW, kTileH);
    for (int it = 0; it < plan.params.max_iter; ++it) {
      VIGSP_CUDA_CHECK(cudaMemsetAsync(sums, 0, clusters * kSumStride * sizeof(unsigned long long), stream));
      VIGSP_CUDA_CHECK(cudaMemsetAsync(changed, 0, B * sizeof(unsigned long long), stream));
      assign_kernel<<<tiles, tile_threads, 0, stream>>>(descs, lab, total, centers, assignment, sums, changed, done,
                                                        it, false);
      VIGSP_CUDA_LAUNCHED("assign_kernel");
      move_centers_kernel<<<per_cluster, 128, 0, stream>>>(descs, sums, changed, done, centers);
      VIGSP_CUDA_LAUNCHED("move_centers_kernel");
    }
    if (plan.params.subsample_stride > 1) {  // label every row of the subsampled samples
      assign_kernel<<<tiles, tile_threads, 0, stream>>>(descs, lab, total, centers, assignment, sums, changed, done,
                                                        0, true);
      VIGSP_CUDA_LAUNCHED("assign_kernel (final pass)");
    }
    // Connectivity enforcement; parent, size and head_label reuse nothing, so no ordering hazards.
    auto* parent = reinterpret_cast<int32_t*>(ws + lay.parent);
    auto* size = reinterpret_cast<int32_t*>(ws + lay.size);
    auto* head_label = reinterpret_cast<int32_t*>(ws + lay.head_label);
    cc_init_kernel<<<per_pixel, kThreads, 0, stream>>>(descs, parent);
    VIGSP_CUDA_LAUNCHED("cc_init_kernel");
    cc_union_kernel<<<per_pixel, kThreads, 0, stream>>>(descs, assignment, parent);
    VIGSP_CUDA_LAUNCHED("cc_union_kernel");
    VIGSP_CUDA_CHECK(cudaMemsetAsync(size, 0, total * sizeof(int32_t), stream));
    cc_flatten_kernel<<<per_pixel, kThreads, 0, stream>>>(descs, parent, size);
    VIGSP_CUDA_LAUNCHED("cc_flatten_kernel");
    number_components_kernel<<<B, kScanThreads, 0, stream>>>(descs, parent, size, head_label, out.num_nodes);
    VIGSP_CUDA_LAUNCHED("number_components_kernel");
    final_labels_kernel<<<per_pixel, kThreads, 0, stream>>>(descs, parent, head_label, out.labels);
    VIGSP_CUDA_LAUNCHED("final_labels_kernel");
  } else if (plan.mode == Mode::kGrid) {
    grid_labels_kernel<<<per_pixel, kThreads, 0, stream>>>(descs, out.labels, out.num_nodes);
    VIGSP_CUDA_LAUNCHED("grid_labels_kernel");
  } else {
    VIGSP_CUDA_CHECK(cudaMemsetAsync(out.num_nodes, 0, B * sizeof(int32_t), stream));
  }

  // The graph of the label maps.
  auto* acc = reinterpret_cast<long long*>(ws + lay.acc);
  auto* bits = reinterpret_cast<unsigned long long*>(ws + lay.bits);
  const dim3 per_node(blocks_for(plan.max_nodes, 128), B);
  init_accumulators_kernel<<<per_node, 128, 0, stream>>>(descs, acc);
  VIGSP_CUDA_LAUNCHED("init_accumulators_kernel");
  VIGSP_CUDA_CHECK(cudaMemsetAsync(bits, 0, plan.bitset_offset.back() * sizeof(unsigned long long), stream));
  constexpr int kRowThreads = 64;
  const dim3 per_row(blocks_for(blocks_for(plan.max_width, kChunk), kRowThreads), plan.max_height, B);
  graph_pixels_kernel<<<per_row, kRowThreads, 0, stream>>>(descs, out.labels, out.pixel_mask, acc, bits,
                                                           out.num_nodes, out.status, plan.mode == Mode::kLabels);
  VIGSP_CUDA_LAUNCHED("graph_pixels_kernel");
  features_kernel<<<per_node, 128, 0, stream>>>(descs, acc, out.num_nodes, out.features, out.status);
  VIGSP_CUDA_LAUNCHED("features_kernel");
  emit_edges_kernel<<<B, 1024, 0, stream>>>(descs, bits, out.rag_edges, out.num_edges, out.status);
  VIGSP_CUDA_LAUNCHED("emit_edges_kernel");
}

void label_bounds(const int32_t* labels, int batch, int64_t pixels_per_sample, int32_t* out, cudaStream_t stream) {
  VIGSP_CUDA_CHECK(cudaMemsetAsync(out, 0, 2 * batch * sizeof(int32_t), stream));
  const unsigned blocks = std::min<unsigned>(blocks_for(pixels_per_sample, kThreads), 64);
  label_bounds_kernel<<<dim3(blocks, batch), kThreads, 0, stream>>>(labels, pixels_per_sample, batch, out);
  VIGSP_CUDA_LAUNCHED("label_bounds_kernel");
}

void* device_alloc(size_t bytes) {
  void* p = nullptr;
  VIGSP_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(bytes, 1)));
  return p;
}
void device_free(void* ptr) noexcept {
  if (ptr != nullptr) cudaFree(ptr);
}
void* device_alloc_async(size_t bytes, cudaStream_t stream) {
  void* p = nullptr;
  VIGSP_CUDA_CHECK(cudaMallocAsync(&p, std::max<size_t>(bytes, 1), stream));
  return p;
}
void device_free_async(void* ptr, cudaStream_t stream) noexcept {
  if (ptr != nullptr) cudaFreeAsync(ptr, stream);
}
void copy_to_host(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
  VIGSP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream));
  VIGSP_CUDA_CHECK(cudaStreamSynchronize(stream));
}
void copy_to_device(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
  VIGSP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream));
}
void copy_device(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
  VIGSP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
}
void stream_synchronize(cudaStream_t stream) { VIGSP_CUDA_CHECK(cudaStreamSynchronize(stream)); }
int current_device() {
  int d = 0;
  VIGSP_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}
void set_device(int device) { VIGSP_CUDA_CHECK(cudaSetDevice(device)); }
int pointer_device(const void* ptr) noexcept {
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged ? attr.device : -1;
}

}  // namespace vigsp::cuda
