// SLIC (Achanta et al. 2012): k-means in (L, a, b, y, x) restricted to a window around each
// centre, then connectivity enforcement. Distances follow skimage.segmentation.slic:
// d = |lab - lab_k|^2 + (compactness / S)^2 |yx - yx_k|^2 with S = sqrt(H*W / K).
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "color.hpp"
#include "simd.hpp"
#include "vigsp/superpixel.hpp"

namespace vigsp {
namespace {

constexpr int kCenterStride = 5;  // L, a, b, y, x
constexpr int kSumStride = 6;     // L, a, b, y, x, count

void check_params(const SlicParams& p) {
  if (p.n_segments <= 0) throw InvalidArgument("n_segments must be positive, got " + std::to_string(p.n_segments));
  if (!(p.compactness > 0.0f) || !std::isfinite(p.compactness))
    throw InvalidArgument("compactness must be a positive number, got " + std::to_string(p.compactness));
  if (p.max_iter < 1) throw InvalidArgument("max_iter must be >= 1, got " + std::to_string(p.max_iter));
  if (p.subsample_stride < 1)
    throw InvalidArgument("subsample_stride must be >= 1, got " + std::to_string(p.subsample_stride));
  if (!(p.min_size_factor >= 0.0f && p.min_size_factor <= 1.0f))
    throw InvalidArgument("min_size_factor must be in [0, 1], got " + std::to_string(p.min_size_factor));
}

struct Window {
  int y0, y1, x0, x1;
};

// One cluster's window: keep, per pixel, the nearest centre seen so far. Dispatched once
// per cluster (not per row) so the ISA-specific clone's call overhead stays negligible.
VIGSP_HOT void assign_window(const float* __restrict l, const float* __restrict a, const float* __restrict b,
                             int width, Window win, int row_stride, const float* __restrict c,
                             float spatial_weight, int32_t k,
                             float* __restrict dx2, float* __restrict dist, int32_t* __restrict assignment) {
  const int n = win.x1 - win.x0;
  for (int x = 0; x < n; ++x) dx2[x] = spatial_weight * (win.x0 + x - c[4]) * (win.x0 + x - c[4]);
  const float cl = c[0], ca = c[1], cb = c[2];
  for (int y = win.y0; y < win.y1; y += row_stride) {
    const int64_t off = static_cast<int64_t>(y) * width + win.x0;
    const float dy2 = spatial_weight * (y - c[3]) * (y - c[3]);
    const float *rl = l + off, *ra = a + off, *rb = b + off;
    float* rd = dist + off;
    int32_t* rk = assignment + off;
    for (int i = 0; i < n; ++i) {
      const float dl = rl[i] - cl, da = ra[i] - ca, db = rb[i] - cb;
      const float d = dl * dl + da * da + db * db + dy2 + dx2[i];
      const bool closer = d < rd[i];
      rd[i] = closer ? d : rd[i];
      rk[i] = closer ? k : rk[i];
    }
  }
}

// Assigns rows y with y % row_stride == row_phase (all rows when row_stride is 1).
void assign(const GridShape& grid, int height, int width, float spatial_weight, int num_clusters,
            const float* centers, const float* l, const float* a, const float* b, float* dist,
            int32_t* assignment, int row_stride, int row_phase) {
  const float step_y = static_cast<float>(height) / grid.rows, step_x = static_cast<float>(width) / grid.cols;
  std::fill(dist, dist + static_cast<int64_t>(height) * width, std::numeric_limits<float>::infinity());
  std::vector<float> dx2(width);
  for (int k = 0; k < num_clusters; ++k) {
    const float* c = centers + k * kCenterStride;
    if (!std::isfinite(c[3])) continue;  // emptied cluster
    Window win{std::max(0, static_cast<int>(std::floor(c[3] - step_y))),
                     std::min(height, static_cast<int>(std::ceil(c[3] + step_y)) + 1),
                     std::max(0, static_cast<int>(std::floor(c[4] - step_x))),
                     std::min(width, static_cast<int>(std::ceil(c[4] + step_x)) + 1)};
    win.y0 += ((row_phase - win.y0) % row_stride + row_stride) % row_stride;  // first row of this phase
    assign_window(l, a, b, width, win, row_stride, c, spatial_weight, k, dx2.data(), dist, assignment);
  }
}

void add_pixel(double* sums, int32_t k, double l, double a, double b, double y, double x, double weight) {
  double* s = sums + static_cast<int64_t>(k) * kSumStride;
  s[0] += weight * l;
  s[1] += weight * a;
  s[2] += weight * b;
  s[3] += weight * y;
  s[4] += weight * x;
  s[5] += weight;
}

// Keeps per-cluster sums up to date by moving only the pixels whose cluster changed. The
// sums hold float values in double, which is exact at these magnitudes, so the result is
// the same as summing every pixel again. Returns how many pixels changed.
int64_t update_sums(int height, int width, int row_stride, int row_phase, const int32_t* previous,
                    const int32_t* assignment, const float* l, const float* a, const float* b, double* sums) {
  int64_t changed = 0;
  for (int y = row_phase; y < height; y += row_stride) {
    const int64_t base = static_cast<int64_t>(y) * width;
    for (int x = 0; x < width; ++x) {
      const int64_t p = base + x;
      if (previous[p] == assignment[p]) continue;
      ++changed;
      if (previous[p] >= 0) add_pixel(sums, previous[p], l[p], a[p], b[p], y, x, -1.0);
      add_pixel(sums, assignment[p], l[p], a[p], b[p], y, x, 1.0);
    }
  }
  return changed;
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

// Relabels 4-connected components of the k-means assignment to compact labels. Components
// smaller than min_size join the already-labelled region next to their first pixel, which is
// 4-adjacent to them, so every final label is one connected region.
int enforce_connectivity(int height, int width, const int32_t* assignment, int64_t min_size,
                         std::vector<int32_t>& queue, int32_t* labels) {
  const int64_t n = static_cast<int64_t>(height) * width;
  std::fill(labels, labels + n, -1);
  // The queue holds (pixel, column) pairs: knowing the column avoids a division per pixel.
  queue.resize(2 * n);
  int32_t next_label = 0;
  for (int64_t start = 0; start < n; ++start) {
    if (labels[start] >= 0) continue;
    const int x_start = static_cast<int>(start % width);
    const int32_t neighbour = x_start > 0 ? labels[start - 1] : (start >= width ? labels[start - width] : -1);
    const int32_t cluster = assignment[start];
    int64_t head = 0, tail = 0;
    auto push = [&](int64_t q, int x) {
      labels[q] = next_label;
      queue[2 * tail] = static_cast<int32_t>(q);
      queue[2 * tail + 1] = x;
      ++tail;
    };
    push(start, x_start);
    while (head < tail) {
      const int64_t p = queue[2 * head];
      const int x = queue[2 * head + 1];
      ++head;
      if (x > 0 && labels[p - 1] < 0 && assignment[p - 1] == cluster) push(p - 1, x - 1);
      if (x + 1 < width && labels[p + 1] < 0 && assignment[p + 1] == cluster) push(p + 1, x + 1);
      if (p >= width && labels[p - width] < 0 && assignment[p - width] == cluster) push(p - width, x);
      if (p + width < n && labels[p + width] < 0 && assignment[p + width] == cluster) push(p + width, x);
    }
    if (tail < min_size && neighbour >= 0) {
      for (int64_t i = 0; i < tail; ++i) labels[queue[2 * i]] = neighbour;
    } else {
      ++next_label;
    }
  }
  return next_label;
}

}  // namespace

int slic(const ImageView& image, const SlicParams& params, int32_t* labels, Workspace& ws) {
  check_params(params);
  const int height = image.height, width = image.width;
  const GridShape grid = grid_shape(height, width, params.n_segments);
  const int64_t n = static_cast<int64_t>(height) * width;
  const int num_clusters = grid.rows * grid.cols;

  ws.lab.resize(3 * n);
  ws.distance.resize(n);
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
  // previous == -1 everywhere: the first update adds every pixel.
  std::vector<int32_t>& previous = ws.previous_assignment;
  previous.assign(n, -1);
  std::fill(ws.assignment.begin(), ws.assignment.end(), -1);
  std::fill(ws.sums.begin(), ws.sums.end(), 0.0);
  const int stride = std::min(params.subsample_stride, height);
  for (int it = 0; it < params.max_iter; ++it) {
    const int phase = it % stride;
    assign(grid, height, width, spatial_weight, num_clusters, ws.centers.data(), l, a, b, ws.distance.data(),
           ws.assignment.data(), stride, phase);
    const int64_t changed = update_sums(height, width, stride, phase, previous.data(), ws.assignment.data(), l, a,
                                        b, ws.sums.data());
    // No pixel moved: the centres are a fixed point, so further iterations would change nothing.
    if (changed == 0 && stride == 1) break;
    move_centers(num_clusters, ws.sums.data(), ws.centers.data());
    std::copy(ws.assignment.begin(), ws.assignment.end(), previous.begin());
  }
  if (stride > 1)  // the subsampled iterations placed the centres; now label every pixel
    assign(grid, height, width, spatial_weight, num_clusters, ws.centers.data(), l, a, b, ws.distance.data(),
           ws.assignment.data(), 1, 0);
  const auto min_size = static_cast<int64_t>(params.min_size_factor * static_cast<double>(n) / num_clusters);
  return enforce_connectivity(height, width, ws.assignment.data(), min_size, ws.queue, labels);
}

}  // namespace vigsp
