/* The engine's C++ kernels: Gemma 3's inference on a CPU in fewer, vectorized passes. Each is a PyTorch
   operator gemma3_engine::NAME (registered at the end of this file, with its shapes for torch.compile
   in ops.py), built by gemma3/runtime/native.py with AVX512F/BW/BF16, OpenMP and -ffp-contract=off: no fused
   multiply-adds, so every product and sum rounds where the PyTorch code of gemma3/model.py rounds it.
   Each piece of a row's math is one function below, called both by the per-stage operators (matvec,
   rms_norm, norm_rope, geglu: forward.py's step path, on PyTorch's OpenMP threads, so torch.set_num_threads
   governs them) and by decode_row's steps (a whole decoded token in one call, on threads of this file's
   own, as many as its caller asks for); only decode_row's attention is its own (the step path runs the
   model's). tests/test_engine.py::test_the_engine_walks_every_stage_of_the_reference holds both forms to
   gemma3/model.py stage by stage, decode_row through its trace. */
#include <torch/library.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <omp.h>
#include <sched.h>

#include <linux/futex.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "simd.h"

/* ---- A row's math, once: what both the operators and decode_row compute ---- */

/* A storage type's arithmetic: one value, 16 lanes (bf16 rounded to nearest even, as PyTorch rounds),
   and the dot product of a weight row with a vector, in fp32. The rows a thread reads are one linear
   stream: prefetching 2 KiB ahead of it reads memory about 1.4x faster than PyTorch's bf16 mv here. */
template <typename T> struct Num;
template <> struct Num<f32> {
    static float load(f32 v) { return v; }
    static f32 store(float v) { return v; }
    static __m512 load16(const f32 *p) { return load16_f32(p); }
    static __m512 round16(__m512 v) { return v; }
    static void store16(f32 *p, __m512 v) { store16_f32(p, v); }
    static float dot(const f32 *w, const f32 *x, int64_t cols) {
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
};
template <> struct Num<bf16> {
    static float load(bf16 v) { return from_bf16(v); }
    static bf16 store(float v) { return to_bf16(v); }
    static __m512 load16(const bf16 *p) { return load16_bf16(p); }
    static __m512 round16(__m512 v) { return round16_bf16(v); }
    static void store16(bf16 *p, __m512 v) { store16_bf16(p, v); }
    static float dot(const bf16 *w, const bf16 *x, int64_t cols) {
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
};

/* y = W x for `rows` rows of W [rows, cols] (row-major) and x [cols]: fp32 sums, one rounding */
template <typename T> static inline void matvec_rows(const T *W, const T *x, T *y, int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; r++) y[r] = Num<T>::store(Num<T>::dot(W + r * cols, x, cols));
}

/* One row of Gemma's RMSNorm, as gemma3/model.py computes it: in fp32, x * (1 / sqrt(mean(x^2) + eps))
   then * (1 + w), rounded once to the storage type. The squares are summed in double: PyTorch's fp32
   sum is within an ulp or two of that. */
template <typename T> static inline void norm_row(const T *x, const T *w, T *y, int64_t d, float eps) {
    using N = Num<T>;
    int64_t full = d / 16 * 16;
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (int64_t i = 0; i < full; i += 16) {
        __m512 v = N::load16(x + i), sq = _mm512_mul_ps(v, v);
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(sq)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(sq), 1))));
    }
    double ss = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
    for (int64_t i = full; i < d; i++) { float v = N::load(x[i]); ss += (double)(v * v); }
    float inv = 1.0f / sqrtf((float)ss / (float)d + eps);
    __m512 vinv = _mm512_set1_ps(inv), one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < full; i += 16)
        N::store16(y + i, _mm512_mul_ps(_mm512_mul_ps(N::load16(x + i), vinv), _mm512_add_ps(one, N::load16(w + i))));
    for (int64_t i = full; i < d; i++) y[i] = N::store(N::load(x[i]) * inv * (1.0f + N::load(w[i])));
}

/* y = res + norm(x): the residual added after the norm's rounding, as `residual + norm(x)` rounds it */
template <typename T> static inline void add_norm_row(const T *x, const T *w, const T *res, T *y, int64_t d, float eps) {
    using N = Num<T>;
    norm_row(x, w, y, d, eps);
    int64_t i = 0;
    for (; i + 16 <= d; i += 16) N::store16(y + i, _mm512_add_ps(N::load16(res + i), N::load16(y + i)));
    for (; i < d; i++) y[i] = N::store(N::load(res[i]) + N::load(y[i]));
}

