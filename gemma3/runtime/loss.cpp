/* The training loss's C pass (gemma3/loss.py), registered as the PyTorch operator
   gemma3_loss::softmax_xent_ and built by gemma3/runtime/native.py. */
#include <torch/library.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include "simd.h"

/* The training loss's rows (gemma3/loss.py, through gemma3/runtime/fused_loss.py), in place: fp32 logits x [rows, V] become
   softmax(x) - one_hot(t), and loss[r] = logsumexp(x_r) - x_r[t_r]. Three passes over a row, which
   stays in L2 after the first: its max, the sum of exp(x - max) (lanes summed in double), the
   gradient. A row with a NaN or an infinity gets a NaN loss and gradient (the trainer then skips the
   step, as it does for the NaN or infinite loss of the PyTorch code). Targets must be in [0, V) (softmax_xent_ checks). */
static void softmax_xent_f32(float *x, const int64_t *t, float *loss, int64_t rows, int64_t V) {
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

/* Per-row loss of fp32 logits [rows, V] against targets [rows], turning the logits in place into
   softmax - one_hot(target). A target outside [0, V) is an IndexError, raised before anything is written. */
static at::Tensor softmax_xent_(at::Tensor logits, const at::Tensor &targets) {
    TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat && logits.is_contiguous(), "logits: contiguous fp32 [rows, V]");
    TORCH_CHECK(targets.dim() == 1 && targets.scalar_type() == at::kLong && targets.is_contiguous()
                && targets.size(0) == logits.size(0), "targets: contiguous int64 [rows]");
    const int64_t *t = targets.data_ptr<int64_t>();
    const int64_t V = logits.size(1);
    for (int64_t r = 0; r < targets.size(0); r++)
        TORCH_CHECK_INDEX(0 <= t[r] && t[r] < V, "target ", t[r], " (row ", r, ") is outside the vocabulary [0, ", V, ")");
    at::Tensor loss = at::empty({logits.size(0)}, logits.options());
    softmax_xent_f32(logits.data_ptr<float>(), t, loss.data_ptr<float>(), logits.size(0), V);
    return loss;
}

TORCH_LIBRARY(gemma3_loss, m) { m.def("softmax_xent_(Tensor(a!) logits, Tensor targets) -> Tensor"); }
TORCH_LIBRARY_IMPL(gemma3_loss, CPU, m) { m.impl("softmax_xent_", &softmax_xent_); }
