// vigsp._native: the superpixel core on NumPy arrays. Work runs with the GIL released; bad
// input raises ValueError with a message that says what to change.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <memory>
#include <thread>
#include <string>
#include <utility>
#include <vector>

#include "vigsp/superpixel.hpp"

namespace py = pybind11;
using namespace pybind11::literals;

namespace {

using vigsp::InvalidArgument;

// A NumPy array that owns a moved-in std::vector, so results are handed over without a copy.
template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& values, std::vector<py::ssize_t> shape) {
  auto* owner = new std::vector<T>(std::move(values));
  py::capsule free_when_done(owner, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(shape, owner->data(), free_when_done);
}

std::string shape_string(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// Accepts only HxWx3 uint8: silently casting floats or dropping alpha would hide bugs upstream.
py::array_t<uint8_t, py::array::c_style> checked_image(const py::handle& obj, const std::string& what) {
  if (!py::isinstance<py::array>(obj))
    throw InvalidArgument(what + " must be a numpy array of shape (H, W, 3) and dtype uint8");
  auto arr = py::reinterpret_borrow<py::array>(obj);
  if (!arr.dtype().is(py::dtype::of<uint8_t>()))
    throw InvalidArgument(what + " must have dtype uint8, got " + std::string(py::str(arr.dtype())) +
                          "; convert with (image * 255).clip(0, 255).astype(numpy.uint8) if it is in [0, 1]");
  if (arr.ndim() != 3 || arr.shape(2) != 3) {
    std::string hint = arr.ndim() == 2 || (arr.ndim() == 3 && arr.shape(2) == 1)
                           ? "; a greyscale image can be repeated to 3 channels with numpy.repeat"
                           : (arr.ndim() == 3 && arr.shape(2) == 4 ? "; drop the alpha channel with image[..., :3]" : "");
    throw InvalidArgument(what + " must have shape (H, W, 3) (RGB), got " + shape_string(arr) + hint);
  }
  return py::array_t<uint8_t, py::array::c_style>::ensure(arr);
}

py::array_t<int32_t, py::array::c_style> checked_labels(const py::array& obj, int height, int width) {
  if (obj.ndim() != 2 || obj.shape(0) != height || obj.shape(1) != width)
    throw InvalidArgument("labels must have the image's shape (" + std::to_string(height) + ", " +
                          std::to_string(width) + "), got " + shape_string(obj));
  if (obj.dtype().kind() != 'i' && obj.dtype().kind() != 'u')
    throw InvalidArgument("labels must be integers, got dtype " + std::string(py::str(obj.dtype())));
  return py::array_t<int32_t, py::array::c_style | py::array::forcecast>::ensure(obj);
}

vigsp::ImageView view_of(const py::array_t<uint8_t, py::array::c_style>& arr) {
  return vigsp::make_image_view(arr.data(), static_cast<int>(arr.shape(0)), static_cast<int>(arr.shape(1)));
}

// One image's results before conversion to NumPy (filled without the GIL).
struct Result {
  int height = 0, width = 0;
  std::vector<int32_t> labels;
  std::vector<uint8_t> mask;
  vigsp::SuperpixelGraph graph;
};

enum class Method { kSlic, kGrid };

void compute(const vigsp::ImageView& image, Method method, const vigsp::SlicParams& params, Result& out,
             vigsp::Workspace& ws) {
  const int64_t n = static_cast<int64_t>(image.height) * image.width;
  out.height = image.height;
  out.width = image.width;
  out.labels.resize(n);
  out.mask.resize(n);
  const int num_labels = method == Method::kSlic
                             ? vigsp::slic(image, params, out.labels.data(), ws)
                             : vigsp::grid_labels(image.height, image.width, params.n_segments, out.labels.data());
  vigsp::build_graph(image, out.labels.data(), num_labels, out.mask.data(), out.graph, ws);
}

py::tuple to_python(Result&& r) {
  const auto num_edges = static_cast<py::ssize_t>(r.graph.num_rag_edges());
  const auto num_nodes = static_cast<py::ssize_t>(r.graph.num_nodes);
  return py::make_tuple(to_numpy(std::move(r.labels), {r.height, r.width}),
                        to_numpy(std::move(r.graph.rag_edges), {num_edges, 2}),
                        to_numpy(std::move(r.graph.features), {num_nodes, vigsp::kNumFeatures}),
                        to_numpy(std::move(r.mask), {r.height, r.width}));
}

vigsp::SlicParams slic_params(int n_segments, float compactness, int max_iter, float min_size_factor,
                              int subsample_stride = 1) {
  vigsp::SlicParams p;
  p.subsample_stride = subsample_stride;
  p.n_segments = n_segments;
  p.compactness = compactness;
  p.max_iter = max_iter;
  p.min_size_factor = min_size_factor;
  return p;
}

vigsp::Workspace& thread_workspace() {
  thread_local vigsp::Workspace ws;
  return ws;
}

py::tuple run_one(const py::handle& image_obj, Method method, const vigsp::SlicParams& params) {
  auto image = checked_image(image_obj, "image");
  const auto view = view_of(image);
  Result result;
  {
    py::gil_scoped_release release;
    compute(view, method, params, result, thread_workspace());
  }
  return to_python(std::move(result));
}

// A batch is a list of HxWx3 arrays (sizes may differ) or one BxHxWx3 array.
py::list run_batch(const py::object& images_obj, Method method, const vigsp::SlicParams& params, int num_threads) {
  std::vector<py::array_t<uint8_t, py::array::c_style>> images;
  if (py::isinstance<py::array>(images_obj) && py::reinterpret_borrow<py::array>(images_obj).ndim() == 4) {
    auto batch = py::reinterpret_borrow<py::array>(images_obj);
    for (py::ssize_t i = 0; i < batch.shape(0); ++i) images.push_back(checked_image(batch[py::int_(i)], "images[" + std::to_string(i) + "]"));
  } else {
    py::ssize_t i = 0;
    for (const py::handle item : images_obj) {
      images.push_back(checked_image(item, "images[" + std::to_string(i) + "]"));
      ++i;
    }
  }
  std::vector<vigsp::ImageView> views;
  for (const auto& img : images) views.push_back(view_of(img));
  std::vector<Result> results(views.size());
  {
    py::gil_scoped_release release;
    const int n = static_cast<int>(views.size());
    const int threads = num_threads > 0 ? std::min(num_threads, std::max(n, 1)) : 0;
    std::vector<vigsp::Workspace> workspaces(threads > 0 ? threads : std::max(1u, std::thread::hardware_concurrency()));
    vigsp::parallel_for(n, static_cast<int>(workspaces.size()),
                        [&](int i, int tid) { compute(views[i], method, params, results[i], workspaces[tid]); });
  }
  py::list out;
  for (auto& r : results) out.append(to_python(std::move(r)));
  return out;
}

}  // namespace

void register_cuda_bindings(py::module_& m);  // csrc/python/cuda_bindings.cpp

PYBIND11_MODULE(_native, m) {
  m.doc() = "vigsp superpixel core (C++): SLIC, grid cells and the superpixel graph on NumPy arrays";
  py::register_exception<InvalidArgument>(m, "InvalidArgument", PyExc_ValueError);

  py::list names;
  for (const char* name : vigsp::kFeatureNames) names.append(name);
  m.attr("FEATURE_NAMES") = py::tuple(names);
  m.attr("NUM_FEATURES") = vigsp::kNumFeatures;
  m.attr("SAME_RIGHT") = vigsp::kSameRight;
  m.attr("SAME_DOWN") = vigsp::kSameDown;
  m.attr("DALI_BUILD_VERSION") = VIGSP_DALI_BUILD_VERSION;

  const char* returns = "Returns (labels [H,W] int32, rag_edges [E,2] int32, features [N,13] float32, pixel_mask [H,W] uint8).";
  m.def(
      "slic_graph",
      [](const py::handle& image, int n_segments, float compactness, int max_iter, float min_size_factor,
         int subsample_stride) {
        return run_one(image, Method::kSlic,
                       slic_params(n_segments, compactness, max_iter, min_size_factor, subsample_stride));
      },
      "image"_a, "n_segments"_a = 196, "compactness"_a = 10.0f, "max_iter"_a = 10, "min_size_factor"_a = 0.5f,
      "subsample_stride"_a = 1,
      (std::string("SLIC superpixels and their graph for one HxWx3 uint8 image. ") + returns).c_str());
  m.def(
      "grid_graph",
      [](const py::handle& image, int n_segments) {
        return run_one(image, Method::kGrid, slic_params(n_segments, 10.0f, 1, 0.5f));
      },
      "image"_a, "n_segments"_a = 196, (std::string("Square grid cells and their graph. ") + returns).c_str());
  m.def(
      "slic_graph_batch",
      [](const py::object& images, int n_segments, float compactness, int max_iter, float min_size_factor,
         int subsample_stride, int num_threads) {
        return run_batch(images, Method::kSlic,
                         slic_params(n_segments, compactness, max_iter, min_size_factor, subsample_stride), num_threads);
      },
      "images"_a, "n_segments"_a = 196, "compactness"_a = 10.0f, "max_iter"_a = 10, "min_size_factor"_a = 0.5f,
      "subsample_stride"_a = 1, "num_threads"_a = 0, "slic_graph over a list of images (or a BxHxWx3 array), in parallel threads (0 = all cores).");
  m.def(
      "grid_graph_batch",
      [](const py::object& images, int n_segments, int num_threads) {
        return run_batch(images, Method::kGrid, slic_params(n_segments, 10.0f, 1, 0.5f), num_threads);
      },
      "images"_a, "n_segments"_a = 196, "num_threads"_a = 0, "grid_graph over a batch, in parallel threads.");
  m.def(
      "slic_labels",
      [](const py::handle& image_obj, int n_segments, float compactness, int max_iter, float min_size_factor,
         int subsample_stride) {
        auto image = checked_image(image_obj, "image");
        const auto view = view_of(image);
        py::array_t<int32_t> labels({view.height, view.width});
        int32_t* out = labels.mutable_data();
        const auto params = slic_params(n_segments, compactness, max_iter, min_size_factor, subsample_stride);
        {
          py::gil_scoped_release release;
          vigsp::slic(view, params, out, thread_workspace());
        }
        return labels;
      },
      "image"_a, "n_segments"_a = 196, "compactness"_a = 10.0f, "max_iter"_a = 10, "min_size_factor"_a = 0.5f,
      "subsample_stride"_a = 1, "SLIC label map only ([H,W] int32, compact, each label connected).");
  m.def(
      "graph_from_labels",
      [](const py::handle& image_obj, const py::array& labels_obj) {
        auto image = checked_image(image_obj, "image");
        const auto view = view_of(image);
        auto labels = checked_labels(labels_obj, view.height, view.width);
        // The returned labels are a copy (never an alias of the caller's array), written by the
        // pass that validates them; labels and mask go straight into uninitialised NumPy arrays
        // (build_graph writes every mask byte).
        py::array_t<int32_t> labels_out({view.height, view.width});
        py::array_t<uint8_t> mask_out({view.height, view.width});
        int32_t* labels_ptr = labels_out.mutable_data();
        uint8_t* mask_ptr = mask_out.mutable_data();
        vigsp::SuperpixelGraph graph;
        {
          py::gil_scoped_release release;
          const int n = vigsp::copy_validated_labels({labels.data(), static_cast<size_t>(labels.size())}, labels_ptr);
          vigsp::build_graph(view, labels_ptr, n, mask_ptr, graph, thread_workspace());
        }
        const auto num_edges = static_cast<py::ssize_t>(graph.num_rag_edges());
        const auto num_nodes = static_cast<py::ssize_t>(graph.num_nodes);
        return py::make_tuple(labels_out, to_numpy(std::move(graph.rag_edges), {num_edges, 2}),
                              to_numpy(std::move(graph.features), {num_nodes, vigsp::kNumFeatures}), mask_out);
      },
      "image"_a, "labels"_a,
      (std::string("The graph of a given compact label map (0..n-1, all present). ") + returns).c_str());
  m.def(
      "pixel_edges",
      [](const py::array& mask_obj) {
        if (mask_obj.ndim() != 2 || !mask_obj.dtype().is(py::dtype::of<uint8_t>()))
          throw InvalidArgument("pixel_mask must be a 2-D uint8 array, got shape " + shape_string(mask_obj) +
                                " and dtype " + std::string(py::str(mask_obj.dtype())));
        auto mask = py::array_t<uint8_t, py::array::c_style>::ensure(mask_obj);
        const int h = static_cast<int>(mask.shape(0)), w = static_cast<int>(mask.shape(1));
        std::vector<int64_t> edges;
        {
          py::gil_scoped_release release;
          edges = vigsp::pixel_edges_from_mask(mask.data(), h, w);
        }
        const auto count = static_cast<py::ssize_t>(edges.size() / 2);
        return to_numpy(std::move(edges), {count, 2});
      },
      "pixel_mask"_a, "Expands a pixel mask to [M,2] int64 flat-index edges (p, p+1) and (p, p+W), sorted.");
  register_cuda_bindings(m);
}
