"""C kernels for a CPU: a decoded token's block halves, the elementwise work of a prompt, the loss's rows.

Decoding one token reads every weight once, then runs about 1,900 tiny PyTorch operations (norms,
RoPE, casts, views) whose cost is mostly per-operation overhead: an RMSNorm of one 640-wide row is
ten aten operations, about 20 us. Here each half of a block is one call (`attention`,
`feed_forward`), and the weights are read by dot products that prefetch 2 KiB ahead of the row
they stream (PyTorch's bf16 `torch.mv` reads about 15 GB/s on this project's 2-core Xeon, these
about 21 GB/s). For a prompt, `rms_norm` (with the residual add), `norm_rope` and `geglu` each
make one vectorized pass where PyTorch makes two to ten. On the 270m preset, kernels against none
(same process, alternating): a decode step 15.8 against 29.5 ms in bf16 and 25.9 against 33.1 ms
in fp32; a 512-token bf16 prefill 123 against 230 ms.
`matvec_bf16` serves the output head and what the halves do not cover (batch > 1, layouts without
post-norms). bench/generate.py compares the whole with transformers.

Every step rounds to the model's dtype where the PyTorch code rounds it; sums run in another order,
attention's softmax stays in fp32 and tanh comes from our own exp, so results match the PyTorch
path to the last bit or two (tests/test_kernels.py). The source below is compiled once with the
system's C compiler into a cache folder (GEMMA3_CACHE, default ~/.cache/gemma3) and loaded with
ctypes. It needs Linux on x86-64 with AVX512-BF16 and a C compiler; anywhere else, or with
GEMMA3_NO_KERNEL=1, every function here returns None and the model runs its PyTorch code. None of
them has a backward: they decline any tensor that wants a gradient. The one that serves training,
`softmax_xent_`, works on logits that carry none (gemma3/loss.py writes the loss's gradient by hand):
the training step's log-softmax and its backward, about 130 ms of PyTorch for 1024 rows of the GPT-2
vocabulary here, become one 20 ms pass.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

SOURCE = r"""
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
static inline float from_f32(float f) { return f; }
static inline float to_f32(float f) { return f; }
#define LOAD_f32 from_f32
#define STORE_f32 to_f32
#define LOAD_bf16 from_bf16
#define STORE_bf16 to_bf16

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

/* One row of Gemma's RMSNorm, as gemma3/model.py computes it: in fp32, x * (1 / sqrt(mean(x^2) + eps))
   then * (1 + w), rounded once to the storage type. The squares are summed in double: PyTorch's fp32
   sum is within an ulp or two of that. */
#define NORM_ROW(T, LOAD, STORE)                                                                 \
    static inline void norm_row_##T(const T *x, const T *w, T *y, int64_t d, float eps) {        \
        int64_t full = d / 16 * 16;                                                               \
        __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();                               \
        for (int64_t i = 0; i < full; i += 16) {                                                  \
            __m512 v = load16_##T(x + i), sq = _mm512_mul_ps(v, v);                               \
            s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(sq)));                  \
            s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(sq), 1)))); \
        }                                                                                         \
        double ss = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));                                  \
        for (int64_t i = full; i < d; i++) { float v = LOAD(x[i]); ss += (double)(v * v); }       \
        float inv = 1.0f / sqrtf((float)ss / (float)d + eps);                                     \
        __m512 vinv = _mm512_set1_ps(inv), one = _mm512_set1_ps(1.0f);                            \
        for (int64_t i = 0; i < full; i += 16)                                                    \
            store16_##T(y + i, _mm512_mul_ps(_mm512_mul_ps(load16_##T(x + i), vinv),              \
                                             _mm512_add_ps(one, load16_##T(w + i))));             \
        for (int64_t i = full; i < d; i++) {                                                      \
            float v = LOAD(x[i]) * inv;                                                           \
            y[i] = STORE(v * (1.0f + LOAD(w[i])));                                                \
        }                                                                                         \
    }

