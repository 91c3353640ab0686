// vigsp superpixel core: SLIC superpixels and the superpixel graph on one RGB image.
//
// Pure C++20, no Python and no DALI: the pybind11 module (csrc/python) and the DALI
// operator (dali_ops/) are thin wrappers around these functions, so all three agree.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace vigsp {

// Thrown for bad input (shape, parameters, labels). Wrappers turn it into ValueError /
// a DALI error message; it never signals an internal bug.
class InvalidArgument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// An interleaved HxWx3 uint8 RGB image. row_stride is in bytes (>= 3 * width).
struct ImageView {
  const uint8_t* data = nullptr;
  int height = 0;
  int width = 0;
  int64_t row_stride = 0;

  const uint8_t* row(int y) const { return data + static_cast<int64_t>(y) * row_stride; }
};

ImageView make_image_view(const uint8_t* data, int height, int width);

struct SlicParams {
  int n_segments = 196;        // wanted number of superpixels (the result is close, not equal)
  float compactness = 10.0f;   // weight of space against Lab colour, as in skimage.segmentation.slic
  int max_iter = 10;           // k-means iterations (skimage's default is 10 too)
  float min_size_factor = 0.5f;  // components smaller than this x the mean size are merged away
  // Iteration i assigns only rows y with y % stride == i % stride, then one final pass assigns
  // every pixel (fast-slic's approximation, its default is 3). 1 = classic SLIC.
  int subsample_stride = 1;
};

// Throws InvalidArgument naming the first bad field; both backends (CPU, CUDA) call it.
void check_slic_params(const SlicParams& p);

// Rows x cols of the initial SLIC grid and of grid mode. Throws InvalidArgument if the
// image is smaller than the grid or n_segments <= 0.
struct GridShape {
  int rows = 0;
  int cols = 0;
};
GridShape grid_shape(int height, int width, int n_segments);

// Node features, in this order (kNumFeatures floats per node).
//   count                  pixels in the superpixel
//   centroid_y, centroid_x (mean row + 0.5) / H, (mean col + 0.5) / W, in (0, 1)
//   bbox_y0, bbox_x0, bbox_y1, bbox_x1   min_row / H, min_col / W, (max_row + 1) / H, (max_col + 1) / W
//   mean_r, mean_g, mean_b mean sRGB colour in [0, 1]
//   mean_l, mean_a, mean_b_lab           CIELAB (D65) of that mean colour
inline constexpr int kNumFeatures = 13;
inline constexpr const char* kFeatureNames[kNumFeatures] = {
    "count",   "centroid_y", "centroid_x", "bbox_y0", "bbox_x0", "bbox_y1",   "bbox_x1",
    "mean_r",  "mean_g",     "mean_b",     "mean_l",  "mean_a",  "mean_b_lab"};

// The compact intra-superpixel pixel graph: one byte per pixel.
inline constexpr uint8_t kSameRight = 1;  // pixel (y, x+1) has the same label
inline constexpr uint8_t kSameDown = 2;   // pixel (y+1, x) has the same label

// Everything derived from a label map.
struct SuperpixelGraph {
  int num_nodes = 0;
  std::vector<int32_t> rag_edges;  // 2*E, pairs (i, j) with i < j, sorted, unique
  std::vector<float> features;     // num_nodes * kNumFeatures, row-major
  int64_t num_rag_edges() const { return static_cast<int64_t>(rag_edges.size() / 2); }
};

struct SlicScratch;  // slic()'s scratch tables; defined in slic.cpp only

// Scratch memory reused across calls, so that steady-state processing allocates nothing.
// One per thread; not shareable between concurrent calls. Move-only.
struct Workspace {
  // Declared here, defined in slic.cpp: only there is SlicScratch a complete type.
  Workspace();
  Workspace(Workspace&&) noexcept;
  Workspace& operator=(Workspace&&) noexcept;
  ~Workspace();

  // build_graph's scratch (opaque).
  std::vector<uint64_t> adjacency;  // RAG bitset
  std::vector<int64_t> accum;       // per-node integer sums for the features
  std::vector<uint64_t> row_colour, row_bits;  // per-row scratch
  // SLIC's scratch, behind a pointer so that its layout is private to slic.cpp and changing
  // it recompiles nothing else. Created by the first slic() call.
  std::unique_ptr<SlicScratch> slic_scratch;
};

// SLIC superpixels with connectivity enforcement. Writes H*W compact labels 0..n-1, each
// label one 4-connected region, and returns n.
int slic(const ImageView& image, const SlicParams& params, int32_t* labels, Workspace& ws);

// Square-ish grid cells (grid_shape) as labels; returns rows * cols.
int grid_labels(int height, int width, int n_segments, int32_t* labels);

// Checks that labels lie in 0..n-1 and returns n = max + 1. For user-supplied maps; build_graph
// then rejects a map where some label in 0..n-1 has no pixel.
int validate_labels(std::span<const int32_t> labels);
// The same check while copying the labels to out (H*W values), in one pass.
int copy_validated_labels(std::span<const int32_t> labels, int32_t* out);

// Builds the pixel mask (H*W bytes, kSameRight | kSameDown), the region adjacency graph and
// the node features from an image and its compact label map with num_labels labels.
void build_graph(const ImageView& image, const int32_t* labels, int num_labels, uint8_t* pixel_mask,
                 SuperpixelGraph& graph, Workspace& ws);

// Expands a pixel mask to an edge list of flat pixel indices, (p, p+1) and (p, p+W), sorted.
std::vector<int64_t> pixel_edges_from_mask(const uint8_t* pixel_mask, int height, int width);
int64_t count_pixel_edges(const uint8_t* pixel_mask, int64_t num_pixels);

// sRGB (0..255 per channel, may be fractional) to CIELAB under D65, exact double precision.
void srgb_to_lab(double r, double g, double b, double lab[3]);

// Runs fn(i, thread_index) for i in [0, n) on up to num_threads threads (0 = hardware).
void parallel_for(int n, int num_threads, const std::function<void(int, int)>& fn);

}  // namespace vigsp
