// sRGB -> CIELAB (D65, 2 degree observer), with the constants of skimage.color.rgb2lab.
#pragma once

#include <cstdint>

#include "vigsp/superpixel.hpp"

namespace vigsp::color {

inline constexpr double kWhiteX = 0.95047, kWhiteZ = 1.08883;
inline constexpr double kEpsilon = 0.008856;  // below it CIELAB's f(t) is linear
inline constexpr double kKappaSlope = 7.787;

// Converts a whole image to three float planes (L, a, b) of H*W values each.
void image_to_lab_planes(const ImageView& image, float* l_plane, float* a_plane, float* b_plane);

}  // namespace vigsp::color