/* One head's row of q or k normed, then rotated on half-split pairs with the cos/sin row of its
   position, each step rounded to the storage type as PyTorch rounds it: y = (n * cos) + (rotate_half(n)
   * sin), rotate_half(n) = [-n2, n1]. Needs d <= 1024. */
template <typename T> static inline void norm_rope_row(const T *x, const T *w, const T *c, const T *s, T *y, int64_t d,
                                                       float eps) {
    using N = Num<T>;
    int64_t h = d / 2, i = 0;
    T n[1024];
    norm_row(x, w, n, d, eps);
    if (h % 16 == 0)
        for (; i < d; i += 16) {
            __m512 rot = i < h ? neg16(N::load16(n + i + h)) : N::load16(n + i - h);
            __m512 a = N::round16(_mm512_mul_ps(N::load16(n + i), N::load16(c + i)));
            __m512 b = N::round16(_mm512_mul_ps(rot, N::load16(s + i)));
            N::store16(y + i, _mm512_add_ps(a, b));
        }
    for (; i < d; i++) {
        float rot = i < h ? -N::load(n[i + h]) : N::load(n[i - h]);
        float a = N::load(N::store(N::load(n[i]) * N::load(c[i])));
        float b = N::load(N::store(rot * N::load(s[i])));
        y[i] = N::store(a + b);
    }
}

/* GeGLU: p = gelu_tanh(g) * u, the gelu rounded to the storage type first, as PyTorch does; p may be g.
   16 lanes at a time (a ragged end padded to 16), tanh(v) = 1 - 2 / (e^2v + 1) with an exp accurate to
   about an ulp (Cephes' polynomial): within 1e-6 of PyTorch's vectorized tanh. */
static inline __m512 gelu512(__m512 x) {
    const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
    __m512 cube = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
    __m512 inner = _mm512_mul_ps(_mm512_set1_ps((float)(M_SQRT2 * M_2_SQRTPI * 0.5)),
                                 _mm512_add_ps(x, _mm512_mul_ps(_mm512_set1_ps(0.044715f), cube)));
    __m512 t = _mm512_sub_ps(one, _mm512_div_ps(two, _mm512_add_ps(exp512(_mm512_mul_ps(two, inner)), one)));
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), _mm512_add_ps(one, t));
}
template <typename T> static inline void geglu_row(const T *g, const T *u, T *p, int64_t n) {
    using N = Num<T>;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) N::store16(p + i, _mm512_mul_ps(N::round16(gelu512(N::load16(g + i))), N::load16(u + i)));
    if (i < n) {
        T g16[16] = {}, u16[16] = {}, p16[16];
        std::copy(g + i, g + n, g16);
        std::copy(u + i, u + n, u16);
        N::store16(p16, _mm512_mul_ps(N::round16(gelu512(N::load16(g16))), N::load16(u16)));
        std::copy(p16, p16 + (n - i), p + i);
    }
}

/* ---- The per-stage operators' loops over those functions (a prompt's rows; a decoded row on the step path) ---- */

template <typename T> static void matvec_op(const T *W, const T *x, T *y, int64_t rows, int64_t cols) {
    _Pragma("omp parallel for schedule(static)")
    for (int64_t r = 0; r < rows; r++) matvec_rows(W + r * cols, x, y + r, 1, cols);
}

template <typename T> static void geglu_op(const T *g, const T *u, T *p, int64_t n) {
    _Pragma("omp parallel for schedule(static) if (n > 4096)")
    for (int64_t i = 0; i < n; i += 16) geglu_row(g + i, u + i, p + i, std::min<int64_t>(16, n - i));
}

/* rows of RMSNorm (x, y [rows, d]; w [d]), plus res [rows, d] when given */
template <typename T> static void rms_norm_op(const T *x, const T *w, const T *res, T *y, int64_t rows, int64_t d, float eps) {
    _Pragma("omp parallel for if (rows > 8)")
    for (int64_t r = 0; r < rows; r++) {
        if (res) add_norm_row(x + r * d, w, res + r * d, y + r * d, d, eps);
        else norm_row(x + r * d, w, y + r * d, d, eps);
    }
}

/* q or k rows [B, T, heads, d] normed and rotated with the cos/sin row [T, d] of their position. A
   token's heads lie together in x, tokens `step` elements apart (a slice of a fused q/k/v product); y is dense. */