/* rows of RMSNorm: x, y [rows, d]; w [d] */
#define RMS_NORM(T, NAME)                                                                    \
    void NAME(const T *x, const T *w, const T *res, T *y, int64_t rows, int64_t d, float eps) { \
        _Pragma("omp parallel for if (rows > 8)")                                            \
        for (int64_t r = 0; r < rows; r++) {                                                 \
            T *yr = y + r * d;                                                               \
            norm_row_##T(x + r * d, w, yr, d, eps);                                          \
            if (res) { /* y = res + norm(x), the residual added after the norm's rounding */ \
                int64_t i = 0;                                                               \
                for (; i + 16 <= d; i += 16)                                                 \
                    store16_##T(yr + i, _mm512_add_ps(load16_##T(res + r * d + i), load16_##T(yr + i))); \
                for (; i < d; i++) yr[i] = STORE_##T(LOAD_##T(res[r * d + i]) + LOAD_##T(yr[i])); \
            }                                                                                \
        }                                                                                    \
    }

/* q or k rows [B, T, heads, d]: each head's row normed, then rotated on half-split pairs with the
   cos/sin row [T, d] of its position, each step rounded to the storage type as PyTorch rounds it:
   y = (n * cos) + (rotate_half(n) * sin), rotate_half(n) = [-n2, n1]. Needs d <= 1024. A token's
   heads lie together in x, tokens `step` elements apart (a slice of a fused q/k/v product); y is dense. */
#define NORM_ROPE(T, NAME, LOAD, STORE)                                                      \
    void NAME(const T *x, const T *w, const T *cs, const T *sn, T *y, int64_t rows, int64_t heads, \
              int64_t npos, int64_t d, int64_t step, float eps) {                            \
        int64_t h = d / 2;                                                                   \
        _Pragma("omp parallel for if (rows > 64)")                                           \
        for (int64_t r = 0; r < rows; r++) {                                                 \
            const T *c = cs + (r / heads) % npos * d, *s = sn + (r / heads) % npos * d;      \
            T n[1024];                                                                       \
            norm_row_##T(x + r / heads * step + r % heads * d, w, n, d, eps);                \
            int64_t i = 0;                                                                   \
            if (h % 16 == 0)                                                                 \
                for (; i < d; i += 16) {                                                     \
                    __m512 rot = i < h ? neg16(load16_##T(n + i + h)) : load16_##T(n + i - h); \
                    __m512 a = round16_##T(_mm512_mul_ps(load16_##T(n + i), load16_##T(c + i)));   \
                    __m512 b = round16_##T(_mm512_mul_ps(rot, load16_##T(s + i)));           \
                    store16_##T(y + r * d + i, _mm512_add_ps(a, b));                         \
                }                                                                            \
            for (; i < d; i++) {                                                             \
                float rot = i < h ? -LOAD(n[i + h]) : LOAD(n[i - h]);                         \
                float a = LOAD(STORE(LOAD(n[i]) * LOAD(c[i])));                               \
                float b = LOAD(STORE(rot * LOAD(s[i])));                                      \
                y[r * d + i] = STORE(a + b);                                                 \
            }                                                                                \
        }                                                                                    \
    }

NORM_ROW(f32, from_f32, to_f32)
NORM_ROW(bf16, from_bf16, to_bf16)
RMS_NORM(f32, rms_norm_f32)
RMS_NORM(bf16, rms_norm_bf16)
NORM_ROPE(f32, norm_rope_f32, from_f32, to_f32)
NORM_ROPE(bf16, norm_rope_bf16, from_bf16, to_bf16)

/* Dot products of one weight row with a vector, fp32 sums. The rows a thread reads are one linear
   stream: prefetching 2 KiB ahead of it reads memory about 1.4x faster than PyTorch's bf16 mv here. */
static inline float dot_bf16(const bf16 *w, const bf16 *x, int64_t cols) {
    int64_t full = cols / 64 * 64;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    for (int64_t c = 0; c < full; c += 64) {
        _mm_prefetch((const char *)(w + c + 1024), _MM_HINT_T0);
        _mm_prefetch((const char *)(w + c + 1056), _MM_HINT_T0);
        a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(w + c), (__m512bh)_mm512_loadu_si512(x + c));
        a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_loadu_si512(w + c + 32), (__m512bh)_mm512_loadu_si512(x + c + 32));
    }
    for (int64_t c = full; c < cols; c += 32) {
        __mmask32 m = cols - c >= 32 ? 0xFFFFFFFFu : ((1u << (cols - c)) - 1u);
        a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_maskz_loadu_epi16(m, w + c), (__m512bh)_mm512_maskz_loadu_epi16(m, x + c));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

