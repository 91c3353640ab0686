// Byte flags to bit words: the branch-free step that lets row scans jump from run end to run end.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>

namespace vigsp {

// For each i, sets bit x of bits[i] ((n + 63) / 64 words) where bytes[x] lacks flags[i]: eight
// bytes at a time, each flag moved to bit 0 and the eight bits gathered by one multiply
// (byte j -> bit 56 + j). Several flags share one pass over the bytes.
template <int kFlags>
inline void bits_lacking(const uint8_t* __restrict bytes, int n, const uint8_t (&flags)[kFlags],
                         uint64_t* const (&bits)[kFlags]) {
  constexpr uint64_t kLow = 0x0101010101010101, kGather = 0x0102040810204080;
  int shift[kFlags];
  for (int i = 0; i < kFlags; ++i) {
    shift[i] = std::countr_zero(flags[i]);
    std::fill(bits[i], bits[i] + (n + 63) / 64, 0);
  }
  int x = 0;
  for (; x + 8 <= n; x += 8) {
    uint64_t word;
    std::memcpy(&word, bytes + x, sizeof word);
    for (int i = 0; i < kFlags; ++i)
      bits[i][x >> 6] |= (((~(word >> shift[i]) & kLow) * kGather) >> 56) << (x & 63);
  }
  for (; x < n; ++x)
    for (int i = 0; i < kFlags; ++i) bits[i][x >> 6] |= static_cast<uint64_t>(!(bytes[x] & flags[i])) << (x & 63);
}

}  // namespace vigsp
