// The superpixel graph from a label map in one pass over the pixels: the intra-superpixel
// pixel mask, the region adjacency graph and the per-node features.
#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <string>

#include "bits.hpp"
#include "simd.hpp"
#include "vigsp/superpixel.hpp"

namespace vigsp {
namespace {

// Per-node integer accumulators; integers keep the features exact and order-independent.
enum Acc : int { kCount, kSumY, kSumX, kMinY, kMinX, kMaxY, kMaxX, kSumR, kSumG, kSumB, kAccStride };

// Above this many nodes a K*K adjacency bitset gets too large; collect pairs and sort instead.
constexpr int kMaxBitsetNodes = 4096;

VIGSP_HOT void mask_row(const int32_t* row, const int32_t* below, int width, uint8_t* mask) {
  for (int x = 0; x + 1 < width; ++x) mask[x] = static_cast<uint8_t>(row[x] == row[x + 1]);
  mask[width - 1] = 0;
  if (below != nullptr)
    for (int x = 0; x < width; ++x) mask[x] |= static_cast<uint8_t>((row[x] == below[x]) << 1);
}

// Colour sums of runs come from a row prefix of R | G << 21 | B << 42 in one 64-bit word per
// pixel: a field cannot carry into the next while the row has at most 2^21 / 255 pixels.
constexpr int kFieldBits = 21;
constexpr uint64_t kFieldMask = (uint64_t{1} << kFieldBits) - 1;
constexpr int kMaxPackedWidth = static_cast<int>(kFieldMask / 255);

// prefix[x] = packed colour sum of pixels 0..x-1 (width + 1 words).
inline void colour_prefix(const uint8_t* __restrict rgb, int width, uint64_t* __restrict prefix) {
  uint64_t sum = 0;
  prefix[0] = 0;
  for (int x = 0; x < width; ++x) {
    sum += rgb[3 * x] | static_cast<uint64_t>(rgb[3 * x + 1]) << kFieldBits |
           static_cast<uint64_t>(rgb[3 * x + 2]) << (2 * kFieldBits);
    prefix[x + 1] = sum;
  }
}

class AdjacencySet {
 public:
  AdjacencySet(int num_nodes, std::vector<uint64_t>& bits) : n_(num_nodes), bits_(bits) {
    if (use_bitset()) bits_.assign((static_cast<size_t>(n_) * n_ + 63) / 64, 0);
  }
  void add(int32_t i, int32_t j) {
    if (i > j) std::swap(i, j);
    if (use_bitset()) {
      const size_t bit = static_cast<size_t>(i) * n_ + j;
      bits_[bit >> 6] |= uint64_t{1} << (bit & 63);
    } else {
      pairs_.push_back((static_cast<int64_t>(i) << 32) | j);
    }
  }
  // Writes sorted unique pairs (row-major bit order is already lexicographic).
  void emit(std::vector<int32_t>& edges) {
    edges.clear();
    if (use_bitset()) {
      for (size_t w = 0; w < bits_.size(); ++w) {
        for (uint64_t word = bits_[w]; word != 0; word &= word - 1) {
          const size_t bit = w * 64 + std::countr_zero(word);
          edges.push_back(static_cast<int32_t>(bit / n_));
          edges.push_back(static_cast<int32_t>(bit % n_));
        }
      }
    } else {
      std::sort(pairs_.begin(), pairs_.end());
      pairs_.erase(std::unique(pairs_.begin(), pairs_.end()), pairs_.end());
      for (int64_t p : pairs_) {
        edges.push_back(static_cast<int32_t>(p >> 32));
        edges.push_back(static_cast<int32_t>(p & 0xffffffff));
      }
    }
  }

