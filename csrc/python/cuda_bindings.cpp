// vigsp._native's CUDA part: the batched GPU backend on device arrays. Inputs are any objects
// with __cuda_array_interface__ (CuPy, torch, numba, our DeviceBuffer), parsed here so the build
// needs no CuPy; outputs are DeviceBuffers, which expose the same interface.
//
// Compiled in every build: without the CUDA backend (VIGSP_HAVE_CUDA unset) the functions exist
// and raise RuntimeError, and cuda_built is False, so Python code can test for it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#if VIGSP_HAVE_CUDA
#include <algorithm>
#include <memory>

#include "vigsp/superpixel_cuda.hpp"
#endif

namespace py = pybind11;
using namespace pybind11::literals;

void register_cuda_bindings(py::module_& m);

namespace {

#if VIGSP_HAVE_CUDA

namespace vc = vigsp::cuda;

[[noreturn]] void invalid(const std::string& message) { throw vigsp::InvalidArgument(message); }

void require_device() {
  if (vc::device_count() == 0)
    throw std::runtime_error(
        "no CUDA device is available (vigsp._native.cuda_device_count() == 0): the CUDA backend needs an NVIDIA "
        "GPU and driver; use vigsp.superpixels (the CPU core) instead");
}

size_t itemsize_of(const std::string& typestr) { return static_cast<size_t>(std::stoi(typestr.substr(2))); }

// A C-contiguous device array parsed from __cuda_array_interface__ (versions 0 to 3).
struct DeviceArrayView {
  uintptr_t ptr = 0;
  std::vector<int64_t> shape;
  std::string typestr;
  py::object stream;  // the producer's stream (int) or None
  int64_t size() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
};

DeviceArrayView parse_cai(const py::handle& obj, const std::string& what) {
  if (!py::hasattr(obj, "__cuda_array_interface__"))
    invalid(what + " must be a CUDA device array (an object with __cuda_array_interface__, e.g. a CuPy array or "
                   "a torch CUDA tensor), got " + std::string(py::str(py::type::handle_of(obj).attr("__name__"))) +
            "; move a NumPy array to the GPU with cupy.asarray(a) or torch.from_numpy(a).cuda()");
  const py::dict cai = obj.attr("__cuda_array_interface__");
  DeviceArrayView v;
  for (const py::handle dim : cai["shape"].cast<py::tuple>()) v.shape.push_back(dim.cast<int64_t>());
  v.typestr = cai["typestr"].cast<std::string>();
  const py::tuple data = cai["data"].cast<py::tuple>();
  v.ptr = data[0].cast<uintptr_t>();
  if (cai.contains("mask") && !cai["mask"].is_none()) invalid(what + ": masked device arrays are not supported");
  if (cai.contains("strides") && !cai["strides"].is_none()) {
    // Strides may be given even for a contiguous array: accept exactly the C-order ones.
    const py::tuple strides = cai["strides"].cast<py::tuple>();
    int64_t expected = static_cast<int64_t>(itemsize_of(v.typestr));
    for (int i = static_cast<int>(v.shape.size()) - 1; i >= 0; --i) {
      if (v.shape[i] > 1 && strides[i].cast<int64_t>() != expected)
        invalid(what + " must be C-contiguous; make it so with .contiguous() (torch) or cupy.ascontiguousarray");
      expected *= v.shape[i];
    }
  }
  v.stream = cai.contains("stream") ? py::object(cai["stream"]) : py::none();
  if (v.size() > 0 && v.ptr == 0) invalid(what + " has a null data pointer");
  return v;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + (shape.size() == 1 ? ",)" : ")");
}

// Makes `device` current for a scope and restores the previous one.
class DeviceScope {
 public:
  explicit DeviceScope(int device) : previous_(vc::current_device()) {
    if (device != previous_) vc::set_device(device);
  }
  ~DeviceScope() {
    try {
      vc::set_device(previous_);
    } catch (...) {
    }
  }

