/* The engine's C++ kernels: Gemma 3's inference on a CPU in fewer, vectorized passes. Each is a PyTorch
   operator gemma3_engine::NAME (registered at the end of this file, with its shapes for torch.compile
   in ops.py), built by gemma3/native.py with AVX512F/BW/BF16, OpenMP and -ffp-contract=off: no fused
   multiply-adds, so every product and sum rounds where the PyTorch code of gemma3/model.py rounds it.
   The loops run on PyTorch's OpenMP threads, so torch.set_num_threads governs them too. */
#include <torch/library.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <omp.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "simd.h"

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
    static void NAME(const T *x, const T *w, const T *res, T *y, int64_t rows, int64_t d, float eps) { \
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
    static void NAME(const T *x, const T *w, const T *cs, const T *sn, T *y, int64_t rows, int64_t heads, \
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

static inline __m512 gelu512(__m512 x) {
    const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
    __m512 cube = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
    __m512 inner = _mm512_mul_ps(_mm512_set1_ps((float)(M_SQRT2 * M_2_SQRTPI * 0.5)),
                                 _mm512_add_ps(x, _mm512_mul_ps(_mm512_set1_ps(0.044715f), cube)));
    __m512 t = _mm512_sub_ps(one, _mm512_div_ps(two, _mm512_add_ps(exp512(_mm512_mul_ps(two, inner)), one)));
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), _mm512_add_ps(one, t));
}

#define GEGLU(T, LOAD, STORE)                                                                          \
static void geglu_##T(const T *g, const T *u, T *p, int64_t n) {                                              \
    int64_t full = n / 16 * 16;                                                                        \
    _Pragma("omp parallel for schedule(static) if (n > 4096)")                                         \
    for (int64_t i = 0; i < full; i += 16)                                                             \
        store16_##T(p + i, _mm512_mul_ps(round16_##T(gelu512(load16_##T(g + i))), load16_##T(u + i))); \
    for (int64_t i = full; i < n; i++) p[i] = STORE(LOAD(STORE(gelu_tanh(LOAD(g[i])))) * LOAD(u[i]));  \
}
GEGLU(f32, from_f32, to_f32)
GEGLU(bf16, from_bf16, to_bf16)

/* y = W x. W [rows, cols] row-major, x [cols], y [rows]; fp32 sums, one rounding. (PyTorch's one-row
   fp32 product runs MKL's sgemv, single-threaded and at about half of one core's read rate here.) */
#define MATVEC(T, STORE)                                                                     \
static void matvec_##T(const T *W, const T *x, T *y, int64_t rows, int64_t cols) {          \
    _Pragma("omp parallel for schedule(static)")                                             \
    for (int64_t r = 0; r < rows; r++) y[r] = STORE(dot_##T(W + r * cols, x, cols));        \
}
MATVEC(f32, to_f32)
MATVEC(bf16, to_bf16)

/* A decoded token (batch 1) runs in one parallel region: its steps are too small for a region each.
   Every region start wakes the team's other threads, and libgomp lets them spin for the next one only
   while it manages no more threads than there are CPUs: from the main thread alone, not from the
   worker threads of a server, where each wake-up is a sleep and a futex call (about 50 us here; a
   demo-model token has 41 steps). Inside the region the threads split each step's rows and meet at
   a barrier that spins (they are all running short steps), then yields the CPU (one was not
   scheduled). */
struct Barrier {
    alignas(64) std::atomic<int> arrived{0};
    alignas(64) std::atomic<int> phase{0};
};

struct Team {
    int t, n;    /* this thread's number, the team's size */
    Barrier *b;
    void sync() const {
        if (n == 1) return;
        int phase = b->phase.load(std::memory_order_acquire);
        if (b->arrived.fetch_add(1, std::memory_order_acq_rel) == n - 1) {
            b->arrived.store(0, std::memory_order_relaxed);
            b->phase.store(phase + 1, std::memory_order_release);
            return;
        }
        for (int spins = 0; b->phase.load(std::memory_order_acquire) == phase; spins++) {
            if (spins < (1 << 14)) _mm_pause();
            else sched_yield();
        }
    }
    /* this thread's share [lo, hi) of `total` rows */
    int64_t lo(int64_t total) const { return total * t / n; }
    int64_t hi(int64_t total) const { return total * (t + 1) / n; }
};

