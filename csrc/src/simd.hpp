// Hot loops are compiled twice, for x86-64-v4 (AVX-512), x86-64-v3 (AVX2) and a portable baseline, and picked at
// load time (GCC/Clang function multi-versioning), so one wheel is both portable and fast.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__) && \
    !defined(VIGSP_NO_MULTIVERSION)
#define VIGSP_HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VIGSP_HOT
#endif