 private:
  bool use_bitset() const { return n_ <= kMaxBitsetNodes; }
  int n_;
  std::vector<uint64_t>& bits_;
  std::vector<int64_t> pairs_;
};

void write_features(const int64_t* acc, int num_nodes, int height, int width, float* out) {
  for (int k = 0; k < num_nodes; ++k) {
    const int64_t* s = acc + static_cast<int64_t>(k) * kAccStride;
    const double count = static_cast<double>(s[kCount]);
    float* f = out + static_cast<int64_t>(k) * kNumFeatures;
    const double mean_r = s[kSumR] / count, mean_g = s[kSumG] / count, mean_b = s[kSumB] / count;
    double lab[3];
    srgb_to_lab(mean_r, mean_g, mean_b, lab);
    const double values[kNumFeatures] = {
        count,
        (s[kSumY] / count + 0.5) / height,
        (s[kSumX] / count + 0.5) / width,
        static_cast<double>(s[kMinY]) / height,
        static_cast<double>(s[kMinX]) / width,
        static_cast<double>(s[kMaxY] + 1) / height,
        static_cast<double>(s[kMaxX] + 1) / width,
        mean_r / 255.0,
        mean_g / 255.0,
        mean_b / 255.0,
        lab[0],
        lab[1],
        lab[2]};
    for (int j = 0; j < kNumFeatures; ++j) f[j] = static_cast<float>(values[j]);
  }
}

}  // namespace

VIGSP_HOT void build_graph(const ImageView& image, const int32_t* labels, int num_labels, uint8_t* pixel_mask,
                 SuperpixelGraph& graph, Workspace& ws) {
  const int height = image.height, width = image.width;
  if (num_labels <= 0) throw InvalidArgument("a label map needs at least one label");
  ws.accum.resize(static_cast<size_t>(num_labels) * kAccStride);
  for (int k = 0; k < num_labels; ++k) {
    int64_t* s = ws.accum.data() + static_cast<int64_t>(k) * kAccStride;
    std::fill(s, s + kAccStride, 0);
    s[kMinY] = s[kMinX] = std::numeric_limits<int64_t>::max();
    s[kMaxY] = s[kMaxX] = -1;
  }
  AdjacencySet adjacency(num_labels, ws.adjacency);

  // Per-row scratch: the packed colour prefix, and one bit per pixel where a run ends (the right
  // neighbour differs) or the pixel below differs. Runs are then found a bit at a time, without
  // a branch per pixel, and each run's colour costs one subtraction.
  const int words = (width + 63) / 64;
  ws.row_colour.resize(width + 1);
  ws.row_bits.resize(2 * static_cast<size_t>(words));
  uint64_t* colour = ws.row_colour.data();
  uint64_t *ends = ws.row_bits.data(), *downs = ends + words;
  const bool packed = width <= kMaxPackedWidth;
  for (int y = 0; y < height; ++y) {
    const int32_t* row = labels + static_cast<int64_t>(y) * width;
    const int32_t* below = y + 1 < height ? row + width : nullptr;
    uint8_t* mask = pixel_mask + static_cast<int64_t>(y) * width;
    mask_row(row, below, width, mask);
    // Run ends (always at the last column), and pixels whose neighbour below differs.
    bits_lacking<2>(mask, width, {kSameRight, kSameDown}, {ends, downs});
    const uint8_t* rgb = image.row(y);
    if (packed) colour_prefix(rgb, width, colour);
    // Runs of one label: colour and geometry per run.
    int x = 0;
    for (int w = 0; w < words; ++w) {
      for (uint64_t bits = ends[w]; bits != 0; bits &= bits - 1) {
        const int end = w * 64 + std::countr_zero(bits) + 1;
        const int32_t k = row[x];
        int64_t sr, sg, sb;
        if (packed) {
          const uint64_t sum = colour[end] - colour[x];
          sr = static_cast<int64_t>(sum & kFieldMask);
          sg = static_cast<int64_t>((sum >> kFieldBits) & kFieldMask);
          sb = static_cast<int64_t>(sum >> (2 * kFieldBits));
        } else {  // rows wider than kMaxPackedWidth
          sr = sg = sb = 0;
          for (int i = x; i < end; ++i) {
            sr += rgb[3 * i];
            sg += rgb[3 * i + 1];
            sb += rgb[3 * i + 2];
          }
        }
        int64_t* s = ws.accum.data() + static_cast<int64_t>(k) * kAccStride;
        const int64_t run = end - x;
        s[kCount] += run;
        s[kSumY] += run * y;
        s[kSumX] += (static_cast<int64_t>(x) + end - 1) * run / 2;
        s[kMinY] = std::min<int64_t>(s[kMinY], y);
        s[kMaxY] = std::max<int64_t>(s[kMaxY], y);
        s[kMinX] = std::min<int64_t>(s[kMinX], x);
        s[kMaxX] = std::max<int64_t>(s[kMaxX], end - 1);
        s[kSumR] += sr;
        s[kSumG] += sg;
        s[kSumB] += sb;
        if (end < width) adjacency.add(k, row[end]);
        x = end;
      }
    }
    if (below != nullptr) {
      int32_t last_a = -1, last_b = -1;  // boundaries repeat the same pair along a row
      for (int w = 0; w < words; ++w) {
        for (uint64_t bits = downs[w]; bits != 0; bits &= bits - 1) {
          const int xi = w * 64 + std::countr_zero(bits);
          if (row[xi] == last_a && below[xi] == last_b) continue;
          last_a = row[xi];
          last_b = below[xi];
          adjacency.add(last_a, last_b);
        }
      }
    }
  }
  for (int k = 0; k < num_labels; ++k)
    if (ws.accum[static_cast<size_t>(k) * kAccStride + kCount] == 0)
      throw InvalidArgument("labels must be compact 0..n-1 but label " + std::to_string(k) + " is absent (n=" +
                            std::to_string(num_labels) + "); relabel with numpy.unique(labels, return_inverse=True)");

  graph.num_nodes = num_labels;
  adjacency.emit(graph.rag_edges);
  graph.features.resize(static_cast<size_t>(num_labels) * kNumFeatures);
  write_features(ws.accum.data(), num_labels, height, width, graph.features.data());
}

int64_t count_pixel_edges(const uint8_t* pixel_mask, int64_t num_pixels) {
  int64_t count = 0;
  for (int64_t p = 0; p < num_pixels; ++p) count += (pixel_mask[p] & kSameRight) + ((pixel_mask[p] & kSameDown) >> 1);
  return count;
}

std::vector<int64_t> pixel_edges_from_mask(const uint8_t* pixel_mask, int height, int width) {
  const int64_t n = static_cast<int64_t>(height) * width;
  std::vector<int64_t> edges;
  edges.reserve(2 * count_pixel_edges(pixel_mask, n));
  for (int64_t p = 0; p < n; ++p) {
    if (pixel_mask[p] & kSameRight) {
      edges.push_back(p);
      edges.push_back(p + 1);
    }
    if (pixel_mask[p] & kSameDown) {
      edges.push_back(p);
      edges.push_back(p + width);
    }
  }
  return edges;
}

}  // namespace vigsp