template <typename T> static void norm_rope_op(const T *x, const T *w, const T *cs, const T *sn, T *y, int64_t rows,
                                               int64_t heads, int64_t npos, int64_t d, int64_t step, float eps) {
    _Pragma("omp parallel for if (rows > 64)")
    for (int64_t r = 0; r < rows; r++) {
        int64_t p = (r / heads) % npos;
        norm_rope_row(x + r / heads * step + r % heads * d, w, cs + p * d, sn + p * d, y + r * d, d, eps);
    }
}

/* ---- One decoded token (batch 1), on threads the OS may stop at any moment ----

   A decoded token is a chain of small steps: a norm, a matrix-vector product, attention per head, ...
   Splitting each step between threads that then meet at a barrier makes every step wait for the
   slowest thread, and on a busy machine (a Space's shared 2 vCPUs, a laptop compiling) a thread that
   is not scheduled stops the others for the rest of its time slice: two threads decoded up to 30x
   slower than one. Here no thread waits for another to be scheduled. Each step is cut into chunks; a
   thread takes a free chunk, computes it into its own memory, then publishes it: the first to publish
   a chunk writes it out, a later copy is dropped. A thread that finds no free chunk while another has
   held one for longer than a chunk takes (that one is probably not running) computes it too. So the
   token advances whenever any of its threads runs, and every value is the one a single thread would
   compute. The threads besides the caller are this file's own (a pool that sleeps when idle), not
   OpenMP's: an OpenMP region ends by waiting for all its threads, the very wait this avoids. A job
   keeps alive all the memory it reads (its buffers, and the weights' and caches' storage) until its
   last thread leaves it, so a thread that wakes up late on a finished token reads valid memory and
   publishes nothing. */
enum : uint8_t { FREE, TAKEN, WRITING, DONE };   /* a chunk's life */
enum Kind { NORM, MATVEC, ROPE, ATTN, RESNORM, GATEUP };
constexpr int64_t CHUNK_BYTES = 64 << 10;          /* the weights a matrix-vector chunk reads */
constexpr double GRACE = 20e-6;                    /* how long past its own longest chunk a thread waits for another's */
constexpr double IDLE = 20e-6;                     /* how long a helper spins for the next token before it sleeps */
static std::atomic<int64_t> covered{0};            /* chunks a thread computed for another that held it */

template <typename T> struct Step {
    Kind kind;
    int64_t chunks = 1, per = 1, rows = 0, cols = 0; /* per: rows (or heads) a chunk */
    const T *W[3] = {}; int64_t end[3] = {};       /* MATVEC: stacked matrices, W[i] up to row end[i] */
    const T *src = nullptr, *res = nullptr, *w1 = nullptr, *w2 = nullptr; /* res: RESNORM's residual */
    T *dst = nullptr, *dst2 = nullptr;             /* dst2: RESNORM's next norm */
    int64_t layer = 0, first = 0;                  /* first: its first chunk's index in Job::state */
};

struct Layer { void *K, *V; const void *cos, *sin, *qn, *kn; int64_t slots, slot, len; float scale; };

struct JobBase {
    int threads = 1;
    virtual ~JobBase() = default;
    virtual void work(int me) = 0;
};

using Clock = std::chrono::steady_clock;
static inline double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

