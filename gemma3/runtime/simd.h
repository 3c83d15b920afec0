/* SIMD helpers shared by gemma3's C++ kernels (engine/kernels.cpp, loss.cpp): bf16 <-> fp32 with
   PyTorch's rounding (nearest even), 16 lanes at a time, and an exp accurate to about an ulp. Needs
   AVX512F, AVX512BW and AVX512-BF16. */
#pragma once

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

static inline float from_bf16(uint16_t h) { uint32_t b = (uint32_t)h << 16; float f; __builtin_memcpy(&f, &b, 4); return f; }
static inline uint16_t to_bf16(float f) {            /* round to nearest even, as PyTorch does */
    uint32_t b;
    __builtin_memcpy(&b, &f, 4);
    if ((b & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0; /* NaN */
    b += 0x7FFFu + ((b >> 16) & 1u);
    return (uint16_t)(b >> 16);
}

typedef float f32;
typedef uint16_t bf16;

/* 16 lanes of fp32 from/to each storage type, rounding to nearest even for bf16. */
static inline __m512 load16_f32(const f32 *p) { return _mm512_loadu_ps(p); }
static inline __m512 round16_f32(__m512 v) { return v; }
static inline void store16_f32(f32 *p, __m512 v) { _mm512_storeu_ps(p, v); }
static inline __m512 widen16(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
static inline __m512 load16_bf16(const bf16 *p) { return widen16(_mm256_loadu_si256((const __m256i *)p)); }
static inline __m512 round16_bf16(__m512 v) { return widen16((__m256i)_mm512_cvtneps_pbh(v)); }
static inline __m512 neg16(__m512 v) {  /* flips the sign bit, as PyTorch's neg does (zeros too) */
    return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(v), _mm512_set1_epi32((int)0x80000000u)));
}
static inline void store16_bf16(bf16 *p, __m512 v) { _mm256_storeu_si256((__m256i *)p, (__m256i)_mm512_cvtneps_pbh(v)); }


static inline __m512 exp512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}