/* The two halves of a block for one decoded row, run by every thread of a team, each step rounded to
   the storage type where the PyTorch code rounds it. x is the residual stream, updated in place.
   attention: h = norm(x); q, k, v = Wq h, Wk h, Wv h; q, k = rope(q_norm(q)), rope(k_norm(k)); k, v
   go to cache slot `slot` (cache k, v: [kv_heads, slots, hd]); a = softmax(q K^T * scale) V over the
   first n slots, per head, in fp32; x += post_norm(Wo a).
   Scratch: T [d + 3 * nh * hd + 2 * nkv * hd], fp32 [nh * slots].
   feed-forward: h = norm(x); p = gelu_tanh(Wg h) * (Wu h); x += post_norm(Wd p).
   Scratch: T [2 * (d + f)]. */
#define HALVES(T, LOAD, STORE)                                                                        \
static void attn_##T(const Team &tm, T *x, const T *nw, const T *Wq, const T *Wk, const T *Wv,               \
              const T *qnw, const T *knw, const T *cs, const T *sn, T *K, T *V, const T *Wo, const T *pw,     \
              T *scratch, float *scores, int64_t d, int64_t nh, int64_t nkv, int64_t hd, int64_t slots,      \
              int64_t slot, int64_t n, float scale, float eps) {                                      \
    int64_t nq = nh * hd, nk = nkv * hd;                                                              \
    T *h = scratch, *raw = h + d, *q = raw + nq + 2 * nk, *a = q + nq;                                \
    if (tm.t == 0) norm_row_##T(x, nw, h, d, eps);                                                    \
    tm.sync();                                                                                        \
    for (int64_t r = tm.lo(nq + 2 * nk); r < tm.hi(nq + 2 * nk); r++) {                               \
        const T *w = r < nq ? Wq + r * d : r < nq + nk ? Wk + (r - nq) * d : Wv + (r - nq - nk) * d;  \
        raw[r] = STORE(dot_##T(w, h, d));                                                             \
    }                                                                                                 \
    tm.sync();                                                                                        \
    if (tm.t == 0) {                                                                                  \
        norm_rope_##T(raw, qnw, cs, sn, q, nh, nh, 1, hd, nq, eps);                                   \
        for (int64_t g = 0; g < nkv; g++) {                                                           \
            norm_rope_##T(raw + nq + g * hd, knw, cs, sn, K + (g * slots + slot) * hd, 1, 1, 1, hd, hd, eps); \
            for (int64_t i = 0; i < hd; i++) V[(g * slots + slot) * hd + i] = raw[nq + nk + g * hd + i]; \
        }                                                                                             \
    }                                                                                                 \
    tm.sync();                                                                                        \
    for (int64_t head = tm.lo(nh); head < tm.hi(nh); head++) {                                        \
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
    tm.sync();                                                                                        \
    T *o = h; /* h is spent: reuse its room */                                                        \
    for (int64_t r = tm.lo(d); r < tm.hi(d); r++) o[r] = STORE(dot_##T(Wo + r * nq, a, nq));          \
    tm.sync();                                                                                        \
    if (tm.t == 0) {                                                                                  \
        norm_row_##T(o, pw, o, d, eps);                                                               \
        for (int64_t i = 0; i < d; i++) x[i] = STORE(LOAD(x[i]) + LOAD(o[i]));                        \
    }                                                                                                 \
    tm.sync();                                                                                        \
}                                                                                                     \
                                                                                                      \
static void ffn_##T(const Team &tm, T *x, const T *nw, const T *Wg, const T *Wu, const T *Wd, const T *pw,   \
             T *scratch, int64_t d, int64_t f, float eps) {                                           \
    T *h = scratch, *p = scratch + d, *dn = scratch + d + f;                                          \
    if (tm.t == 0) norm_row_##T(x, nw, h, d, eps);                                                    \
    tm.sync();                                                                                        \
    for (int64_t r = tm.lo(f); r < tm.hi(f); r++) {                                                   \
        float g = LOAD(STORE(dot_##T(Wg + r * d, h, d)));                                             \
        float u = LOAD(STORE(dot_##T(Wu + r * d, h, d)));                                             \
        p[r] = STORE(LOAD(STORE(gelu_tanh(g))) * u);                                                  \
    }                                                                                                 \
    tm.sync();                                                                                        \
    for (int64_t r = tm.lo(d); r < tm.hi(d); r++) dn[r] = STORE(dot_##T(Wd + r * f, p, f));           \
    tm.sync();                                                                                        \
    if (tm.t == 0) {                                                                                  \
        norm_row_##T(dn, pw, dn, d, eps);                                                             \
        for (int64_t i = 0; i < d; i++) x[i] = STORE(LOAD(x[i]) + LOAD(dn[i]));                       \
    }                                                                                                 \
    tm.sync();                                                                                        \
}                                                                                                     \
                                                                                                      \
/* Every block, the final norm and the head for one decoded row: logits = head(final_norm(x)).        \
   w holds 13 weights a layer (see decode_row below), kv 2 caches a layer, rope cos and sin a layer. */ \
static void decode_##T(T *x, const at::Tensor *w, const at::Tensor *kv, const at::Tensor *rope,      \
                       const int64_t *slot, const int64_t *len, const double *scale, int64_t layers,  \
                       const T *fnw, const T *head, T *logits, int64_t vocab, T *scratch, float *scores, \
                       int64_t d, int64_t nh, int64_t nkv, int64_t hd, int64_t f, float eps) {       \
    Barrier b;                                                                                        \
    _Pragma("omp parallel")                                                                           \
    {                                                                                                 \
        Team tm{omp_get_thread_num(), omp_get_num_threads(), &b};                                     \
        for (int64_t l = 0; l < layers; l++) {                                                        \
            const at::Tensor *lw = w + 13 * l;                                                        \
            attn_##T(tm, x, CPTR(lw[0], T), CPTR(lw[1], T), CPTR(lw[2], T), CPTR(lw[3], T), CPTR(lw[4], T), \
                     CPTR(lw[5], T), CPTR(rope[2 * l], T), CPTR(rope[2 * l + 1], T), PTR(kv[2 * l], T), \
                     PTR(kv[2 * l + 1], T), CPTR(lw[6], T), CPTR(lw[7], T), scratch, scores, d, nh, nkv, hd, \
                     kv[2 * l].size(2), slot[l], len[l], (float)scale[l], eps);                       \
            ffn_##T(tm, x, CPTR(lw[8], T), CPTR(lw[9], T), CPTR(lw[10], T), CPTR(lw[11], T), CPTR(lw[12], T), \
                    scratch, d, f, eps);                                                              \
        }                                                                                             \
        T *h = scratch;                                                                               \
        if (tm.t == 0) norm_row_##T(x, fnw, h, d, eps);                                               \
        tm.sync();                                                                                    \
        for (int64_t r = tm.lo(vocab); r < tm.hi(vocab); r++) logits[r] = STORE(dot_##T(head + r * d, h, d)); \
    }                                                                                                 \
}

#define PTR(t, T) reinterpret_cast<T *>((t).data_ptr())
#define CPTR(t, T) reinterpret_cast<const T *>((t).data_ptr())
HALVES(f32, from_f32, to_f32)
HALVES(bf16, from_bf16, to_bf16)

/* ---- PyTorch operators: shape checks, then the kernel of the tensors' dtype (fp32 or bf16) ---- */

#define BY_DTYPE(t, CALL)                                                                    \
    do {                                                                                     \
        if ((t).scalar_type() == at::kFloat) { typedef f32 T; CALL(f32); }                   \
        else { TORCH_CHECK((t).scalar_type() == at::kBFloat16, "fp32 or bf16 only"); typedef bf16 T; CALL(bf16); } \
    } while (0)

static void check(const at::Tensor &t, const at::Tensor &like, const char *name) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == like.scalar_type() && t.is_contiguous(),
                name, ": a contiguous CPU tensor of the input's dtype");
}

/* y = W x for one row: W [rows, cols], x [cols] -> [rows] */
static at::Tensor matvec(const at::Tensor &W, const at::Tensor &x) {
    TORCH_CHECK(W.dim() == 2 && x.numel() == W.size(1), "matvec: W [rows, cols], x [cols]");
    check(W, W, "W"); check(x, W, "x");
    at::Tensor y = at::empty({W.size(0)}, W.options());
#define CALL(S) matvec_##S(CPTR(W, T), CPTR(x, T), PTR(y, T), W.size(0), W.size(1))
    BY_DTYPE(W, CALL);
#undef CALL
    return y;
}

/* RMSNorm over the last axis (1 + w applied), plus `residual` after the norm's rounding when given */
static at::Tensor rms_norm(const at::Tensor &x, const at::Tensor &w, const c10::optional<at::Tensor> &residual, double eps) {
    int64_t d = w.numel();
    check(x, x, "x"); check(w, x, "weight");
    TORCH_CHECK(x.size(-1) == d, "rms_norm: the last axis must match the weight");
    const bool res = residual.has_value();
    if (res) { check(*residual, x, "residual"); TORCH_CHECK(residual->sizes() == x.sizes(), "residual: x's shape"); }
    at::Tensor y = at::empty_like(x);
#define CALL(S) rms_norm_##S(CPTR(x, T), CPTR(w, T), res ? CPTR(*residual, T) : nullptr, PTR(y, T), x.numel() / d, d, (float)eps)
    BY_DTYPE(x, CALL);
#undef CALL
    return y;
}

/* per-head RMSNorm then half-split RoPE of q or k [B, T, heads, d] (each token's heads together,
   tokens evenly spaced: a slice of a fused q/k/v product is fine), cos/sin [T, d] -> dense [B, T, heads, d] */
static at::Tensor norm_rope(const at::Tensor &x, const at::Tensor &w, const at::Tensor &cos, const at::Tensor &sin, double eps) {
    TORCH_CHECK(x.dim() == 4 && x.device().is_cpu(), "norm_rope: x [B, T, heads, d] on the CPU");
    int64_t B = x.size(0), len = x.size(1), heads = x.size(2), d = x.size(3);
    TORCH_CHECK(d == w.numel() && d % 2 == 0 && d <= 1024 && cos.sizes() == at::IntArrayRef({len, d}) && sin.sizes() == cos.sizes(),
                "norm_rope: head_dim even, at most 1024, matching the weight and the cos/sin tables [T, d]");
    TORCH_CHECK(x.stride(3) == 1 && x.stride(2) == d && (B == 1 || x.stride(0) == len * x.stride(1)), "norm_rope: heads must lie together");
    check(w, x, "weight"); check(cos, x, "cos"); check(sin, x, "sin");
    at::Tensor y = at::empty(x.sizes(), x.options());
#define CALL(S) norm_rope_##S(CPTR(x, T), CPTR(w, T), CPTR(cos, T), CPTR(sin, T), PTR(y, T), B * len * heads, heads, len, d, x.stride(1), (float)eps)
    BY_DTYPE(x, CALL);
#undef CALL
    return y;
}

/* gelu_tanh(gate) * up */
static at::Tensor geglu(const at::Tensor &g, const at::Tensor &u) {
    check(g, g, "gate"); check(u, g, "up");
    TORCH_CHECK(g.sizes() == u.sizes(), "geglu: gate and up of one shape");
    at::Tensor p = at::empty_like(g);
#define CALL(S) geglu_##S(CPTR(g, T), CPTR(u, T), PTR(p, T), g.numel())
    BY_DTYPE(g, CALL);
#undef CALL
    return p;
}

/* The logits of one decoded row (batch 1): every block, each writing its key and value at its cache
   slot and attending to the first `lengths` slots, then the final norm and the head. Per layer:
   weights, 13: attn_norm, wq, wk, wv, q_norm, k_norm, wo, post_attn_norm, ffn_norm, gate, up, down,
   post_ffn_norm; caches, 2: k, v [1, kv_heads, slots, head_dim]; rope, 2: cos, sin [head_dim]. */
static at::Tensor decode_row(const at::Tensor &x, at::TensorList weights, at::TensorList caches, at::TensorList rope,
                             at::IntArrayRef slots, at::IntArrayRef lengths, at::ArrayRef<double> scales,
                             const at::Tensor &final_norm, const at::Tensor &head, double eps) {
    int64_t layers = slots.size(), d = x.numel();
    TORCH_CHECK(layers > 0 && (int64_t)weights.size() == 13 * layers && (int64_t)caches.size() == 2 * layers
                && (int64_t)rope.size() == 2 * layers && (int64_t)lengths.size() == layers && (int64_t)scales.size() == layers,
                "decode_row: 13 weights, 2 caches, 2 rope tables, a slot, a length and a scale per layer");
    int64_t hd = weights[4].numel(), nh = weights[1].size(0) / hd, nkv = weights[2].size(0) / hd, f = weights[9].size(0);
    int64_t nq = nh * hd, most = 0;
    TORCH_CHECK(hd <= 1024 && hd % 2 == 0 && nkv > 0 && nh % nkv == 0, "decode_row: head_dim even, at most 1024");
    for (int64_t l = 0; l < layers; l++) {
        const at::Tensor *w = weights.data() + 13 * l, &k = caches[2 * l], &v = caches[2 * l + 1];
        const std::initializer_list<std::pair<const at::Tensor *, std::vector<int64_t>>> shapes = {
            {&w[0], {d}}, {&w[1], {nq, d}}, {&w[2], {nkv * hd, d}}, {&w[3], {nkv * hd, d}}, {&w[4], {hd}}, {&w[5], {hd}},
            {&w[6], {d, nq}}, {&w[7], {d}}, {&w[8], {d}}, {&w[9], {f, d}}, {&w[10], {f, d}}, {&w[11], {d, f}}, {&w[12], {d}}};
        for (const auto &[t, shape] : shapes) {
            check(*t, x, "decode_row weight");
            TORCH_CHECK(t->sizes() == at::IntArrayRef(shape), "decode_row: every layer's weights of one model's shapes");
        }
        check(k, x, "decode_row cache"); check(v, x, "decode_row cache");
        check(rope[2 * l], x, "decode_row cos"); check(rope[2 * l + 1], x, "decode_row sin");
        TORCH_CHECK(k.dim() == 4 && k.size(0) == 1 && k.size(1) == nkv && k.size(3) == hd && v.sizes() == k.sizes()
                    && rope[2 * l].numel() == hd && rope[2 * l + 1].numel() == hd
                    && 0 <= slots[l] && slots[l] < k.size(2) && 0 < lengths[l] && lengths[l] <= k.size(2),
                    "decode_row: caches [1, kv_heads, slots, head_dim], a slot and a length within them");
        most = std::max(most, k.size(2));
    }
    check(x, x, "x"); check(final_norm, x, "final_norm"); check(head, x, "head");
    TORCH_CHECK(final_norm.numel() == d && head.dim() == 2 && head.size(1) == d, "decode_row: final_norm [d], head [vocab, d]");
    at::Tensor stream = x.clone().view({d}), logits = at::empty({head.size(0)}, x.options());
    at::Tensor scratch = at::empty({std::max(d + 3 * nq + 2 * nkv * hd, 2 * (d + f))}, x.options());
    at::Tensor scores = at::empty({nh * most}, x.options().dtype(at::kFloat));
#define CALL(S) decode_##S(PTR(stream, T), weights.data(), caches.data(), rope.data(), slots.data(), lengths.data(),    \
                           scales.data(), layers, CPTR(final_norm, T), CPTR(head, T), PTR(logits, T), head.size(0),   \
                           PTR(scratch, T), scores.data_ptr<float>(), d, nh, nkv, hd, f, (float)eps)
    BY_DTYPE(x, CALL);
#undef CALL
    return logits;
}

TORCH_LIBRARY(gemma3_engine, m) {
    m.def("matvec(Tensor W, Tensor x) -> Tensor");
    m.def("rms_norm(Tensor x, Tensor weight, Tensor? residual, float eps) -> Tensor");
    m.def("norm_rope(Tensor x, Tensor weight, Tensor cos, Tensor sin, float eps) -> Tensor");
    m.def("geglu(Tensor gate, Tensor up) -> Tensor");
    m.def("decode_row(Tensor x, Tensor[] weights, Tensor(a!)[] caches, Tensor[] rope, int[] slots, int[] lengths, "
          "float[] scales, Tensor final_norm, Tensor head, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(gemma3_engine, CPU, m) {
    m.impl("matvec", &matvec);
    m.impl("rms_norm", &rms_norm);
    m.impl("norm_rope", &norm_rope);
    m.impl("geglu", &geglu);
    m.impl("decode_row", &decode_row);
}