template <typename T> struct Job : JobBase {
    using N = Num<T>;
    std::vector<c10::Storage> keep;                /* the weights, caches and rope tables read */
    std::vector<Step<T>> steps;
    std::vector<Layer> layers;
    std::unique_ptr<std::atomic<uint8_t>[]> state; /* every step's chunks */
    std::unique_ptr<std::atomic<int64_t>[]> done;  /* chunks published, per step */
    std::unique_ptr<std::atomic<int64_t>[]> took;  /* the longest a published chunk took, ns, per step */
    std::atomic<int64_t> cur{0};                   /* the step running */
    std::vector<T> buf;                            /* the token's vectors (x, h, q, ...) */
    int64_t d = 0, nh = 0, nkv = 0, hd = 0, most_out = 0, most_slots = 0;
    float eps = 0;

    void add(Step<T> s) {
        s.first = steps.empty() ? 0 : steps.back().first + steps.back().chunks;
        if (s.kind == MATVEC || s.kind == GATEUP) {
            s.per = std::max<int64_t>(1, CHUNK_BYTES / (s.cols * (int64_t)sizeof(T) * (s.kind == GATEUP ? 2 : 1)));
            s.chunks = (s.rows + s.per - 1) / s.per;
            most_out = std::max(most_out, s.per * (s.kind == GATEUP ? 2 : 1));
        } else if (s.kind == ATTN) {
            s.chunks = nh;
        }
        steps.push_back(s);
    }
    void ready() {                                 /* after the last add */
        int64_t total = steps.back().first + steps.back().chunks;
        state.reset(new std::atomic<uint8_t>[total]());
        done.reset(new std::atomic<int64_t>[steps.size()]());
        took.reset(new std::atomic<int64_t>[steps.size()]());
        most_out = std::max({most_out, 2 * d, (nh + 2 * nkv) * hd});
    }

    /* chunk c of step st, into out (and scores for attention): the values only, written nowhere shared */
    void compute(const Step<T> &st, int64_t c, T *out, float *scores) const {
        int64_t lo = c * st.per, hi = std::min(st.rows, lo + st.per);
        switch (st.kind) {
        case NORM: norm_row(st.src, st.w1, out, d, eps); break;
        case RESNORM:                              /* res + post_norm(src), then its next norm */
            add_norm_row(st.src, st.w1, st.res, out, d, eps);
            norm_row(out, st.w2, out + d, d, eps);
            break;
        case MATVEC:                               /* rows lo..hi of the stacked matrices */
            for (int64_t r = lo; r < hi;) {
                int i = r < st.end[0] ? 0 : r < st.end[1] ? 1 : 2;
                int64_t top = i ? st.end[i - 1] : 0, stop = std::min(hi, st.end[i]);
                matvec_rows(st.W[i] + (r - top) * st.cols, st.src, out + (r - lo), stop - r, st.cols);
                r = stop;
            }
            break;
        case GATEUP:       /* a gate row and an up row in turn (two streams read faster than one), then the GeGLU */
            for (int64_t r = lo; r < hi; r++) {
                matvec_rows(st.W[0] + r * st.cols, st.src, out + (r - lo), 1, st.cols);
                matvec_rows(st.W[1] + r * st.cols, st.src, out + (hi - lo) + (r - lo), 1, st.cols);
            }
            geglu_row(out, out + (hi - lo), out, hi - lo);
            break;
        case ROPE: {                               /* q and k normed and rotated, v as it is */
            const Layer &L = layers[st.layer];
            int64_t nq = nh * hd, nk = nkv * hd;
            auto cs = (const T *)L.cos, sn = (const T *)L.sin;
            for (int64_t i = 0; i < nh; i++) norm_rope_row(st.src + i * hd, (const T *)L.qn, cs, sn, out + i * hd, hd, eps);
            for (int64_t i = 0; i < nkv; i++)
                norm_rope_row(st.src + nq + i * hd, (const T *)L.kn, cs, sn, out + nq + i * hd, hd, eps);
            std::copy(st.src + nq + nk, st.src + nq + 2 * nk, out + nq + nk);
            break;
        }
        case ATTN: {                               /* softmax(q K^T * scale) V over the first len slots, fp32 */
            const Layer &L = layers[st.layer];
            int64_t head = c, g = head / (nh / nkv);
            const T *q = st.src + head * hd, *K = (const T *)L.K + g * L.slots * hd, *V = (const T *)L.V + g * L.slots * hd;
            float m = -INFINITY, sum = 0.0f, acc[1024];
            for (int64_t j = 0; j < L.len; j++) {
                scores[j] = N::dot(K + j * hd, q, hd) * L.scale;
                if (scores[j] > m) m = scores[j];
            }
            for (int64_t j = 0; j < L.len; j++) { scores[j] = expf(scores[j] - m); sum += scores[j]; }
            for (int64_t i = 0; i < hd; i++) acc[i] = 0.0f;
            for (int64_t j = 0; j < L.len; j++) {
                float pj = scores[j] / sum;
                for (int64_t i = 0; i < hd; i++) acc[i] += pj * N::load(V[j * hd + i]);
            }
            for (int64_t i = 0; i < hd; i++) out[i] = N::store(acc[i]);
            break;
        }
        }
    }

    /* write chunk c, computed in `secs`, out, unless another copy of it was */
    void publish(int64_t s, const Step<T> &st, int64_t c, const T *out, double secs) {
        uint8_t held = TAKEN;
        if (!state[st.first + c].compare_exchange_strong(held, WRITING, std::memory_order_acq_rel)) return;
        for (int64_t ns = (int64_t)(secs * 1e9), was = took[s].load(); ns > was && !took[s].compare_exchange_weak(was, ns);) {}
        int64_t lo = c * st.per, hi = std::min(st.rows, lo + st.per);
        switch (st.kind) {
        case NORM: std::copy(out, out + d, st.dst); break;
        case RESNORM: std::copy(out, out + d, st.dst); std::copy(out + d, out + 2 * d, st.dst2); break;
        case MATVEC: case GATEUP: std::copy(out, out + (hi - lo), st.dst + lo); break;
        case ATTN: std::copy(out, out + hd, st.dst + c * hd); break;
        case ROPE: {
            const Layer &L = layers[st.layer];
            int64_t nq = nh * hd, nk = nkv * hd;
            std::copy(out, out + nq, st.dst);
            for (int64_t g = 0; g < nkv; g++) {
                std::copy(out + nq + g * hd, out + nq + (g + 1) * hd, (T *)L.K + (g * L.slots + L.slot) * hd);
                std::copy(out + nq + nk + g * hd, out + nq + nk + (g + 1) * hd, (T *)L.V + (g * L.slots + L.slot) * hd);
            }
            break;
        }
        }
        state[st.first + c].store(DONE, std::memory_order_release);
        if (done[s].fetch_add(1, std::memory_order_acq_rel) + 1 == st.chunks) cur.store(s + 1, std::memory_order_release);
    }

    void work(int me) override {
        thread_local std::vector<T> out;
        thread_local std::vector<float> scores;
        if ((int64_t)out.size() < most_out) out.resize(most_out);
        if ((int64_t)scores.size() < most_slots) scores.resize(most_slots);
        const int64_t n = steps.size();
        for (int64_t s; (s = cur.load(std::memory_order_acquire)) < n;) {
            const Step<T> &st = steps[s];
            double longest = 0;                    /* this thread's longest chunk of the step */
            for (int64_t i = 0, start = st.chunks * me / threads; i < st.chunks; i++) {
                int64_t c = (start + i) % st.chunks;
                uint8_t expect = FREE;
                if (state[st.first + c].load(std::memory_order_relaxed) != FREE
                    || !state[st.first + c].compare_exchange_strong(expect, TAKEN, std::memory_order_acq_rel))
                    continue;
                auto t0 = Clock::now();
                compute(st, c, out.data(), scores.data());
                double secs = since(t0);
                longest = std::max(longest, secs);
                publish(s, st, c, out.data(), secs);
            }
            /* No chunk left to take: wait for the others to publish theirs. A chunk held four times
               longer than chunks of this step take (this one's, or the previous layer's) most likely
               belongs to a thread the OS stopped: compute it too. After that, what is left is being
               written out by a stopped thread: give it the CPU. */
            int64_t prev = s >= 8 && steps[s - 8].kind == st.kind ? s - 8 : s;
            double grace = GRACE + 4 * std::max({longest, took[s].load() * 1e-9, took[prev].load() * 1e-9});
            auto t0 = Clock::now();
            bool swept = false;
            for (int spins = 0; cur.load(std::memory_order_acquire) == s; spins++) {
                if ((spins & 63) != 63 || since(t0) < grace) { _mm_pause(); continue; }
                if (swept) { sched_yield(); continue; }
                for (int64_t c = 0; c < st.chunks && cur.load(std::memory_order_acquire) == s; c++)
                    if (state[st.first + c].load(std::memory_order_acquire) == TAKEN) {
                        covered.fetch_add(1, std::memory_order_relaxed);
                        auto t1 = Clock::now();
                        compute(st, c, out.data(), scores.data());
                        publish(s, st, c, out.data(), since(t1));
                    }
                swept = true;
            }
        }
    }
};