 private:
  int previous_;
};

// Device memory owned by Python: a C-contiguous array of one dtype.
class DeviceBuffer {
 public:
  DeviceBuffer(std::vector<int64_t> shape, std::string typestr, int device, uintptr_t stream)
      : shape_(std::move(shape)), typestr_(std::move(typestr)), device_(device), stream_(stream) {
    DeviceScope scope(device_);
    ptr_ = vc::device_alloc(nbytes());
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) {
      try {
        DeviceScope scope(device_);
        vc::device_free(ptr_);
      } catch (...) {
      }
    }
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  template <typename T>
  T* data() const {
    return static_cast<T*>(ptr_);
  }
  size_t nbytes() const {
    size_t n = itemsize_of(typestr_);
    for (int64_t s : shape_) n *= static_cast<size_t>(s);
    return n;
  }
  py::dict interface() const {
    py::list shape;
    for (int64_t s : shape_) shape.append(s);
    py::dict d("shape"_a = py::tuple(shape), "typestr"_a = typestr_,
               "data"_a = py::make_tuple(reinterpret_cast<uintptr_t>(ptr_), false), "version"_a = 3,
               "strides"_a = py::none());
    // Version 3: the stream the data was produced on (1 = the legacy default stream; 0 is not allowed).
    d["stream"] = stream_ == 0 ? uintptr_t{1} : stream_;
    return d;
  }
  py::array to_numpy() const {
    py::array out(py::dtype(typestr_), shape_);
    {
      py::gil_scoped_release release;
      DeviceScope scope(device_);
      vc::copy_to_host(out.mutable_data(), ptr_, nbytes(), reinterpret_cast<cudaStream_t>(stream_));
    }
    return out;
  }
  static std::shared_ptr<DeviceBuffer> from_numpy(const py::array& host, int device) {
    require_device();
    auto arr = py::array::ensure(host, py::array::c_style);
    if (!arr) invalid("from_numpy needs an array");
    std::vector<int64_t> shape(arr.shape(), arr.shape() + arr.ndim());
    const std::string typestr = std::string(py::str(arr.dtype().attr("str")));
    auto buf = std::make_shared<DeviceBuffer>(shape, typestr, device < 0 ? vc::current_device() : device, 0);
    {
      py::gil_scoped_release release;
      DeviceScope scope(buf->device_);
      vc::copy_to_device(buf->ptr_, arr.data(), buf->nbytes(), nullptr);
      vc::stream_synchronize(nullptr);
    }
    return buf;
  }
  const std::vector<int64_t>& shape() const { return shape_; }
  const std::string& typestr() const { return typestr_; }
  int device() const { return device_; }