static inline float dot_f32(const float *w, const float *x, int64_t cols) {
    int64_t full = cols / 32 * 32;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    for (int64_t c = 0; c < full; c += 32) {
        _mm_prefetch((const char *)(w + c + 512), _MM_HINT_T0);
        _mm_prefetch((const char *)(w + c + 528), _MM_HINT_T0);
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + c), _mm512_loadu_ps(x + c), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + c + 16), _mm512_loadu_ps(x + c + 16), a1);
    }
    for (int64_t c = full; c < cols; c += 16) {
        __mmask16 m = cols - c >= 16 ? 0xFFFF : (__mmask16)((1u << (cols - c)) - 1u);
        a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w + c), _mm512_maskz_loadu_ps(m, x + c), a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

static inline float gelu_tanh(float x) {                 /* as PyTorch's CPU kernel writes it */
    const float beta = (float)(M_SQRT2 * M_2_SQRTPI * 0.5), kappa = 0.044715f;
    float cube = x * x * x;
    float inner = beta * (x + kappa * cube);
    return 0.5f * x * (1.0f + tanhf(inner));
}
/* GeGLU over whole rows (a prompt's feed-forward): p = gelu_tanh(g) * u, the gelu rounded to the
   storage type first, as PyTorch does. 16 lanes at a time, tanh(v) = 1 - 2 / (e^2v + 1) with an exp
   accurate to about an ulp (Cephes' polynomial): within 1e-6 of PyTorch's vectorized tanh. */
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

static inline __m512 gelu512(__m512 x) {
    const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
    __m512 cube = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
    __m512 inner = _mm512_mul_ps(_mm512_set1_ps((float)(M_SQRT2 * M_2_SQRTPI * 0.5)),
                                 _mm512_add_ps(x, _mm512_mul_ps(_mm512_set1_ps(0.044715f), cube)));
    __m512 t = _mm512_sub_ps(one, _mm512_div_ps(two, _mm512_add_ps(exp512(_mm512_mul_ps(two, inner)), one)));
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), _mm512_add_ps(one, t));
}

#define GEGLU(T, LOAD, STORE)                                                                          \
void geglu_##T(const T *g, const T *u, T *p, int64_t n) {                                              \
    int64_t full = n / 16 * 16;                                                                        \
    _Pragma("omp parallel for schedule(static) if (n > 4096)")                                         \
    for (int64_t i = 0; i < full; i += 16)                                                             \
        store16_##T(p + i, _mm512_mul_ps(round16_##T(gelu512(load16_##T(g + i))), load16_##T(u + i))); \
    for (int64_t i = full; i < n; i++) p[i] = STORE(LOAD(STORE(gelu_tanh(LOAD(g[i])))) * LOAD(u[i]));  \
}
GEGLU(f32, from_f32, to_f32)
GEGLU(bf16, from_bf16, to_bf16)

/* The training loss's rows (gemma3/loss.py), in place: fp32 logits x [rows, V] become
   softmax(x) - one_hot(t), and loss[r] = logsumexp(x_r) - x_r[t_r]. Three passes over a row, which
   stays in L2 after the first: its max, the sum of exp(x - max) (lanes summed in double), the
   gradient. A row with a NaN or an infinity gets a NaN loss and gradient (the trainer then skips the
   step, as it does for the NaN or infinite loss of the PyTorch code). Targets must be in [0, V). */