/* The pool: helper threads 1, 2, ... (the caller is 0), started on demand, spinning briefly for the
   next token, then sleeping on a futex. A fork's child starts a pool of its own. */
struct Pool {
    std::mutex m;                                  /* guards job and started */
    std::shared_ptr<JobBase> job;
    int started = 0;
    alignas(64) std::atomic<uint32_t> seq{0};      /* bumped for every job */
    alignas(64) std::atomic<int> sleeping{0};
};
static Pool *pool = new Pool;                      /* never destroyed: its threads outlive exit's destructors */
[[maybe_unused]] static const int forks = pthread_atfork(nullptr, nullptr, [] { pool = new Pool; });

static void futex(std::atomic<uint32_t> *word, int op, uint32_t value) {
    syscall(SYS_futex, reinterpret_cast<uint32_t *>(word), op, value, nullptr, nullptr, 0);
}

static void helper(Pool *p, int me, uint32_t seen) {
    for (;;) {
        auto t0 = Clock::now();
        uint32_t now;
        for (int spins = 0; (now = p->seq.load()) == seen; spins++) {
            if ((spins & 255) != 255 || since(t0) < IDLE) { _mm_pause(); continue; }
            p->sleeping.fetch_add(1);
            if (p->seq.load() == seen) futex(&p->seq, FUTEX_WAIT_PRIVATE, seen);
            p->sleeping.fetch_sub(1);
            t0 = Clock::now();
        }
        seen = now;
        std::shared_ptr<JobBase> job;
        {
            std::lock_guard<std::mutex> g(p->m);
            job = p->job;
        }
        if (job && me < job->threads) job->work(me);
    }
}