 private:
  void* ptr_ = nullptr;
  std::vector<int64_t> shape_;
  std::string typestr_;
  int device_;
  uintptr_t stream_;
};

using BufferPtr = std::shared_ptr<DeviceBuffer>;

// The stream to work on: the caller's, else the one the input was produced on, else legacy default.
uintptr_t pick_stream(const py::object& stream, const DeviceArrayView& input) {
  if (!stream.is_none()) return stream.cast<uintptr_t>();
  if (!input.stream.is_none()) return input.stream.cast<uintptr_t>();
  return 0;
}

struct Batch {
  int batch = 0, height = 0, width = 0, device = 0;
  uintptr_t stream = 0;
  std::vector<const uint8_t*> images;
};

Batch checked_images(const py::handle& images_obj, const py::object& stream) {
  require_device();  // first, so a machine without a GPU always gets the same clear RuntimeError
  const DeviceArrayView v = parse_cai(images_obj, "images");
  if (v.typestr != "|u1")
    invalid("images must have dtype uint8, got typestr '" + v.typestr +
            "'; convert with (images * 255).clip(0, 255).to(torch.uint8) (or .astype(cupy.uint8))");
  if (v.shape.size() != 4 || v.shape[3] != 3)
    invalid("images must have shape (B, H, W, 3) (a batch of RGB images), got " + shape_string(v.shape));
  if (v.shape[0] == 0) invalid("images: the batch is empty");
  if (v.shape[1] > INT32_MAX || v.shape[2] > INT32_MAX || v.shape[0] > INT32_MAX) invalid("images are too large");
  Batch b;
  b.batch = static_cast<int>(v.shape[0]);
  b.height = static_cast<int>(v.shape[1]);
  b.width = static_cast<int>(v.shape[2]);
  b.device = vc::pointer_device(reinterpret_cast<const void*>(v.ptr));
  if (b.device < 0) invalid("images must live in CUDA device (or managed) memory, not host memory");
  b.stream = pick_stream(stream, v);
  const int64_t bytes = static_cast<int64_t>(b.height) * b.width * 3;
  for (int i = 0; i < b.batch; ++i) b.images.push_back(reinterpret_cast<const uint8_t*>(v.ptr) + i * bytes);
  return b;
}

// Runs one plan into fresh DeviceBuffers and returns them as a dict. For Mode::kLabels, `labels`
// (device int32) is copied into the labels output first.
py::dict run_plan(const Batch& b, const vc::BatchPlan& plan, const int32_t* labels) {
  const int B = b.batch, H = b.height, W = b.width;
  const int64_t nodes = plan.node_capacity[0], edges = plan.edge_capacity[0];  // uniform batch
  auto make = [&](std::vector<int64_t> shape, const char* typestr) {
    return std::make_shared<DeviceBuffer>(std::move(shape), typestr, b.device, b.stream);
  };
  BufferPtr labels_out = make({B, H, W}, "<i4"), mask = make({B, H, W}, "|u1");
  BufferPtr features = make({B, nodes, vigsp::kNumFeatures}, "<f4"), rag = make({B, edges, 2}, "<i4");
  BufferPtr num_nodes = make({B}, "<i4"), num_edges = make({B}, "<i8"), status = make({B}, "<i4");
  {
    py::gil_scoped_release release;
    DeviceScope scope(b.device);
    auto stream = reinterpret_cast<cudaStream_t>(b.stream);
    if (labels != nullptr) vc::copy_device(labels_out->data<int32_t>(), labels, labels_out->nbytes(), stream);
    vc::BatchOutputs out;
    out.labels = labels_out->data<int32_t>();
    out.pixel_mask = mask->data<uint8_t>();
    out.features = features->data<float>();
    out.rag_edges = rag->data<int32_t>();
    out.num_nodes = num_nodes->data<int32_t>();
    out.num_edges = num_edges->data<int64_t>();
    out.status = status->data<int32_t>();
    void* workspace = vc::device_alloc_async(vc::workspace_bytes(plan), stream);
    try {
      vc::run(plan, b.images, workspace, out, stream);
    } catch (...) {
      vc::device_free_async(workspace, stream);
      throw;
    }
    vc::device_free_async(workspace, stream);  // stream-ordered: freed after the kernels ran
  }
  return py::dict("labels"_a = labels_out, "pixel_mask"_a = mask, "features"_a = features, "rag_edges"_a = rag,
                  "num_nodes"_a = num_nodes, "num_edges"_a = num_edges, "status"_a = status,
                  "stream"_a = b.stream);
}

py::dict slic_graph_batch_cuda(const py::handle& images, const std::string& method, int n_segments,
                               float compactness, int max_iter, float min_size_factor, int subsample_stride,
                               const py::object& stream) {
  if (method != "slic" && method != "grid") invalid("method must be 'slic' or 'grid', got '" + method + "'");
  const Batch b = checked_images(images, stream);
  vigsp::SlicParams p;
  p.n_segments = n_segments;
  p.compactness = compactness;
  p.max_iter = max_iter;
  p.min_size_factor = min_size_factor;
  p.subsample_stride = subsample_stride;
  const std::vector<vc::SampleShape> shapes(b.batch, vc::SampleShape{b.height, b.width});
  const auto plan = vc::make_plan(shapes, method == "slic" ? vc::Mode::kSlic : vc::Mode::kGrid, p);
  return run_plan(b, plan, nullptr);
}

// Synchronises (it must size the plan from the labels and report bad ones): a checking and
// testing entry point rather than a pipeline one.
py::dict graph_from_labels_cuda(const py::handle& images, const py::handle& labels_obj, const py::object& stream) {
  const Batch b = checked_images(images, stream);
  const DeviceArrayView l = parse_cai(labels_obj, "labels");
  if (l.shape != std::vector<int64_t>{b.batch, b.height, b.width})
    invalid("labels must have shape (B, H, W) = " + shape_string({b.batch, b.height, b.width}) + ", got " +
            shape_string(l.shape));
  if (l.typestr != "<i4") invalid("labels must have dtype int32, got typestr '" + l.typestr + "'");
  if (vc::pointer_device(reinterpret_cast<const void*>(l.ptr)) != b.device)
    invalid("labels must live on the same CUDA device as images");
  const auto* labels = reinterpret_cast<const int32_t*>(l.ptr);
  const int64_t pixels = static_cast<int64_t>(b.height) * b.width;
  std::vector<int32_t> bounds(2 * static_cast<size_t>(b.batch));
  {
    py::gil_scoped_release release;
    DeviceScope scope(b.device);
    auto s = reinterpret_cast<cudaStream_t>(b.stream);
    void* scratch = vc::device_alloc_async(bounds.size() * sizeof(int32_t), s);
    vc::label_bounds(labels, b.batch, pixels, static_cast<int32_t*>(scratch), s);
    vc::copy_to_host(bounds.data(), scratch, bounds.size() * sizeof(int32_t), s);
    vc::device_free_async(scratch, s);
  }
  int capacity = 0;
  for (int i = 0; i < b.batch; ++i) {
    if (bounds[b.batch + i]) invalid("labels[" + std::to_string(i) + "]: labels must be >= 0");
    if (bounds[i] > pixels)
      invalid("labels[" + std::to_string(i) + "]: label " + std::to_string(bounds[i] - 1) +
              " exceeds the number of pixels; labels must be compact 0..n-1");
    capacity = std::max(capacity, bounds[i]);
  }
  const std::vector<vc::SampleShape> shapes(b.batch, vc::SampleShape{b.height, b.width});
  const auto plan = vc::make_plan(shapes, vc::Mode::kLabels, vigsp::SlicParams{}, capacity);
  py::dict result = run_plan(b, plan, labels);
  std::vector<int32_t> status(b.batch);
  {
    auto buf = result["status"].cast<BufferPtr>();
    py::gil_scoped_release release;
    DeviceScope scope(b.device);
    vc::copy_to_host(status.data(), buf->data<int32_t>(), status.size() * sizeof(int32_t),
                     reinterpret_cast<cudaStream_t>(b.stream));
  }
  for (int i = 0; i < b.batch; ++i)
    if (status[i] != vc::kOk) invalid("labels[" + std::to_string(i) + "]: " + vc::status_message(status[i]));
  return result;
}

#endif  // VIGSP_HAVE_CUDA

}  // namespace

