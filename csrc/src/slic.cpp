// SLIC (Achanta et al. 2012): k-means in (L, a, b, y, x) restricted to a window around each
// centre, then connectivity enforcement. Distances follow skimage.segmentation.slic:
// d = |lab - lab_k|^2 + (compactness / S)^2 |yx - yx_k|^2 with S = sqrt(H*W / K).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "bits.hpp"
#include "color.hpp"
#include "simd.hpp"
#include "vigsp/superpixel.hpp"

namespace vigsp {
namespace {

constexpr int kCenterStride = 5;  // L, a, b, y, x
constexpr int kSumStride = 6;     // L, a, b, y, x, count
constexpr int kLanes = 16;        // assignment chunk: one AVX-512 vector of floats

}  // namespace

// Everything slic() keeps between calls (Workspace::slic_scratch). Only this file sees the
// layout, so it can change freely.
struct SlicScratch {
  // A cluster's search window, rows y0..y1 and columns x0..x1 (half-open); empty when y1 <= y0.
  struct Window {
    int y0, y1, x0, x1;
  };

  // One call's state.
  std::vector<float> lab;           // 3 planes of H*W: L, a, b (and a little zeroed slack)
  std::vector<int32_t> assignment;  // H*W, raw k-means cluster per pixel
  std::vector<float> centers;       // kCenterStride per cluster: L, a, b, y, x
  std::vector<double> sums;         // kSumStride per cluster
  // The sweep tables, rebuilt every iteration (prepare_sweep; see Sweep for their meaning).
  std::vector<Window> windows;      // per cluster
  std::vector<float> dx2;           // per cluster, its window's spatial x term
  std::vector<int32_t> dx2_offset, start_offset, start_list, end_offset, end_list, active_offset, active,
      active_dx2, active_size, row_best;
  std::vector<float> center_y, row_dy2;
  std::vector<uint64_t> column_bits, start_bits, end_bits;
  // Connectivity enforcement on runs.
  std::vector<int32_t> run_x, run_parent, row_first_run;
  std::vector<int64_t> run_size;
  std::vector<uint8_t> row_same;
  std::vector<uint64_t> row_end_bits;
};

// Workspace's special members live here, where SlicScratch is complete (unique_ptr needs it).
Workspace::Workspace() = default;
Workspace::Workspace(Workspace&&) noexcept = default;
Workspace& Workspace::operator=(Workspace&&) noexcept = default;
Workspace::~Workspace() = default;

void check_slic_params(const SlicParams& p) {
  if (p.n_segments <= 0) throw InvalidArgument("n_segments must be positive, got " + std::to_string(p.n_segments));
  if (!(p.compactness > 0.0f) || !std::isfinite(p.compactness))
    throw InvalidArgument("compactness must be a positive number, got " + std::to_string(p.compactness));
  if (p.max_iter < 1) throw InvalidArgument("max_iter must be >= 1, got " + std::to_string(p.max_iter));
  if (p.subsample_stride < 1)
    throw InvalidArgument("subsample_stride must be >= 1, got " + std::to_string(p.subsample_stride));
  if (!(p.min_size_factor >= 0.0f && p.min_size_factor <= 1.0f))
    throw InvalidArgument("min_size_factor must be in [0, 1], got " + std::to_string(p.min_size_factor));
}

namespace {

using Window = SlicScratch::Window;

// Everything one assignment sweep reads, per iteration. Windows and dx² tables are per cluster.
// The sweep goes down the rows keeping, per kLanes-wide chunk column, the clusters whose window
// covers the current row and that chunk, in ascending order: windows enter their chunk columns
// at their first row (starts) and leave after their last (ends).
struct Sweep {
  int height, width, row_stride, row_phase, num_clusters;
  float spatial_weight;
  const float *l, *a, *b, *centers;
  const Window* windows;
  const float* dx2;           // per cluster, from dx2_offset[k]: chunks x0/kLanes .. ceil(x1/kLanes), inf outside
  const int32_t* dx2_offset;
  const int32_t* start_offset;  // height + 2: start_list[start_offset[y] ..) begin at row y
  const int32_t* start_list;
  const int32_t* end_offset;    // height + 2: end_list[end_offset[y] ..) end before row y
  const int32_t* end_list;
  const int32_t* active_offset;  // chunks + 1: each chunk column's room for active clusters
  int32_t* active;               // their clusters, ascending
  int32_t* active_dx2;           // where each one's dx² for this chunk column starts
  int32_t* active_size;          // chunks
  // With <= 64 clusters, sets of clusters as bits instead: those whose window overlaps each chunk
  // column, and those whose window starts at / ends before each row (height + 1).
  const uint64_t *column_bits, *start_bits, *end_bits;
  const float* center_y;         // per cluster, for the per-row dy²
  float* row_dy2;                // per cluster, the current row's spatial_weight * (y - cy)²
  int32_t* row_best;             // width rounded up to kLanes
  int32_t* assignment;           // H*W plus kLanes of slack (chunks read past the last column)
  double* sums;                  // nullptr: do not track sums (the final full pass after subsampling)
  bool first;                    // every pixel is unassigned (-1): add each to its cluster
};

// One kLanes-wide chunk as a GCC/Clang vector: it stays in registers while candidates pass.
using ChunkF = float __attribute__((vector_size(kLanes * sizeof(float))));
using ChunkI = int32_t __attribute__((vector_size(kLanes * sizeof(int32_t))));

template <class Chunk, class T>
[[gnu::always_inline]] inline void load_chunk(Chunk& v, const T* p) {
  std::memcpy(&v, p, sizeof v);
}

// The nearest centre per pixel of chunk j of row y, over the clusters active in its chunk column,
// in ascending order (ties keep the lower cluster, as in the classic cluster-by-cluster loop). The
// chunk's distances and clusters stay in registers across the candidates. Lanes outside a
// window have dx² = inf and never win. Same arithmetic, in the same order, as the classic loop
// (no FMA: see simd.hpp). kOneWord: the active clusters are the bits of one word (<= 64
// clusters), which costs less to keep than sorted lists when images are small.
template <bool kOneWord>
[[gnu::always_inline]] inline void nearest_in_chunk(const Sweep& s, int y, int j, uint64_t active_word,
                                                    const int32_t* old, int32_t* out) {
  const int x0 = j * kLanes;
  const int64_t p = static_cast<int64_t>(y) * s.width + x0;
  ChunkF l, a, b;
  load_chunk(l, s.l + p);
  load_chunk(a, s.a + p);
  load_chunk(b, s.b + p);
  ChunkF dist = ChunkF{} + std::numeric_limits<float>::infinity();
  ChunkI best;
  load_chunk(best, old);  // a pixel no window covers keeps its cluster
  const auto consider = [&](int32_t k, int32_t dx2_at) {
    const float* c = s.centers + static_cast<int64_t>(k) * kCenterStride;
    ChunkF dx2;
    load_chunk(dx2, s.dx2 + dx2_at);
    const ChunkF dl = l - c[0], da = a - c[1], db = b - c[2];
    const ChunkF d = dl * dl + da * da + db * db + s.row_dy2[k] + dx2;
    const ChunkI closer = d < dist;  // strict: the lower cluster keeps a tie
    dist = closer ? d : dist;
    best = closer ? (ChunkI{} + k) : best;
  };
  if constexpr (kOneWord) {
    for (uint64_t word = active_word; word != 0; word &= word - 1) {
      const auto k = static_cast<int32_t>(std::countr_zero(word));
      consider(k, s.dx2_offset[k] + x0 - s.windows[k].x0 / kLanes * kLanes);
    }
  } else {
    const int32_t *list = s.active + s.active_offset[j], *dx2_at = s.active_dx2 + s.active_offset[j];
    for (int i = 0; i < s.active_size[j]; ++i) consider(list[i], dx2_at[i]);
  }
  std::memcpy(out, &best, sizeof best);
}

// Sums hold float values in double; moving only the pixels that changed cluster keeps them equal
// to a fresh sum (exactly: see the first sweep in assign_rows).
inline void move_pixel(double* sums, int32_t from, int32_t to, double l, double a, double b, double y, double x) {
  if (from >= 0) {
    double* s = sums + static_cast<int64_t>(from) * kSumStride;
    s[0] -= l;
    s[1] -= a;
    s[2] -= b;
    s[3] -= y;
    s[4] -= x;
    s[5] -= 1.0;
  }
  double* s = sums + static_cast<int64_t>(to) * kSumStride;
  s[0] += l;
  s[1] += a;
  s[2] += b;
  s[3] += y;
  s[4] += x;
  s[5] += 1.0;
}

// Keeps list[0..size) sorted (and `with` alongside) while k enters or leaves it.
inline void enter(int32_t* list, int32_t* with, int32_t& size, int32_t k, int32_t value) {
  int i = size++;
  for (; i > 0 && list[i - 1] > k; --i) {
    list[i] = list[i - 1];
    with[i] = with[i - 1];
  }
  list[i] = k;
  with[i] = value;
}
inline void leave(int32_t* list, int32_t* with, int32_t& size, int32_t k) {
  int i = 0;
  while (list[i] != k) ++i;
  for (--size; i < size; ++i) {
    list[i] = list[i + 1];
    with[i] = with[i + 1];
  }
}

// One k-means assignment: rows go down one at a time, each row chunk by chunk against the
// clusters active in its chunk column, and the centre sums are updated as soon as a row is
// final (no H*W distance plane, no copy of the previous assignment). Dispatched once per
// iteration. Returns how many pixels changed cluster.
template <bool kOneWord>
[[gnu::always_inline]] inline int64_t assign_rows_in(const Sweep& s) {
  const int width = s.width, chunks = (width + kLanes - 1) / kLanes;
  int64_t changed = 0;
  uint64_t row_active = 0;  // kOneWord: the clusters whose window covers row y
  for (int y = 0; y < s.height; ++y) {
    if constexpr (kOneWord) {
      row_active = (row_active & ~s.end_bits[y]) | s.start_bits[y];
    } else {
      for (int32_t e = s.end_offset[y]; e < s.end_offset[y + 1]; ++e) {
        const int32_t k = s.end_list[e];
        for (int j = s.windows[k].x0 / kLanes; j * kLanes < s.windows[k].x1; ++j)
          leave(s.active + s.active_offset[j], s.active_dx2 + s.active_offset[j], s.active_size[j], k);
      }
      for (int32_t e = s.start_offset[y]; e < s.start_offset[y + 1]; ++e) {
        const int32_t k = s.start_list[e];
        const int first = s.windows[k].x0 / kLanes;
        for (int j = first; j * kLanes < s.windows[k].x1; ++j)
          enter(s.active + s.active_offset[j], s.active_dx2 + s.active_offset[j], s.active_size[j], k,
                s.dx2_offset[k] + (j - first) * kLanes);
      }
    }
    if (y < s.row_phase || (y - s.row_phase) % s.row_stride != 0) continue;
    const int64_t base = static_cast<int64_t>(y) * width;
    int32_t* row = s.assignment + base;
    for (int k = 0; k < s.num_clusters; ++k)
      s.row_dy2[k] = s.spatial_weight * (y - s.center_y[k]) * (y - s.center_y[k]);
    for (int j = 0; j < chunks; ++j) {
      const uint64_t word = kOneWord ? row_active & s.column_bits[j] : 0;
      nearest_in_chunk<kOneWord>(s, y, j, word, row + j * kLanes, s.row_best + j * kLanes);
    }
    if (s.sums != nullptr && s.first) {
      // The first sweep adds every pixel: sum each run of one cluster apart (short independent
      // chains instead of one dependent chain per cluster), then add the run to its cluster.
      // Reordering is exact: Lab values are multiples of 2^-24 (see the CUDA backend's fixed
      // point sums), so these double sums round nothing below 2^29, ~4M pixels per cluster.
      for (int x = 0; x < width;) {
        const int32_t k = s.row_best[x];
        int e = x + 1;
        while (e < width && s.row_best[e] == k) ++e;
        if (k < 0) {  // no window covers these pixels (yet)
          x = e;
          continue;
        }
        double sl = 0, sa = 0, sb = 0;
        for (int i = x; i < e; ++i) {
          sl += s.l[base + i];
          sa += s.a[base + i];
          sb += s.b[base + i];
        }
        double* sum = s.sums + static_cast<int64_t>(k) * kSumStride;
        const double run = e - x;
        sum[0] += sl;
        sum[1] += sa;
        sum[2] += sb;
        sum[3] += run * y;
        sum[4] += (static_cast<double>(x) + (e - 1)) * run / 2;
        sum[5] += run;
        changed += e - x;
        x = e;
      }
    } else if (s.sums != nullptr) {
      // Few pixels change after the first iterations: find them 16 at a time with a vector
      // compare of the new clusters against the row's old ones, not a branch per pixel.
      for (int x0 = 0; x0 < width; x0 += 16) {
        const int n = std::min(16, width - x0);
        const int32_t *before = row + x0, *after = s.row_best + x0;
        uint32_t moved = 0;
        for (int i = 0; i < n; ++i) moved |= static_cast<uint32_t>(before[i] != after[i]) << i;
        for (; moved != 0; moved &= moved - 1) {
          const int x = x0 + std::countr_zero(moved);
          const int64_t p = base + x;
          ++changed;
          move_pixel(s.sums, row[x], s.row_best[x], s.l[p], s.a[p], s.b[p], y, x);
        }
      }
    }
    std::copy(s.row_best, s.row_best + width, row);
  }
  return changed;
}

VIGSP_HOT int64_t assign_rows(const Sweep& s) {
  return s.num_clusters <= 64 ? assign_rows_in<true>(s) : assign_rows_in<false>(s);
}

// One cluster's dx² table: spatial_weight * (x - cx)² inside its window, inf outside (so those
// lanes never win). Branch-free, so that it vectorises; small images spend ~15 % of SLIC here.
VIGSP_HOT void fill_dx2(float* __restrict dx2, int n, int first_x, Window w, float cx, float spatial_weight) {
  for (int i = 0; i < n; ++i) {
    const int x = first_x + i;
    const float value = spatial_weight * (x - cx) * (x - cx);
    dx2[i] = x >= w.x0 && x < w.x1 ? value : std::numeric_limits<float>::infinity();
  }
}

// Counting sort of the live clusters by their window's first row (or, by_end, the row after
// its last) into offset (height + 2 entries) and list; each row's clusters stay ascending.
void bucket_by_row(const std::vector<Window>& windows, int height, bool by_end, std::vector<int32_t>& offset,
                   std::vector<int32_t>& list) {
  offset.assign(height + 2, 0);
  const auto key = [by_end](const Window& w) { return by_end ? w.y1 : w.y0; };
  for (const Window& w : windows)
    if (w.y1 > w.y0) ++offset[key(w) + 1];
  for (int y = 0; y <= height; ++y) offset[y + 1] += offset[y];
  list.resize(offset[height + 1]);
  for (int32_t k = 0; k < static_cast<int32_t>(windows.size()); ++k)
    if (windows[k].y1 > windows[k].y0) list[offset[key(windows[k])]++] = k;
  for (int y = height; y > 0; --y) offset[y] = offset[y - 1];  // back from "next free" to starts
  offset[0] = 0;
}

// What stays fixed over one slic() call: the grid, the image as Lab planes, the spatial weight.
struct SlicProblem {
  GridShape grid;
  int height = 0, width = 0, num_clusters = 0;
  float spatial_weight = 0.0f;
  const float *l = nullptr, *a = nullptr, *b = nullptr;
};

// What varies between assignment passes: which rows, and what to do with the centre sums.
struct AssignPass {
  int row_stride = 1, row_phase = 0;  // rows y >= row_phase with (y - row_phase) % row_stride == 0
  bool first = false;                 // every pixel is unassigned (-1): add each to its cluster
  bool track_sums = true;             // false: leave the sums alone (the final full pass after subsampling)
};

// Builds the sweep's per-iteration tables: each live cluster's window (+-one grid step around
// its centre, as in Achanta et al.), its dx² table, the clusters starting and ending per row,
// and room for each chunk column's active clusters (at most the windows that overlap it).
void prepare_sweep(const SlicProblem& problem, SlicScratch& ws) {
  const GridShape grid = problem.grid;
  const int height = problem.height, width = problem.width, num_clusters = problem.num_clusters;
  const float spatial_weight = problem.spatial_weight;
  const float* centers = ws.centers.data();
  const float step_y = static_cast<float>(height) / grid.rows, step_x = static_cast<float>(width) / grid.cols;
  const int chunks = (width + kLanes - 1) / kLanes;
  ws.windows.resize(num_clusters);
  ws.dx2_offset.resize(num_clusters + 1);
  int32_t dx2_size = 0;
  for (int k = 0; k < num_clusters; ++k) {
    const float* c = centers + k * kCenterStride;
    Window win{0, 0, 0, 0};  // an emptied cluster (NaN centre) covers nothing
    if (std::isfinite(c[3])) {
      win = {std::max(0, static_cast<int>(std::floor(c[3] - step_y))),
             std::min(height, static_cast<int>(std::ceil(c[3] + step_y)) + 1),
             std::max(0, static_cast<int>(std::floor(c[4] - step_x))),
             std::min(width, static_cast<int>(std::ceil(c[4] + step_x)) + 1)};
      win.y1 = std::max(win.y0, win.y1);
      win.x1 = std::max(win.x0, win.x1);
      if (win.x0 == win.x1) win.y1 = win.y0;
    }
    ws.windows[k] = win;
    ws.dx2_offset[k] = dx2_size;
    if (win.y1 > win.y0) dx2_size += (win.x1 + kLanes - 1) / kLanes * kLanes - win.x0 / kLanes * kLanes;
  }
  ws.dx2_offset[num_clusters] = dx2_size;
  ws.dx2.resize(dx2_size);
  for (int k = 0; k < num_clusters; ++k) {
    const Window w = ws.windows[k];
    if (w.y1 > w.y0)
      fill_dx2(ws.dx2.data() + ws.dx2_offset[k], ws.dx2_offset[k + 1] - ws.dx2_offset[k], w.x0 / kLanes * kLanes,
               w, centers[k * kCenterStride + 4], spatial_weight);
  }
  ws.center_y.resize(num_clusters);
  ws.row_dy2.resize(num_clusters);
  for (int k = 0; k < num_clusters; ++k) ws.center_y[k] = centers[k * kCenterStride + 3];
  if (num_clusters <= 64) {  // sets of clusters as one word each (assign_rows)
    ws.column_bits.assign(chunks, 0);
    ws.start_bits.assign(height + 1, 0);
    ws.end_bits.assign(height + 1, 0);
    for (int k = 0; k < num_clusters; ++k) {
      const Window w = ws.windows[k];
      if (w.y1 <= w.y0) continue;
      const uint64_t bit = uint64_t{1} << k;
      ws.start_bits[w.y0] |= bit;
      ws.end_bits[w.y1] |= bit;
      for (int j = w.x0 / kLanes; j * kLanes < w.x1; ++j) ws.column_bits[j] |= bit;
    }
  } else {  // sorted lists: room per chunk column for every window that overlaps it
    ws.active_offset.assign(chunks + 1, 0);
    for (const Window& w : ws.windows)
      if (w.y1 > w.y0)
        for (int j = w.x0 / kLanes; j * kLanes < w.x1; ++j) ++ws.active_offset[j + 1];
    for (int j = 0; j < chunks; ++j) ws.active_offset[j + 1] += ws.active_offset[j];
    ws.active.resize(ws.active_offset[chunks]);
    ws.active_dx2.resize(ws.active_offset[chunks]);
    ws.active_size.assign(chunks, 0);
    bucket_by_row(ws.windows, height, false, ws.start_offset, ws.start_list);
    bucket_by_row(ws.windows, height, true, ws.end_offset, ws.end_list);
  }
}

int64_t assign(const SlicProblem& problem, const AssignPass& pass, SlicScratch& ws) {
  prepare_sweep(problem, ws);
  ws.row_best.resize((problem.width + kLanes - 1) / kLanes * kLanes);
  const Sweep sweep{.height = problem.height,
                    .width = problem.width,
                    .row_stride = pass.row_stride,
                    .row_phase = pass.row_phase,
                    .num_clusters = problem.num_clusters,
                    .spatial_weight = problem.spatial_weight,
                    .l = problem.l,
                    .a = problem.a,
                    .b = problem.b,
                    .centers = ws.centers.data(),
                    .windows = ws.windows.data(),
                    .dx2 = ws.dx2.data(),
                    .dx2_offset = ws.dx2_offset.data(),
                    .start_offset = ws.start_offset.data(),
                    .start_list = ws.start_list.data(),
                    .end_offset = ws.end_offset.data(),
                    .end_list = ws.end_list.data(),
                    .active_offset = ws.active_offset.data(),
                    .active = ws.active.data(),
                    .active_dx2 = ws.active_dx2.data(),
                    .active_size = ws.active_size.data(),
                    .column_bits = ws.column_bits.data(),
                    .start_bits = ws.start_bits.data(),
                    .end_bits = ws.end_bits.data(),
                    .center_y = ws.center_y.data(),
                    .row_dy2 = ws.row_dy2.data(),
                    .row_best = ws.row_best.data(),
                    .assignment = ws.assignment.data(),
                    .sums = pass.track_sums ? ws.sums.data() : nullptr,
                    .first = pass.first};
  return assign_rows(sweep);
}

void move_centers(int num_clusters, const double* sums, float* centers) {
  for (int k = 0; k < num_clusters; ++k) {
    const double* s = sums + static_cast<int64_t>(k) * kSumStride;
    float* c = centers + k * kCenterStride;
    if (s[5] == 0) {
      c[3] = std::numeric_limits<float>::quiet_NaN();  // nothing to attract: drop it
      continue;
    }
    for (int j = 0; j < kCenterStride; ++j) c[j] = static_cast<float>(s[j] / s[5]);
  }
}

// Bit x of bits is set where a run of equal values ends: row[x] != row[x + 1], and at the last
// column. A vector compare to bytes, then bits_lacking, instead of a branch per pixel.
VIGSP_HOT void run_end_bits(const int32_t* __restrict row, int width, uint8_t* __restrict same,
                            uint64_t* __restrict bits) {
  for (int x = 0; x + 1 < width; ++x) same[x] = static_cast<uint8_t>(row[x] == row[x + 1]);
  same[width - 1] = 0;
  bits_lacking<1>(same, width, {1}, {bits});
}

// Relabels the 4-connected components of the k-means assignment to compact labels, numbered
// in raster order of their first pixel. A component smaller than min_size joins the region
// of the pixel left of (or, in column 0, above) its first pixel, which is 4-adjacent to it and
// already labelled, so every final label is one connected region.
//
// Works on runs (maximal same-cluster row segments) with union-find instead of a per-pixel
// flood fill: runs are numbered in raster order and a union keeps the smaller number as the
// root, so a component's root is its first run and the component order is the root order.
int enforce_connectivity(int height, int width, const int32_t* assignment, int64_t min_size, SlicScratch& ws,
                         int32_t* labels) {
  std::vector<int32_t>& run_x = ws.run_x;       // start column of each run; the run ends where the next starts
  std::vector<int32_t>& parent = ws.run_parent; // union-find forest over runs
  std::vector<int32_t>& row_first = ws.row_first_run;  // height + 1
  run_x.clear();
  parent.clear();
  const int words = (width + 63) / 64;
  ws.row_same.resize(width);
  ws.row_end_bits.resize(words);
  row_first.resize(height + 1);
  auto find = [&](int32_t r) {
    while (parent[r] != r) r = parent[r] = parent[parent[r]];
    return r;
  };
  for (int y = 0; y < height; ++y) {
    const int32_t* row = assignment + static_cast<int64_t>(y) * width;
    const int32_t first = static_cast<int32_t>(run_x.size());
    row_first[y] = first;
    run_end_bits(row, width, ws.row_same.data(), ws.row_end_bits.data());
    for (int w = 0, x = 0; w < words; ++w) {
      for (uint64_t bits = ws.row_end_bits[w]; bits != 0; bits &= bits - 1) {
        const auto id = static_cast<int32_t>(run_x.size());
        run_x.push_back(x);
        parent.push_back(id);
        x = w * 64 + std::countr_zero(bits) + 1;
      }
    }
    if (y == 0) continue;
    // Join runs that touch a run of the same cluster in the row above (overlapping columns).
    const int32_t* above = row - width;
    int32_t up = row_first[y - 1];
    const int32_t up_end = first, here_end = static_cast<int32_t>(run_x.size());
    for (int32_t r = first; r < here_end; ++r) {
      const int x0 = run_x[r], x1 = r + 1 < here_end ? run_x[r + 1] : width;
      while (up + 1 < up_end && run_x[up + 1] <= x0) ++up;  // the run above covering column x0
      for (int32_t u = up; u < up_end && run_x[u] < x1; ++u) {
        if (above[run_x[u]] != row[x0]) continue;
        const int32_t ra = find(r), rb = find(u);
        if (ra < rb) parent[rb] = ra;
        else if (rb < ra) parent[ra] = rb;
      }
    }
  }
  const auto num_runs = static_cast<int32_t>(run_x.size());
  row_first[height] = num_runs;
  // Flatten (a parent always has a smaller number, so one ascending pass suffices) and size.
  std::vector<int64_t>& size = ws.run_size;
  size.assign(num_runs, 0);
  for (int y = 0; y < height; ++y) {
    for (int32_t r = row_first[y]; r < row_first[y + 1]; ++r) {
      parent[r] = parent[parent[r]];
      size[parent[r]] += (r + 1 < row_first[y + 1] ? run_x[r + 1] : width) - run_x[r];
    }
  }
  // Final labels per root in root order; `size` is reused to hold them.
  int32_t next_label = 0;
  for (int y = 0; y < height; ++y) {
    for (int32_t r = row_first[y]; r < row_first[y + 1]; ++r) {
      if (parent[r] != r) {
        size[r] = size[parent[r]];  // not a root: its root (an earlier run) is labelled already
        continue;
      }
      // The pixel left of the first pixel is the previous run; in column 0 it is the row above's first run.
      const int32_t neighbour = r > row_first[y] ? static_cast<int32_t>(size[r - 1])
                                                 : (y > 0 ? static_cast<int32_t>(size[row_first[y - 1]]) : -1);
      if (size[r] < min_size && neighbour >= 0) {
        size[r] = neighbour;
      } else {
        size[r] = next_label++;
      }
    }
  }
  for (int y = 0; y < height; ++y) {
    int32_t* out = labels + static_cast<int64_t>(y) * width;
    for (int32_t r = row_first[y]; r < row_first[y + 1]; ++r) {
      const int x1 = r + 1 < row_first[y + 1] ? run_x[r + 1] : width;
      std::fill(out + run_x[r], out + x1, static_cast<int32_t>(size[r]));
    }
  }
  return next_label;
}

}  // namespace

int slic(const ImageView& image, const SlicParams& params, int32_t* labels, Workspace& workspace) {
  check_slic_params(params);
  if (!workspace.slic_scratch) workspace.slic_scratch = std::make_unique<SlicScratch>();
  SlicScratch& ws = *workspace.slic_scratch;
  const int height = image.height, width = image.width;
  const GridShape grid = grid_shape(height, width, params.n_segments);
  const int64_t n = static_cast<int64_t>(height) * width;
  const int num_clusters = grid.rows * grid.cols;

  // Chunks past the last column read into the next plane; the slack covers the last plane.
  ws.lab.resize(3 * n + kLanes);
  std::fill(ws.lab.end() - kLanes, ws.lab.end(), 0.0f);
  ws.assignment.resize(n + kLanes);  // chunks read up to kLanes - 1 past the last pixel
  ws.centers.resize(static_cast<size_t>(num_clusters) * kCenterStride);
  ws.sums.resize(static_cast<size_t>(num_clusters) * kSumStride);
  float *l = ws.lab.data(), *a = l + n, *b = a + n;
  color::image_to_lab_planes(image, l, a, b);

  // Centres start at the middle of each grid cell.
  for (int r = 0; r < grid.rows; ++r) {
    for (int c = 0; c < grid.cols; ++c) {
      const float cy = (r + 0.5f) * height / grid.rows - 0.5f, cx = (c + 0.5f) * width / grid.cols - 0.5f;
      const int64_t p = static_cast<int64_t>(std::lround(cy)) * width + std::lround(cx);
      float* center = ws.centers.data() + (r * grid.cols + c) * kCenterStride;
      center[0] = l[p];
      center[1] = a[p];
      center[2] = b[p];
      center[3] = cy;
      center[4] = cx;
    }
  }
  const double step = std::sqrt(static_cast<double>(n) / num_clusters);
  const float spatial_weight = static_cast<float>((params.compactness / step) * (params.compactness / step));
  // assignment == -1 everywhere: the first update adds every pixel.
  std::fill(ws.assignment.begin(), ws.assignment.end(), -1);
  std::fill(ws.sums.begin(), ws.sums.end(), 0.0);
  const SlicProblem problem{.grid = grid,
                            .height = height,
                            .width = width,
                            .num_clusters = num_clusters,
                            .spatial_weight = spatial_weight,
                            .l = l,
                            .a = a,
                            .b = b};
  const int stride = std::min(params.subsample_stride, height);
  for (int it = 0; it < params.max_iter; ++it) {
    // The first `stride` passes each meet their rows' pixels for the first time.
    const AssignPass pass{.row_stride = stride, .row_phase = it % stride, .first = it < stride};
    const int64_t changed = assign(problem, pass, ws);
    // No pixel moved: the centres are a fixed point, so further iterations would change nothing.
    if (changed == 0 && stride == 1) break;
    move_centers(num_clusters, ws.sums.data(), ws.centers.data());
  }
  if (stride > 1)  // the subsampled iterations placed the centres; now label every pixel
    assign(problem, {.track_sums = false}, ws);
  const auto min_size = static_cast<int64_t>(params.min_size_factor * static_cast<double>(n) / num_clusters);
  return enforce_connectivity(height, width, ws.assignment.data(), min_size, ws, labels);
}

}  // namespace vigsp
