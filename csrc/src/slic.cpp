// SLIC (Achanta et al. 2012): k-means in (L, a, b, y, x) restricted to a window around each
// centre, then connectivity enforcement. Distances follow skimage.segmentation.slic:
// d = |lab - lab_k|^2 + (compactness / S)^2 |yx - yx_k|^2 with S = sqrt(H*W / K).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "color.hpp"
#include "simd.hpp"
#include "vigsp/superpixel.hpp"

namespace vigsp {
namespace {

constexpr int kCenterStride = 5;  // L, a, b, y, x
constexpr int kSumStride = 6;     // L, a, b, y, x, count
constexpr int kLanes = 16;        // assignment chunk: one AVX-512 vector of floats

}  // namespace

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

using Window = Workspace::Window;

// Everything one assignment sweep reads, per iteration. Windows and dx² tables are per cluster;
// row_list[row_offset[y] .. row_offset[y+1]) are the clusters whose window covers row y: in
// ascending order (as the classic cluster-by-cluster loop, so ties go the same way), or, with
// wide windows, in an order whose ties are settled by comparing clusters (assign_chunks).
struct Sweep {
  int height, width, row_stride, row_phase;
  float spatial_weight;
  const float *l, *a, *b, *centers;
  const Window* windows;
  const float* dx2;          // per cluster, from dx2_offset[k]: chunks x0/kLanes .. ceil(x1/kLanes), inf outside
  const int32_t* dx2_offset;
  const int32_t* row_offset;  // height + 1
  const int32_t* row_list;
  float* row_dist;            // width rounded up to kLanes
  int32_t* row_best;          // same; the row's clusters while candidates pass over it
  int32_t* assignment;
  double* sums;               // nullptr: do not track sums (the final full pass after subsampling)
  bool first;                 // every pixel is unassigned (-1): add each to its cluster
};

// One cluster's pass over a row: keep, per pixel, the nearest centre seen so far. It works on
// whole kLanes-aligned chunks: lanes outside the window have dx² = inf, so they never win,
// and every candidate loads and stores the same aligned blocks (a misaligned overlap would
// defeat store-to-load forwarding). Same arithmetic, in the same order, as the classic
// cluster-by-cluster loop (no FMA: see simd.hpp).
//
// kAnyOrder: compare (distance, cluster) pairs, so that the winner does not depend on the order in
// which candidates pass (the smallest cluster among the nearest, as ascending passes give); wide
// windows pass in an order that keeps consecutive passes on different chunks (prepare_sweep).
template <bool kAnyOrder>
[[gnu::always_inline]] inline void assign_chunks(const float* __restrict l, const float* __restrict a,
                                                 const float* __restrict b, const float* __restrict dx2, int n,
                                                 float cl, float ca, float cb, float dy2, int32_t k,
                                                 float* __restrict dist, int32_t* __restrict best) {
  for (int i = 0; i < n; ++i) {
    const float dl = l[i] - cl, da = a[i] - ca, db = b[i] - cb;
    const float d = dl * dl + da * da + db * db + dy2 + dx2[i];
    // Written as a min and a bit blend so that both stores are plain: a select GCC recognises
    // becomes a masked store behind a per-vector "any lane closer?" branch, which mispredicts.
    const float old = dist[i];
    const int32_t old_k = best[i];
    const bool wins = kAnyOrder ? d < old || (d == old && k < old_k) : d < old;
    const int32_t closer = -static_cast<int32_t>(wins);
    dist[i] = std::min(old, d);  // == (d < old ? d : old); distances are never NaN
    best[i] = old_k ^ ((old_k ^ k) & closer);
  }
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

// One k-means assignment, row by row: a row's distances and labels stay in L1 while every
// covering window passes over it, and the centre sums are updated as soon as the row is final
// (no H*W distance plane, no copy of the previous assignment). Dispatched once per iteration.
// Returns how many pixels changed cluster.
template <bool kAnyOrder>
[[gnu::always_inline]] inline int64_t assign_rows_in(const Sweep& s) {
  const int width = s.width;
  int64_t changed = 0;
  for (int y = s.row_phase; y < s.height; y += s.row_stride) {
    const int64_t base = static_cast<int64_t>(y) * width;
    int32_t* row = s.assignment + base;
    // Not inf: dx² is inf outside a window, and such lanes must never win, even a tie.
    std::fill(s.row_dist, s.row_dist + width, std::numeric_limits<float>::max());
    std::copy(row, row + width, s.row_best);  // a pixel no window covers keeps its cluster
    for (int32_t i = s.row_offset[y]; i < s.row_offset[y + 1]; ++i) {
      const int32_t k = s.row_list[i];
      const float* c = s.centers + static_cast<int64_t>(k) * kCenterStride;
      const Window w = s.windows[k];
      const int x0 = w.x0 / kLanes * kLanes, n = (w.x1 + kLanes - 1) / kLanes * kLanes - x0;
      const float dy2 = s.spatial_weight * (y - c[3]) * (y - c[3]);
      assign_chunks<kAnyOrder>(s.l + base + x0, s.a + base + x0, s.b + base + x0, s.dx2 + s.dx2_offset[k], n,
                               c[0], c[1], c[2], dy2, k, s.row_dist + x0, s.row_best + x0);
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

VIGSP_HOT int64_t assign_rows(const Sweep& s, bool any_order) {
  return any_order ? assign_rows_in<true>(s) : assign_rows_in<false>(s);
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

// Whether windows (two grid steps wide) span several assignment chunks.
bool wide_windows(const GridShape& grid, int width) { return width >= kLanes * grid.cols; }

// Builds the sweep's per-iteration tables: each live cluster's window (+-one grid step around
// its centre, as in Achanta et al.), its dx² table, and the per-row candidate lists.
void prepare_sweep(const GridShape& grid, int height, int width, float spatial_weight, int num_clusters,
                   const float* centers, Workspace& ws) {
  const float step_y = static_cast<float>(height) / grid.rows, step_x = static_cast<float>(width) / grid.cols;
  ws.windows.resize(num_clusters);
  ws.dx2_offset.resize(num_clusters + 1);
  ws.row_offset.assign(height + 1, 0);
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
    if (win.x1 > win.x0) dx2_size += (win.x1 + kLanes - 1) / kLanes * kLanes - win.x0 / kLanes * kLanes;
    ws.row_offset[win.y0] += 1;  // difference array, prefix-summed below
    ws.row_offset[win.y1] -= 1;
  }
  ws.dx2_offset[num_clusters] = dx2_size;
  ws.dx2.resize(dx2_size);
  // Row counts -> exclusive offsets; row_fill then tracks where the next entry of a row goes.
  ws.row_fill.resize(height + 1);
  int32_t covering = 0, total = 0;
  for (int y = 0; y <= height; ++y) {
    covering += ws.row_offset[y];
    ws.row_fill[y] = total;
    total += y < height ? covering : 0;
  }
  std::copy(ws.row_fill.begin(), ws.row_fill.end(), ws.row_offset.begin());
  ws.row_list.resize(total);
  for (int k = 0; k < num_clusters; ++k) {
    const Window w = ws.windows[k];
    const float* c = centers + k * kCenterStride;
    fill_dx2(ws.dx2.data() + ws.dx2_offset[k], ws.dx2_offset[k + 1] - ws.dx2_offset[k], w.x0 / kLanes * kLanes, w,
             c[4], spatial_weight);
  }
  // Rows list their windows by grid column modulo `phases`, then by cluster: with wide windows,
  // consecutive passes over a row then seldom share a chunk and do not wait on each other's
  // stores (about 5 % at 224x224); narrow windows share chunks anyway and keep ascending order.
  const int phases = wide_windows(grid, width) ? 3 : 1;
  for (int phase = 0; phase < phases; ++phase) {
    for (int k = 0; k < num_clusters; ++k) {
      if (k % grid.cols % phases != phase) continue;
      const Window w = ws.windows[k];
      for (int y = w.y0; y < w.y1; ++y) ws.row_list[ws.row_fill[y]++] = k;
    }
  }
}

int64_t assign(const GridShape& grid, int height, int width, float spatial_weight, int num_clusters,
               const float* centers, const float* l, const float* a, const float* b, int32_t* assignment,
               double* sums, bool first, int row_stride, int row_phase, Workspace& ws) {
  prepare_sweep(grid, height, width, spatial_weight, num_clusters, centers, ws);
  const int padded = (width + kLanes - 1) / kLanes * kLanes;
  ws.distance.resize(padded);
  ws.row_best.resize(padded);
  const Sweep sweep{height,         width,        row_stride,           row_phase,
                    spatial_weight, l,            a,                    b,
                    centers,        ws.windows.data(), ws.dx2.data(),   ws.dx2_offset.data(),
                    ws.row_offset.data(), ws.row_list.data(), ws.distance.data(), ws.row_best.data(),
                    assignment,     sums, first};
  return assign_rows(sweep, wide_windows(grid, width));
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

// Bit x of bits (width / 64 words) is set where a run of equal values ends: row[x] != row[x + 1],
// and at the last column. A vector compare to bytes, then 8 bytes to 8 bits by one multiply,
// instead of a branch per pixel.
VIGSP_HOT void run_end_bits(const int32_t* __restrict row, int width, uint8_t* __restrict change,
                            uint64_t* __restrict bits) {
  for (int x = 0; x + 1 < width; ++x) change[x] = static_cast<uint8_t>(row[x] != row[x + 1]);
  change[width - 1] = 1;
  std::fill(bits, bits + (width + 63) / 64, 0);
  constexpr uint64_t kGather = 0x0102040810204080;  // byte i (0 or 1) -> bit 56 + i
  int x = 0;
  for (; x + 8 <= width; x += 8) {
    uint64_t bytes;
    std::memcpy(&bytes, change + x, sizeof bytes);
    bits[x >> 6] |= ((bytes * kGather) >> 56) << (x & 63);
  }
  for (; x < width; ++x) bits[x >> 6] |= static_cast<uint64_t>(change[x]) << (x & 63);
}

// Relabels the 4-connected components of the k-means assignment to compact labels, numbered
// in raster order of their first pixel. A component smaller than min_size joins the region
// of the pixel left of (or, in column 0, above) its first pixel, which is 4-adjacent to it and
// already labelled, so every final label is one connected region.
//
// Works on runs (maximal same-cluster row segments) with union-find instead of a per-pixel
// flood fill: runs are numbered in raster order and a union keeps the smaller number as the
// root, so a component's root is its first run and the component order is the root order.
int enforce_connectivity(int height, int width, const int32_t* assignment, int64_t min_size, Workspace& ws,
                         int32_t* labels) {
  std::vector<int32_t>& run_x = ws.run_x;       // start column of each run; the run ends where the next starts
  std::vector<int32_t>& parent = ws.run_parent; // union-find forest over runs
  std::vector<int32_t>& row_first = ws.row_first_run;  // height + 1
  run_x.clear();
  parent.clear();
  const int words = (width + 63) / 64;
  ws.row_change.resize(width);
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
    run_end_bits(row, width, ws.row_change.data(), ws.row_end_bits.data());
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

int slic(const ImageView& image, const SlicParams& params, int32_t* labels, Workspace& ws) {
  check_slic_params(params);
  const int height = image.height, width = image.width;
  const GridShape grid = grid_shape(height, width, params.n_segments);
  const int64_t n = static_cast<int64_t>(height) * width;
  const int num_clusters = grid.rows * grid.cols;

  // Chunks past the last column read into the next plane; the slack covers the last plane.
  ws.lab.resize(3 * n + kLanes);
  std::fill(ws.lab.end() - kLanes, ws.lab.end(), 0.0f);
  ws.assignment.resize(n);
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
  const int stride = std::min(params.subsample_stride, height);
  for (int it = 0; it < params.max_iter; ++it) {
    const int phase = it % stride;
    const int64_t changed = assign(grid, height, width, spatial_weight, num_clusters, ws.centers.data(), l, a, b,
                                   ws.assignment.data(), ws.sums.data(), it < stride, stride, phase, ws);
    // No pixel moved: the centres are a fixed point, so further iterations would change nothing.
    if (changed == 0 && stride == 1) break;
    move_centers(num_clusters, ws.sums.data(), ws.centers.data());
  }
  if (stride > 1)  // the subsampled iterations placed the centres; now label every pixel
    assign(grid, height, width, spatial_weight, num_clusters, ws.centers.data(), l, a, b, ws.assignment.data(),
           nullptr, false, 1, 0, ws);
  const auto min_size = static_cast<int64_t>(params.min_size_factor * static_cast<double>(n) / num_clusters);
  return enforce_connectivity(height, width, ws.assignment.data(), min_size, ws, labels);
}

}  // namespace vigsp