void register_cuda_bindings(py::module_& m) {
#if VIGSP_HAVE_CUDA
  m.attr("cuda_built") = true;
  m.def("cuda_device_count", &vc::device_count, "Number of usable CUDA devices (0 without a driver or GPU).");
  py::class_<DeviceBuffer, BufferPtr>(m, "DeviceBuffer",
                                      "CUDA device memory holding one C-contiguous array; exposes "
                                      "__cuda_array_interface__ (wrap it with cupy.asarray or torch.as_tensor).")
      .def_property_readonly("__cuda_array_interface__", &DeviceBuffer::interface)
      .def_property_readonly("shape", [](const DeviceBuffer& b) { return py::tuple(py::cast(b.shape())); })
      .def_property_readonly("dtype", [](const DeviceBuffer& b) { return py::dtype(b.typestr()); })
      .def_property_readonly("device", &DeviceBuffer::device)
      .def_property_readonly("nbytes", &DeviceBuffer::nbytes)
      .def("to_numpy", &DeviceBuffer::to_numpy, "Copies to a new NumPy array (waits for the producing stream).")
      .def_static("from_numpy", &DeviceBuffer::from_numpy, "array"_a, "device"_a = -1,
                  "Copies a NumPy array to the current (or given) CUDA device.");
  m.def("cuda_slic_graph_batch", &slic_graph_batch_cuda, "images"_a, "method"_a = "slic", "n_segments"_a = 196,
        "compactness"_a = 10.0f, "max_iter"_a = 10, "min_size_factor"_a = 0.5f, "subsample_stride"_a = 1,
        "stream"_a = py::none(),
        "SLIC (or grid) superpixels and their graph for a (B, H, W, 3) uint8 device array, asynchronously on "
        "`stream` (an int cudaStream_t; default: the input's __cuda_array_interface__ stream, else the legacy "
        "default stream). Returns a dict of DeviceBuffers: labels (B,H,W) int32, pixel_mask (B,H,W) uint8, "
        "features (B,Nmax,13) float32, rag_edges (B,Emax,2) int32 (padded with -1), num_nodes (B,) int32, "
        "num_edges (B,) int64, status (B,) int32 (0 = ok), plus the stream used.");
  m.def("cuda_graph_from_labels", &graph_from_labels_cuda, "images"_a, "labels"_a, "stream"_a = py::none(),
        "The graph of given compact label maps ((B,H,W) int32 on the device), as cuda_slic_graph_batch returns "
        "it. Synchronises to size the result and to raise ValueError on bad labels.");
#else
  m.attr("cuda_built") = false;
  m.def("cuda_device_count", [] { return 0; }, "Always 0: this vigsp was built without the CUDA backend.");
  auto unavailable = [](const py::args&, const py::kwargs&) -> py::object {
    throw std::runtime_error(
        "vigsp was built without the CUDA backend (nvcc was not found at build time, or VIGSP_WITH_CUDA=OFF), so "
        "no CUDA device is available to it; rebuild with nvcc on PATH (or CUDACXX / CUDA_HOME set)");
  };
  m.def("cuda_slic_graph_batch", unavailable);
  m.def("cuda_graph_from_labels", unavailable);
#endif
}
