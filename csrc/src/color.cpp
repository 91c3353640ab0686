#include "color.hpp"

#include <array>
#include <bit>
#include <cmath>
#include <vector>

#include "simd.hpp"

namespace vigsp {
namespace {

double srgb_to_linear(double c) {
  return c <= 0.04045 ? c / 12.92 : std::pow((c + 0.055) / 1.055, 2.4);
}

// sRGB byte -> linear light, computed once.
const std::array<float, 256>& linear_lut() {
  static const std::array<float, 256> lut = [] {
    std::array<float, 256> t{};
    for (int i = 0; i < 256; ++i) t[i] = static_cast<float>(srgb_to_linear(i / 255.0));
    return t;
  }();
  return lut;
}

// Cube root for t in [0.008, 1.1] without libm: a bit-level first guess (exponent / 3,
// done in float so it vectorises), then Newton steps; relative error < 1e-6 after three.
inline float fast_cbrt(float t) {
  const auto bits = std::bit_cast<int32_t>(t);
  float y = std::bit_cast<float>(static_cast<int32_t>(static_cast<float>(bits) * (1.0f / 3.0f)) + 709921077);
  y = (2.0f * y + t / (y * y)) * (1.0f / 3.0f);
  y = (2.0f * y + t / (y * y)) * (1.0f / 3.0f);
  y = (2.0f * y + t / (y * y)) * (1.0f / 3.0f);
  return y;
}

inline float lab_f(float t) {
  const float linear = static_cast<float>(color::kKappaSlope) * t + 16.0f / 116.0f;
  // fast_cbrt(0) would divide by zero; the linear branch is taken there anyway.
  const bool above = t > static_cast<float>(color::kEpsilon);
  const float root = fast_cbrt(above ? t : 1.0f);  // computed for every lane, then selected
  return above ? root : linear;
}

}  // namespace

void srgb_to_lab(double r, double g, double b, double lab[3]) {
  const double rl = srgb_to_linear(r / 255.0), gl = srgb_to_linear(g / 255.0), bl = srgb_to_linear(b / 255.0);
  const double x = (0.412453 * rl + 0.357580 * gl + 0.180423 * bl) / color::kWhiteX;
  const double y = 0.212671 * rl + 0.715160 * gl + 0.072169 * bl;
  const double z = (0.019334 * rl + 0.119193 * gl + 0.950227 * bl) / color::kWhiteZ;
  auto f = [](double t) { return t > color::kEpsilon ? std::cbrt(t) : color::kKappaSlope * t + 16.0 / 116.0; };
  const double fx = f(x), fy = f(y), fz = f(z);
  lab[0] = 116.0 * fy - 16.0;
  lab[1] = 500.0 * (fx - fy);
  lab[2] = 200.0 * (fy - fz);
}

namespace color {
namespace {

// Linear RGB planes -> Lab planes: pure arithmetic, so it vectorises.
VIGSP_HOT void linear_to_lab(const float* __restrict r, const float* __restrict g, const float* __restrict b,
                             int n, float* __restrict l_out, float* __restrict a_out, float* __restrict b_out) {
  constexpr float kInvWx = static_cast<float>(1.0 / kWhiteX), kInvWz = static_cast<float>(1.0 / kWhiteZ);
  for (int i = 0; i < n; ++i) {
    const float fx = lab_f((0.412453f * r[i] + 0.357580f * g[i] + 0.180423f * b[i]) * kInvWx);
    const float fy = lab_f(0.212671f * r[i] + 0.715160f * g[i] + 0.072169f * b[i]);
    const float fz = lab_f((0.019334f * r[i] + 0.119193f * g[i] + 0.950227f * b[i]) * kInvWz);
    l_out[i] = 116.0f * fy - 16.0f;
    a_out[i] = 500.0f * (fx - fy);
    b_out[i] = 200.0f * (fy - fz);
  }
}

}  // namespace

void image_to_lab_planes(const ImageView& image, float* l_plane, float* a_plane, float* b_plane) {
  const float* lut = linear_lut().data();
  const int width = image.width;
  std::vector<float> linear(3 * static_cast<size_t>(width));
  float *r = linear.data(), *g = r + width, *b = g + width;
  for (int y = 0; y < image.height; ++y) {
    const uint8_t* rgb = image.row(y);
    for (int x = 0; x < width; ++x) {  // a table lookup per byte: the gather part, kept scalar
      r[x] = lut[rgb[3 * x]];
      g[x] = lut[rgb[3 * x + 1]];
      b[x] = lut[rgb[3 * x + 2]];
    }
    const int64_t offset = static_cast<int64_t>(y) * width;
    linear_to_lab(r, g, b, width, l_plane + offset, a_plane + offset, b_plane + offset);
  }
}

}  // namespace color
}  // namespace vigsp