void softmax_xent_f32(float *x, const int64_t *t, float *loss, int64_t rows, int64_t V) {
    int64_t full = V / 16 * 16;
    _Pragma("omp parallel for schedule(static)")
    for (int64_t r = 0; r < rows; r++) {
        float *row = x + r * V;
        __m512 m = _mm512_set1_ps(-INFINITY), z = _mm512_setzero_ps(); /* z: NaN once a value is not finite */
        for (int64_t i = 0; i < full; i += 16) {
            __m512 v = _mm512_loadu_ps(row + i);
            z = _mm512_add_ps(z, _mm512_sub_ps(v, v));
            m = _mm512_max_ps(m, v);
        }
        float mx = _mm512_reduce_max_ps(m);
        int bad = _mm512_cmp_ps_mask(z, z, _CMP_UNORD_Q) != 0;
        for (int64_t i = full; i < V; i++) {
            if (!isfinite(row[i])) bad = 1;
            if (row[i] > mx) mx = row[i];
        }
        if (bad) {
            loss[r] = NAN;
            for (int64_t i = 0; i < V; i++) row[i] = NAN;
            continue;
        }
        __m512 vm = _mm512_set1_ps(mx);
        __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
        for (int64_t i = 0; i < full; i += 16) {
            __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(row + i), vm));
            s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
            s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
        }
        double sum = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
        for (int64_t i = full; i < V; i++) sum += (double)expf(row[i] - mx);
        float lse = mx + (float)log(sum);
        loss[r] = lse - row[t[r]];
        __m512 vl = _mm512_set1_ps(lse);
        for (int64_t i = 0; i < full; i += 16)
            _mm512_storeu_ps(row + i, exp512(_mm512_sub_ps(_mm512_loadu_ps(row + i), vl)));
        for (int64_t i = full; i < V; i++) row[i] = expf(row[i] - lse);
        row[t[r]] -= 1.0f;
    }
}

/* y = W x. W: bf16 [rows, cols] row-major; x: bf16 [cols]; y: bf16 [rows]; fp32 sums, one rounding. */
void matvec_bf16(const bf16 *W, const bf16 *x, bf16 *y, int64_t rows, int64_t cols) {
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) y[r] = to_bf16(dot_bf16(W + r * cols, x, cols));
}

/* The two halves of a block for one decoded row (batch 1), each step rounded to the storage type
   where the PyTorch code rounds it.
   attention: h = norm(x); q, k, v = Wq h, Wk h, Wv h; q, k = rope(q_norm(q)), rope(k_norm(k)); k, v
   go to cache slot `slot` (cache k, v: [kv_heads, slots, hd]); a = softmax(q K^T * scale) V over the
   first n slots, per head, in fp32; out = x + post_norm(Wo a).
   Scratch: T [d + 3 * nh * hd + 2 * nkv * hd], fp32 [nh * slots].
   feed-forward: h = norm(x); p = gelu_tanh(Wg h) * (Wu h); out = x + post_norm(Wd p).
   Scratch: T [2 * (d + f)]. */