/* Run a job on the calling thread and, while they help, on threads - 1 of the pool's */
static void run(const std::shared_ptr<JobBase> &job) {
    Pool *p = pool;
    if (job->threads > 1) {
        {
            std::lock_guard<std::mutex> g(p->m);
            try {
                for (; p->started < job->threads - 1; p->started++)
                    std::thread(helper, p, p->started + 1, p->seq.load()).detach();
            } catch (const std::system_error &) {
                /* no more threads to be had: the job needs none (the caller can do all of it) */
            }
            p->job = job;
        }
        p->seq.fetch_add(1);
        if (p->sleeping.load() > 0) futex(&p->seq, FUTEX_WAKE_PRIVATE, INT32_MAX);
    }
    job->work(0);
    if (job->threads > 1) {
        std::lock_guard<std::mutex> g(p->m);
        if (p->job == job) p->job.reset();
    }
}

#define PTR(t, T) reinterpret_cast<T *>((t).data_ptr())
#define CPTR(t, T) reinterpret_cast<const T *>((t).data_ptr())

/* The token's steps, per layer (w: 13 weights a layer, see decode_row below):
   h = attn_norm(x); raw = [Wq; Wk; Wv] h; q, k, v = rope(q_norm(.)), rope(k_norm(.)), v -> cache;
   a = attention per head; o = Wo a; x += post_attn_norm(o), h = ffn_norm(x);
   p = gelu_tanh(Wg h) * (Wu h); dn = Wd p; x += post_ffn_norm(dn), h = the next layer's attn_norm(x)
   (after the last layer: final_norm(x)); then logits = head h.
   Each step writes its vector to the token's scratch buffer, reused layer after layer, or, with a trace,
   to the trace's own place for it (the next steps read it there), so a trace costs no step and no copy:
   per layer, ROW_STAGES of ops.py in this order, attn_norm [d], q [nh hd], k, v [nkv hd], q_rope [nh hd],
   attn_out [nh hd], o, mid, ffn_norm [d], act [f], down, output [d]; then final_norm [d]. */
