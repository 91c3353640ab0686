// Shapes, label checks and the batch thread loop: the small pieces every entry point shares.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "simd.hpp"
#include "vigsp/superpixel.hpp"

namespace vigsp {

ImageView make_image_view(const uint8_t* data, int height, int width) {
  if (height <= 0 || width <= 0)
    throw InvalidArgument("image must be at least 1x1, got " + std::to_string(height) + "x" +
                          std::to_string(width));
  return ImageView{data, height, width, static_cast<int64_t>(width) * 3};
}

GridShape grid_shape(int height, int width, int n_segments) {
  if (n_segments <= 0)
    throw InvalidArgument("n_segments must be positive, got " + std::to_string(n_segments));
  if (height <= 0 || width <= 0)
    throw InvalidArgument("image must be at least 1x1, got " + std::to_string(height) + "x" +
                          std::to_string(width));
  // Cells as close to square as the aspect ratio allows, rows * cols close to n_segments.
  const double rows_exact = std::sqrt(static_cast<double>(n_segments) * height / width);
  const int rows = std::max(1, static_cast<int>(std::lround(rows_exact)));
  const int cols = std::max(1, static_cast<int>(std::lround(static_cast<double>(n_segments) / rows)));
  if (rows > height || cols > width)
    throw InvalidArgument("image of " + std::to_string(height) + "x" + std::to_string(width) +
                          " pixels is smaller than the " + std::to_string(rows) + "x" +
                          std::to_string(cols) + " segment grid for n_segments=" +
                          std::to_string(n_segments) + "; use fewer segments or a larger image");
  return {rows, cols};
}

int grid_labels(int height, int width, int n_segments, int32_t* labels) {
  const GridShape grid = grid_shape(height, width, n_segments);
  std::vector<int32_t> col_cell(width);
  for (int x = 0; x < width; ++x) col_cell[x] = static_cast<int32_t>(static_cast<int64_t>(x) * grid.cols / width);
  for (int y = 0; y < height; ++y) {
    const int32_t row_base = static_cast<int32_t>(static_cast<int64_t>(y) * grid.rows / height) * grid.cols;
    int32_t* out = labels + static_cast<int64_t>(y) * width;
    for (int x = 0; x < width; ++x) out[x] = row_base + col_cell[x];
  }
  return grid.rows * grid.cols;
}

namespace {

// Min and max in one vectorised pass, optionally copying on the way (the copy is then free:
// the data is in registers anyway).
VIGSP_HOT void label_range(const int32_t* labels, int64_t n, int32_t* copy, int32_t& lo_out, int32_t& hi_out) {
  int32_t lo = labels[0], hi = labels[0];
  if (copy != nullptr) {
    for (int64_t i = 0; i < n; ++i) {
      const int32_t l = labels[i];
      copy[i] = l;
      lo = std::min(lo, l);
      hi = std::max(hi, l);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      lo = std::min(lo, labels[i]);
      hi = std::max(hi, labels[i]);
    }
  }
  lo_out = lo;
  hi_out = hi;
}

}  // namespace

int validate_labels(std::span<const int32_t> labels) { return copy_validated_labels(labels, nullptr); }

int copy_validated_labels(std::span<const int32_t> labels, int32_t* out) {
  if (labels.empty()) throw InvalidArgument("label map is empty");
  // That every label in 0..n-1 is present is checked by build_graph, which counts pixels per
  // label anyway.
  int32_t lo = 0, hi = 0;
  label_range(labels.data(), static_cast<int64_t>(labels.size()), out, lo, hi);
  if (lo < 0) throw InvalidArgument("labels must be >= 0, found " + std::to_string(lo));
  if (static_cast<int64_t>(hi) >= static_cast<int64_t>(labels.size()))
    throw InvalidArgument("label " + std::to_string(hi) + " exceeds the number of pixels; labels must be compact 0..n-1");
  return hi + 1;
}

void parallel_for(int n, int num_threads, const std::function<void(int, int)>& fn) {
  if (num_threads <= 0) num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  num_threads = std::min(num_threads, n);
  if (num_threads <= 1) {
    for (int i = 0; i < n; ++i) fn(i, 0);
    return;
  }
  std::atomic<int> next{0};
  std::exception_ptr error;
  std::atomic<bool> failed{false};
  auto worker = [&](int tid) {
    for (int i = next++; i < n && !failed; i = next++) {
      try {
        fn(i, tid);
      } catch (...) {
        if (!failed.exchange(true)) error = std::current_exception();
      }
    }
  };
  std::vector<std::jthread> threads;
  threads.reserve(num_threads - 1);
  for (int t = 1; t < num_threads; ++t) threads.emplace_back(worker, t);
  worker(0);
  threads.clear();  // joins
  if (error) std::rethrow_exception(error);
}

}  // namespace vigsp