#define HALVES(T, LOAD, STORE)                                                                        \
void attn_##T(const T *x, const T *nw, const T *Wq, const T *Wk, const T *Wv, const T *qnw, const T *knw,    \
              const T *cs, const T *sn, T *K, T *V, const T *Wo, const T *pw, T *out, T *scratch,     \
              float *scores, int64_t d, int64_t nh, int64_t nkv, int64_t hd, int64_t slots,           \
              int64_t slot, int64_t n, float scale, float eps) {                                      \
    int64_t nq = nh * hd, nk = nkv * hd;                                                              \
    T *h = scratch, *raw = h + d, *q = raw + nq + 2 * nk, *a = q + nq;                                \
    norm_row_##T(x, nw, h, d, eps);                                                                   \
    _Pragma("omp parallel for schedule(static)")                                                      \
    for (int64_t r = 0; r < nq + 2 * nk; r++) {                                                       \
        const T *w = r < nq ? Wq + r * d : r < nq + nk ? Wk + (r - nq) * d : Wv + (r - nq - nk) * d;  \
        raw[r] = STORE(dot_##T(w, h, d));                                                             \
    }                                                                                                 \
    norm_rope_##T(raw, qnw, cs, sn, q, nh, nh, 1, hd, nq, eps);                                       \
    for (int64_t g = 0; g < nkv; g++) {                                                               \
        norm_rope_##T(raw + nq + g * hd, knw, cs, sn, K + (g * slots + slot) * hd, 1, 1, 1, hd, hd, eps); \
        for (int64_t i = 0; i < hd; i++) V[(g * slots + slot) * hd + i] = raw[nq + nk + g * hd + i];  \
    }                                                                                                 \
    _Pragma("omp parallel for schedule(static)")                                                      \
    for (int64_t head = 0; head < nh; head++) {                                                       \
        int64_t g = head / (nh / nkv);                                                                \
        const T *qh = q + head * hd, *Kg = K + g * slots * hd, *Vg = V + g * slots * hd;              \
        float *s = scores + head * slots, m = -INFINITY, sum = 0.0f, acc[1024];                       \
        for (int64_t j = 0; j < n; j++) {                                                             \
            s[j] = dot_##T(Kg + j * hd, qh, hd) * scale;                                              \
            if (s[j] > m) m = s[j];                                                                   \
        }                                                                                             \
        for (int64_t j = 0; j < n; j++) { s[j] = expf(s[j] - m); sum += s[j]; }                       \
        for (int64_t i = 0; i < hd; i++) acc[i] = 0.0f;                                               \
        for (int64_t j = 0; j < n; j++) {                                                             \
            float pj = s[j] / sum;                                                                    \
            for (int64_t i = 0; i < hd; i++) acc[i] += pj * LOAD(Vg[j * hd + i]);                     \
        }                                                                                             \
        for (int64_t i = 0; i < hd; i++) a[head * hd + i] = STORE(acc[i]);                            \
    }                                                                                                 \
    T *o = h; /* h is spent: reuse its room */                                                        \
    _Pragma("omp parallel for schedule(static)")                                                      \
    for (int64_t r = 0; r < d; r++) o[r] = STORE(dot_##T(Wo + r * nq, a, nq));                        \
    norm_row_##T(o, pw, o, d, eps);                                                                   \
    for (int64_t i = 0; i < d; i++) out[i] = STORE(LOAD(x[i]) + LOAD(o[i]));                          \
}                                                                                                     \
                                                                                                      \
void ffn_##T(const T *x, const T *nw, const T *Wg, const T *Wu, const T *Wd, const T *pw,             \
             T *out, T *scratch, int64_t d, int64_t f, float eps) {                                   \
    T *h = scratch, *p = scratch + d, *dn = scratch + d + f;                                          \
    norm_row_##T(x, nw, h, d, eps);                                                                   \
    _Pragma("omp parallel for schedule(static)")                                                      \
    for (int64_t r = 0; r < f; r++) {                                                                 \
        float g = LOAD(STORE(dot_##T(Wg + r * d, h, d)));                                             \
        float u = LOAD(STORE(dot_##T(Wu + r * d, h, d)));                                             \
        p[r] = STORE(LOAD(STORE(gelu_tanh(g))) * u);                                                  \
    }                                                                                                 \
    _Pragma("omp parallel for schedule(static)")                                                      \
    for (int64_t r = 0; r < d; r++) dn[r] = STORE(dot_##T(Wd + r * f, p, f));                         \
    norm_row_##T(dn, pw, dn, d, eps);                                                                 \
    for (int64_t i = 0; i < d; i++) out[i] = STORE(LOAD(x[i]) + LOAD(dn[i]));                         \
}

HALVES(f32, from_f32, to_f32)
HALVES(bf16, from_bf16, to_bf16)
"""
# -ffp-contract=off: no fused multiply-adds, so every product and sum rounds where PyTorch's does.
FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512bf16", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]
_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
SIGNATURES = {
    "matvec_bf16": [_P, _P, _P, _I, _I],
    "rms_norm_f32": [_P] * 4 + [_I, _I, _F], "rms_norm_bf16": [_P] * 4 + [_I, _I, _F],
    "norm_rope_f32": [_P] * 5 + [_I] * 5 + [_F], "norm_rope_bf16": [_P] * 5 + [_I] * 5 + [_F],
    "geglu_f32": [_P] * 3 + [_I], "geglu_bf16": [_P] * 3 + [_I],
    "softmax_xent_f32": [_P] * 3 + [_I, _I],
    "ffn_f32": [_P] * 8 + [_I, _I, _F], "ffn_bf16": [_P] * 8 + [_I, _I, _F],
    "attn_f32": [_P] * 16 + [_I] * 7 + [_F, _F], "attn_bf16": [_P] * 16 + [_I] * 7 + [_F, _F],
}
SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16"}

_lib = None  # the loaded library; False once we know it cannot be had


def cache_dir() -> Path:
    return Path(os.environ.get("GEMMA3_CACHE") or Path.home() / ".cache" / "gemma3")


def cpu_has_avx512_bf16() -> bool:
    try:
        return " avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def build() -> Path:
    """Compile the kernels (once; the file is named by the hash of source and flags); its path.
    The cache folder is tried first, then the system's temporary folder if it is not writable."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise OSError("no C compiler found")
    name = f"kernels-{hashlib.sha256((SOURCE + ' '.join(FLAGS)).encode()).hexdigest()[:16]}.so"
    for folder in (cache_dir(), Path(tempfile.gettempdir()) / "gemma3"):
        out = folder / name
        if out.exists():
            return out
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                src, lib = Path(tmp) / "kernels.c", Path(tmp) / "kernels.so"
                src.write_text(SOURCE)
                subprocess.run([compiler, *FLAGS, str(src), "-o", str(lib)], check=True, capture_output=True,
                               timeout=120)
                os.replace(lib, out)  # atomic: a half-written library is never loaded
            return out
        except OSError:  # not writable (or no such compiler: the second try fails the same way)
            continue
    raise OSError("could not build the kernels in either folder")


def load():
    """The kernels as a ctypes library, or None where they cannot run here."""
    global _lib
    if _lib is None:
        _lib = False
        if (os.environ.get("GEMMA3_NO_KERNEL") != "1" and sys.platform.startswith("linux")
                and platform.machine() == "x86_64" and cpu_has_avx512_bf16()):
            try:
                lib = ctypes.CDLL(str(build()))
            except (OSError, subprocess.SubprocessError):
                pass  # PyTorch it is
            else:
                for name, args in SIGNATURES.items():
                    getattr(lib, name).argtypes = args
                    getattr(lib, name).restype = None
                _lib = lib
    return _lib or None


def _usable(*tensors: torch.Tensor, strided: tuple[torch.Tensor, ...] = ()) -> bool:
    """No gradient wanted, CPU, one dtype we have kernels for, contiguous (except the `strided` ones,
    whose layout the caller checks), and the kernels built. The cheapest refusals come first: every
    training step's norm asks."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors + strided):
        return False
    dtype = tensors[0].dtype
    return (dtype in SUFFIX and all(t.device.type == "cpu" and t.dtype == dtype for t in tensors + strided)
            and all(t.is_contiguous() for t in tensors) and load() is not None)


def watched(*modules) -> bool:
    """Whether a forward hook watches any of these modules: then they must run as modules."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def matvec_bf16(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
    """weight [rows, cols] @ x [cols] in bf16, or None where the kernel cannot take it (use torch.mv)."""
    rows, cols = weight.shape
    if weight.dtype != torch.bfloat16 or x.numel() != cols or not _usable(weight, x):
        return None
    y = torch.empty(rows, dtype=torch.bfloat16)
    _lib.matvec_bf16(weight.data_ptr(), x.data_ptr(), y.data_ptr(), rows, cols)
    return y


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> torch.Tensor | None:
    """Gemma's RMSNorm over the last axis (weight as stored, 1 + w applied), plus `residual` when
    given (added after the norm's rounding, as `residual + norm(x)` does); or None (use PyTorch)."""
    d = weight.numel()
    if x.shape[-1] != d or (residual is not None and residual.shape != x.shape):
        return None
    if not _usable(x, weight, *(() if residual is None else (residual,))):
        return None
    y = torch.empty_like(x)
    getattr(_lib, "rms_norm_" + SUFFIX[x.dtype])(x.data_ptr(), weight.data_ptr(),
                                                 None if residual is None else residual.data_ptr(),
                                                 y.data_ptr(), x.numel() // d, d, eps)
    return y


def norm_rope(x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor,
              sin: torch.Tensor) -> torch.Tensor | None:
    """Per-head RMSNorm then half-split RoPE of q or k [B, T, heads, d], position t taking row t of
    cos, sin [T, d]; or None (use PyTorch). x may be a slice of a wider row (a fused q/k/v product):
    each token's heads together, tokens evenly spaced. The result is dense."""
    B, T, heads, d = x.shape if x.dim() == 4 else (0, 0, 0, -1)
    if (d != weight.numel() or d % 2 or d > 1024 or cos.shape != (T, d) or sin.shape != (T, d)
            or x.stride()[1:] != (x.stride(1), d, 1) or (B > 1 and x.stride(0) != T * x.stride(1))):
        return None
    if not _usable(weight, cos, sin, strided=(x,)):
        return None
    y = torch.empty(x.shape, dtype=x.dtype)
    getattr(_lib, "norm_rope_" + SUFFIX[x.dtype])(x.data_ptr(), weight.data_ptr(), cos.data_ptr(), sin.data_ptr(),
                                                  y.data_ptr(), B * T * heads, heads, T, d, x.stride(1), eps)
    return y


def geglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor | None:
    """gelu_tanh(gate) * up, or None (use PyTorch)."""
    if gate.shape != up.shape or not _usable(gate, up):
        return None
    p = torch.empty_like(gate)
    getattr(_lib, "geglu_" + SUFFIX[gate.dtype])(gate.data_ptr(), up.data_ptr(), p.data_ptr(), gate.numel())
    return p


def softmax_xent_(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """Per-row loss logsumexp(row) - row[target] of fp32 logits [n, V], turning `logits` into
    softmax - one_hot(target) in place; or None (use PyTorch). For the training loss (loss.py)."""
    if (logits.dim() != 2 or logits.dtype != torch.float32 or targets.shape != logits.shape[:1]
            or targets.dtype != torch.int64 or targets.device.type != "cpu" or not targets.is_contiguous()
            or not _usable(logits) or (len(targets) and not 0 <= targets.min() <= targets.max() < logits.shape[1])):
        return None  # (a target out of range: the PyTorch code says so)
    loss = torch.empty(len(logits), dtype=torch.float32)
    _lib.softmax_xent_f32(logits.data_ptr(), targets.data_ptr(), loss.data_ptr(), *logits.shape)
    return loss


def feed_forward(x: torch.Tensor, block) -> torch.Tensor | None:
    """x + post_ffn_norm(ffn(ffn_norm(x))) of a Block for one row, in one call; or None (use PyTorch)."""
    ffn, norm, post = block.ffn, block.ffn_norm, block.post_ffn_norm
    if x.numel() != x.shape[-1] or not hasattr(post, "weight") or watched(norm, ffn, post):
        return None
    ws = (norm.weight, ffn.gate.weight, ffn.up.weight, ffn.down.weight, post.weight)
    if not _usable(x, *ws):
        return None
    d, f = ffn.gate.weight.shape[1], ffn.gate.weight.shape[0]
    out, scratch = torch.empty_like(x), torch.empty(2 * (d + f), dtype=x.dtype)
    getattr(_lib, "ffn_" + SUFFIX[x.dtype])(x.data_ptr(), *(w.data_ptr() for w in ws), out.data_ptr(),
                                            scratch.data_ptr(), d, f, norm.eps)
    return out


def attention(x: torch.Tensor, block, cos: torch.Tensor, sin: torch.Tensor, pos: int, cache) -> torch.Tensor | None:
    """x + post_attn_norm(attn(attn_norm(x))) of a Block for one row at position `pos`, writing its key
    and value into the LayerCache `cache`, in one call; or None (use PyTorch)."""
    attn, norm, post = block.attn, block.attn_norm, block.post_attn_norm
    if (x.numel() != x.shape[-1] or not hasattr(post, "weight") or attn.keep_probs or watched(norm, attn, post)
            or attn.head_dim > 1024 or cache.k.shape[0] != 1):
        return None
    ws = (norm.weight, attn.wq.weight, attn.wk.weight, attn.wv.weight, attn.q_norm.weight, attn.k_norm.weight,
          cos, sin, cache.k, cache.v, attn.wo.weight, post.weight)
    if not _usable(x, *ws):
        return None
    d, nh, nkv, hd = x.shape[-1], attn.heads, attn.kv_heads, attn.head_dim
    slot, n = (pos % cache.slots if cache.ring else pos), min(pos + 1, cache.slots)
    out = torch.empty_like(x)
    scratch = torch.empty(d + (3 * nh + 2 * nkv) * hd, dtype=x.dtype)
    scores = torch.empty(nh * cache.slots, dtype=torch.float32)
    getattr(_lib, "attn_" + SUFFIX[x.dtype])(x.data_ptr(), *(w.data_ptr() for w in ws), out.data_ptr(),
                                             scratch.data_ptr(), scores.data_ptr(), d, nh, nkv, hd, cache.slots,
                                             slot, n, attn.scale, norm.eps)
    return out