template <typename T>
static std::shared_ptr<Job<T>> plan(const at::Tensor &x, const at::Tensor *w, const at::Tensor *kv, const at::Tensor *rope,
                                    const int64_t *slot, const int64_t *len, const double *scale, int64_t layers,
                                    const at::Tensor &fnw, const at::Tensor &head, at::Tensor &logits,
                                    int64_t nh, int64_t nkv, int64_t hd, int64_t f, float eps,
                                    const c10::optional<at::Tensor> &traced) {
    auto job = std::make_shared<Job<T>>();
    int64_t d = x.numel(), nq = nh * hd, nk = nkv * hd;
    job->d = d; job->nh = nh; job->nkv = nkv; job->hd = hd; job->eps = eps;
    job->buf.resize(2 * d + (nq + 2 * nk) + 2 * nq + 2 * d + f);
    T *X = job->buf.data(), *h = X + d, *raw = h + d, *q = raw + nq + 2 * nk, *a = q + nq, *o = a + nq, *dn = o + d, *p = dn + d;
    /* where layer l's stage (its offset in a layer's trace) is written: the trace, or the scratch vector */
    const int64_t QKV = d, QROPE = QKV + nq + 2 * nk, AOUT = QROPE + nq, O = AOUT + nq, MID = O + d, FFN = MID + d,
                  ACT = FFN + d, DOWN = ACT + f, OUT = DOWN + d, WIDTH = OUT + d;
    T *trace = traced ? PTR(*traced, T) : nullptr;
    auto at = [&](int64_t l, int64_t offset, T *scratch) { return trace ? trace + l * WIDTH + offset : scratch; };
    std::copy(CPTR(x, T), CPTR(x, T) + d, X);
    for (int64_t i = 0; i < 13 * layers; i++) job->keep.push_back(w[i].storage());
    for (int64_t i = 0; i < 2 * layers; i++) { job->keep.push_back(kv[i].storage()); job->keep.push_back(rope[i].storage()); }
    job->keep.push_back(fnw.storage());
    job->keep.push_back(head.storage());
    if (trace) job->keep.push_back(traced->storage());
    auto add = [&](Kind kind, auto... fields) { Step<T> s; s.kind = kind; (fields(s), ...); job->add(s); };
    add(NORM, [&](Step<T> &s) { s.src = X; s.w1 = CPTR(w[0], T); s.dst = at(0, 0, h); });
    for (int64_t l = 0; l < layers; l++) {
        const at::Tensor *lw = w + 13 * l;
        job->layers.push_back({kv[2 * l].data_ptr(), kv[2 * l + 1].data_ptr(), rope[2 * l].data_ptr(), rope[2 * l + 1].data_ptr(),
                               lw[4].data_ptr(), lw[5].data_ptr(), kv[2 * l].size(2), slot[l], len[l], (float)scale[l]});
        job->most_slots = std::max(job->most_slots, len[l]);
        add(MATVEC, [&](Step<T> &s) {
            s.rows = nq + 2 * nk; s.cols = d; s.src = at(l, 0, h); s.dst = at(l, QKV, raw);
            s.W[0] = CPTR(lw[1], T); s.W[1] = CPTR(lw[2], T); s.W[2] = CPTR(lw[3], T);
            s.end[0] = nq; s.end[1] = nq + nk; s.end[2] = nq + 2 * nk;
        });
        add(ROPE, [&](Step<T> &s) { s.src = at(l, QKV, raw); s.dst = at(l, QROPE, q); s.layer = l; });
        add(ATTN, [&](Step<T> &s) { s.src = at(l, QROPE, q); s.dst = at(l, AOUT, a); s.layer = l; });
        add(MATVEC, [&](Step<T> &s) { s.rows = d; s.cols = nq; s.src = at(l, AOUT, a); s.dst = at(l, O, o); s.W[0] = CPTR(lw[6], T); s.end[0] = d; });
        add(RESNORM, [&](Step<T> &s) {
            s.src = at(l, O, o); s.res = l ? at(l - 1, OUT, X) : X; s.w1 = CPTR(lw[7], T); s.w2 = CPTR(lw[8], T);
            s.dst = at(l, MID, X); s.dst2 = at(l, FFN, h);
        });
        add(GATEUP, [&](Step<T> &s) { s.rows = f; s.cols = d; s.src = at(l, FFN, h); s.dst = at(l, ACT, p); s.W[0] = CPTR(lw[9], T); s.W[1] = CPTR(lw[10], T); });
        add(MATVEC, [&](Step<T> &s) { s.rows = d; s.cols = f; s.src = at(l, ACT, p); s.dst = at(l, DOWN, dn); s.W[0] = CPTR(lw[11], T); s.end[0] = d; });
        const T *next = l + 1 < layers ? CPTR(w[13 * (l + 1)], T) : CPTR(fnw, T);
        add(RESNORM, [&](Step<T> &s) {
            s.src = at(l, DOWN, dn); s.res = at(l, MID, X); s.w1 = CPTR(lw[12], T); s.w2 = next;
            s.dst = at(l, OUT, X); s.dst2 = at(l + 1, 0, h);
        });
    }
    add(MATVEC, [&](Step<T> &s) {
        s.rows = head.size(0); s.cols = d; s.src = at(layers, 0, h); s.dst = PTR(logits, T); s.W[0] = CPTR(head, T); s.end[0] = s.rows;
    });
    job->ready();
    return job;
}


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
#define CALL(S) matvec_op(CPTR(W, T), CPTR(x, T), PTR(y, T), W.size(0), W.size(1))
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
#define CALL(S) rms_norm_op(CPTR(x, T), CPTR(w, T), res ? CPTR(*residual, T) : nullptr, PTR(y, T), x.numel() / d, d, (float)eps)
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
#define CALL(S) norm_rope_op(CPTR(x, T), CPTR(w, T), CPTR(cos, T), CPTR(sin, T), PTR(y, T), B * len * heads, heads, len, d, x.stride(1), (float)eps)
    BY_DTYPE(x, CALL);
#undef CALL
    return y;
}

/* gelu_tanh(gate) * up */
static at::Tensor geglu(const at::Tensor &g, const at::Tensor &u) {
    check(g, g, "gate"); check(u, g, "up");
    TORCH_CHECK(g.sizes() == u.sizes(), "geglu: gate and up of one shape");
    at::Tensor p = at::empty_like(g);
#define CALL(S) geglu_op(CPTR(g, T), CPTR(u, T), PTR(p, T), g.numel())
    BY_DTYPE(g, CALL);
#undef CALL
    return p;
}

/* The logits of one decoded row (batch 1): every block, each writing its key and value at its cache
   slot and attending to the first `lengths` slots, then the final norm and the head. Per layer:
   weights, 13: attn_norm, wq, wk, wv, q_norm, k_norm, wo, post_attn_norm, ffn_norm, gate, up, down,
   post_ffn_norm; caches, 2: k, v [1, kv_heads, slots, head_dim]; rope, 2: cos, sin [head_dim].
   trace, when given: where the token's stages are written (see plan); without one they are not kept. */
static at::Tensor decode_row(const at::Tensor &x, at::TensorList weights, at::TensorList caches, at::TensorList rope,
                             at::IntArrayRef slots, at::IntArrayRef lengths, at::ArrayRef<double> scales,
                             const at::Tensor &final_norm, const at::Tensor &head, double eps, int64_t threads,
                             const c10::optional<at::Tensor> &trace) {
    int64_t layers = slots.size(), d = x.numel();
    TORCH_CHECK(layers > 0 && (int64_t)weights.size() == 13 * layers && (int64_t)caches.size() == 2 * layers
                && (int64_t)rope.size() == 2 * layers && (int64_t)lengths.size() == layers && (int64_t)scales.size() == layers,
                "decode_row: 13 weights, 2 caches, 2 rope tables, a slot, a length and a scale per layer");
    int64_t hd = weights[4].numel(), nh = weights[1].size(0) / hd, nkv = weights[2].size(0) / hd, f = weights[9].size(0);
    int64_t nq = nh * hd;
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
    }
    check(x, x, "x"); check(final_norm, x, "final_norm"); check(head, x, "head");
    TORCH_CHECK(final_norm.numel() == d && head.dim() == 2 && head.size(1) == d, "decode_row: final_norm [d], head [vocab, d]");
    if (trace) {
        check(*trace, x, "decode_row trace");
        TORCH_CHECK(trace->numel() == layers * (6 * d + 3 * nq + 2 * nkv * hd + f) + d,
                    "decode_row: a trace of 6 hidden + 3 q + 2 k + ffn numbers a layer, and hidden more");
    }
    at::Tensor logits = at::empty({head.size(0)}, x.options());
    std::shared_ptr<JobBase> job;
#define CALL(S) job = plan<S>(x, weights.data(), caches.data(), rope.data(), slots.data(), lengths.data(), scales.data(), \
                              layers, final_norm, head, logits, nh, nkv, hd, f, (float)eps, trace)
    BY_DTYPE(x, CALL);
#undef CALL
    job->threads = (int)std::max<int64_t>(1, threads);
    run(job);
    return logits;
}

/* how many chunks, since the library loaded, a thread computed for another that held it too long */
static int64_t covered_chunks() { return covered.load(); }

TORCH_LIBRARY(gemma3_engine, m) {
    m.def("matvec(Tensor W, Tensor x) -> Tensor");
    m.def("rms_norm(Tensor x, Tensor weight, Tensor? residual, float eps) -> Tensor");
    m.def("norm_rope(Tensor x, Tensor weight, Tensor cos, Tensor sin, float eps) -> Tensor");
    m.def("geglu(Tensor gate, Tensor up) -> Tensor");
    m.def("decode_row(Tensor x, Tensor[] weights, Tensor(a!)[] caches, Tensor[] rope, int[] slots, int[] lengths, "
          "float[] scales, Tensor final_norm, Tensor head, float eps, int threads, Tensor(b!)? trace=None) -> Tensor");
    m.def("covered_chunks() -> int");
}

TORCH_LIBRARY_IMPL(gemma3_engine, CPU, m) {
    m.impl("matvec", &matvec);
    m.impl("rms_norm", &rms_norm);
    m.impl("norm_rope", &norm_rope);
    m.impl("geglu", &geglu);
    m.impl("decode_row", &decode_row);
}

TORCH_LIBRARY_IMPL(gemma3_engine, CompositeExplicitAutograd, m) {
    m.impl("covered_chunks", &covered_chunks);
}
