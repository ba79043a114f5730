/* Causal softmax attention for small heads, forward and backward, on one core.

   Layout: q, k, v, o and their gradients are [B, T, H, D] float32 (the model's [batch, position,
   head, d_head], contiguous); lse is [B, H, T], the log-sum-exp of each query's scaled scores,
   saved by the forward for the backward (as flash attention does). D must be 16, 32, 64 or 128.

   Per (batch, head) the inputs are copied into small buffers (K scaled by 1/sqrt(D) and
   transposed), and every product is a register-tiled loop over blocks of 4 rows: scores against
   16 keys at a time, or 4 output rows of D floats at a time. The backward recomputes the
   probabilities from lse instead of storing them between the passes (it holds one head's [T, T]
   probabilities and their gradient at a time). Each (batch, head) is independent and summed in a
   fixed order, so for one build on one machine the result depends on the inputs alone (the
   build's vector width and fused multiply-adds can change the rounding between CPUs).
   Built with -ffast-math: finite inputs assumed (NaN still spreads as in torch's kernel). */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float vec16 __attribute__((vector_size(64)));
typedef float vec16u __attribute__((vector_size(64), aligned(4)));  /* unaligned loads/stores */

#define ROWS 4
#define INLINE static inline __attribute__((always_inline))

static int64_t round_up16(int64_t n) { return (n + 15) & ~(int64_t)15; }

static float *scratch(int64_t n_floats) {
    size_t bytes = (size_t)round_up16(n_floats > 0 ? n_floats : 1) * sizeof(float);
    float *p = aligned_alloc(64, bytes);
    if (p) memset(p, 0, bytes);
    return p;
}

/* s[r, j] = sum_d x[r, d] * kt[d, j] for r < n_rows (<= ROWS), j < nv (a multiple of 16).
   x rows are x_stride apart; kt is [D, tp]; s rows are tp apart. */
INLINE void scores_block(const float *x, int64_t x_stride, int n_rows, const float *kt,
                         float *s, int64_t nv, int64_t tp, int d_head) {
    for (int64_t j = 0; j < nv; j += 16) {
        vec16 acc[ROWS] = {0};
        for (int d = 0; d < d_head; d++) {
            const vec16 kv = *(const vec16 *)(kt + d * tp + j);
            for (int r = 0; r < ROWS; r++) acc[r] += x[(r < n_rows ? r : 0) * x_stride + d] * kv;
        }
        for (int r = 0; r < n_rows; r++) *(vec16 *)(s + r * tp + j) = acc[r];
    }
}

/* out[r, :] = sum_{t in [t0, t1)} coef[r * c_row + t * c_t] * x[t, :] for r < n_rows, over
   NC chunks of 16 floats (D = 16 NC); x rows are D floats apart; out rows out_stride apart,
   scaled by out_scale. */
INLINE void combine_block(const float *coef, int64_t c_row, int64_t c_t, int n_rows, int64_t t0,
                          int64_t t1, const float *x, float *out, int64_t out_stride,
                          float out_scale, const int nc) {
    vec16 acc[ROWS][8];
    for (int r = 0; r < ROWS; r++)
        for (int c = 0; c < nc; c++) acc[r][c] = (vec16){0};
    for (int64_t t = t0; t < t1; t++) {
        const float *xt = x + t * 16 * nc;
        for (int r = 0; r < ROWS; r++) {
            const float w = coef[(r < n_rows ? r : 0) * c_row + t * c_t];
            for (int c = 0; c < nc; c++) acc[r][c] += w * *(const vec16 *)(xt + 16 * c);
        }
    }
    for (int r = 0; r < n_rows; r++)
        for (int c = 0; c < nc; c++) *(vec16u *)(out + r * out_stride + 16 * c) = acc[r][c] * out_scale;
}

/* Copy one head: rows[t, :] = src[t, :] * scale ([T, D], aligned) if rows, and cols[d, t] = the
   same ([D, tp]) if cols. */
static void gather(const float *src, int64_t row, int64_t n_pos, int d_head, float scale,
                   float *rows, float *cols, int64_t tp) {
    for (int64_t t = 0; t < n_pos; t++)
        for (int d = 0; d < d_head; d++) {
            const float x = src[t * row + d] * scale;
            if (rows) rows[t * d_head + d] = x;
            if (cols) cols[d * tp + t] = x;
        }
}

/* Softmax of the first n entries of s (in place), zeros after them up to nv; returns log-sum-exp. */
INLINE float softmax_row(float *s, int64_t n, int64_t nv) {
    float m = s[0];
    for (int64_t j = 1; j < n; j++) m = s[j] > m ? s[j] : m;
    float l = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        s[j] = expf(s[j] - m);
        l += s[j];
    }
    const float inv = 1.0f / l;
    for (int64_t j = 0; j < n; j++) s[j] *= inv;
    for (int64_t j = n; j < nv; j++) s[j] = 0.0f;
    return m + logf(l);
}

INLINE int forward_head(const float *q, const float *k, const float *v, float *o, float *lse,
                        int64_t n_pos, int64_t row, int d_head, int64_t tp, float *kt, float *vb,
                        float *p, const int nc) {
    const float scale = 1.0f / sqrtf((float)d_head);
    gather(k, row, n_pos, d_head, scale, NULL, kt, tp);
    gather(v, row, n_pos, d_head, 1.0f, vb, NULL, tp);
    for (int64_t i0 = 0; i0 < n_pos; i0 += ROWS) {
        const int n_rows = n_pos - i0 < ROWS ? (int)(n_pos - i0) : ROWS;
        const int64_t n_keys = i0 + n_rows, nv = round_up16(n_keys);
        scores_block(q + i0 * row, row, n_rows, kt, p, nv, tp, d_head);
        for (int r = 0; r < n_rows; r++) lse[i0 + r] = softmax_row(p + r * tp, i0 + r + 1, nv);
        combine_block(p, tp, 1, n_rows, 0, n_keys, vb, o + i0 * row, row, 1.0f, nc);
    }
    return 0;
}

INLINE void backward_head(const float *q, const float *k, const float *v, const float *o,
                          const float *lse, const float *grad_o, float *grad_q, float *grad_k,
                          float *grad_v, int64_t n_pos, int64_t row, int d_head, int64_t tp,
                          float *kt, float *kb, float *vt, float *qb, float *gob, float *p,
                          float *ds, const int nc) {
    const float scale = 1.0f / sqrtf((float)d_head);
    gather(k, row, n_pos, d_head, scale, kb, kt, tp);
    gather(v, row, n_pos, d_head, 1.0f, NULL, vt, tp);
    gather(q, row, n_pos, d_head, 1.0f, qb, NULL, tp);
    gather(grad_o, row, n_pos, d_head, 1.0f, gob, NULL, tp);
    /* P and dS = P * (dP - delta) for every query, [T, tp] each, zero above the diagonal */
    for (int64_t i0 = 0; i0 < n_pos; i0 += ROWS) {
        const int n_rows = n_pos - i0 < ROWS ? (int)(n_pos - i0) : ROWS;
        const int64_t nv = round_up16(i0 + n_rows);
        scores_block(qb + i0 * d_head, d_head, n_rows, kt, p + i0 * tp, nv, tp, d_head);
        scores_block(gob + i0 * d_head, d_head, n_rows, vt, ds + i0 * tp, nv, tp, d_head);
        for (int r = 0; r < n_rows; r++) {
            const int64_t i = i0 + r, n = i + 1;
            float *pi = p + i * tp, *dsi = ds + i * tp;
            const float *oi = o + i * row, *goi = gob + i * d_head;
            float delta = 0.0f;  /* dO_i . O_i = sum_j p_ij dp_ij */
            for (int d = 0; d < d_head; d++) delta += goi[d] * oi[d];
            for (int64_t j = 0; j < n; j++) {
                pi[j] = expf(pi[j] - lse[i]);
                dsi[j] = pi[j] * (dsi[j] - delta);
            }
            for (int64_t j = n; j < tp; j++) pi[j] = dsi[j] = 0.0f;
        }
    }
    for (int64_t i0 = 0; i0 < n_pos; i0 += ROWS) {
        const int n_rows = n_pos - i0 < ROWS ? (int)(n_pos - i0) : ROWS;
        /* dQ_i = sum_{j <= i} dS_ij K_j / sqrt(D) (kb holds the scale) */
        combine_block(ds + i0 * tp, tp, 1, n_rows, 0, i0 + n_rows, kb, grad_q + i0 * row, row, 1.0f, nc);
        /* dK_j = sum_{i >= j} dS_ij Q_i / sqrt(D);  dV_j = sum_{i >= j} P_ij dO_i */
        combine_block(ds + i0, 1, tp, n_rows, i0, n_pos, qb, grad_k + i0 * row, row, scale, nc);
        combine_block(p + i0, 1, tp, n_rows, i0, n_pos, gob, grad_v + i0 * row, row, 1.0f, nc);
    }
}

static int supported(int d_head) { return d_head == 16 || d_head == 32 || d_head == 64 || d_head == 128; }

int causal_attention_forward(const float *q, const float *k, const float *v, float *o, float *lse,
                             int64_t batch, int64_t n_pos, int n_heads, int d_head) {
    if (!supported(d_head)) return 2;
    const int64_t tp = round_up16(n_pos), row = (int64_t)n_heads * d_head;
    float *kt = scratch(d_head * tp), *vb = scratch(n_pos * d_head), *p = scratch(ROWS * tp);
    if (!kt || !vb || !p) {
        free(kt); free(vb); free(p);
        return 1;
    }
    for (int64_t b = 0; b < batch; b++)
        for (int h = 0; h < n_heads; h++) {
            const int64_t base = b * n_pos * row + (int64_t)h * d_head;
            float *lse_bh = lse + (b * n_heads + h) * n_pos;
#define FORWARD(NC) forward_head(q + base, k + base, v + base, o + base, lse_bh, n_pos, row, d_head, tp, kt, vb, p, NC)
            switch (d_head) {
                case 16: FORWARD(1); break;
                case 32: FORWARD(2); break;
                case 64: FORWARD(4); break;
                default: FORWARD(8); break;
            }
        }
    free(kt); free(vb); free(p);
    return 0;
}

int causal_attention_backward(const float *q, const float *k, const float *v, const float *o,
                              const float *lse, const float *grad_o, float *grad_q, float *grad_k,
                              float *grad_v, int64_t batch, int64_t n_pos, int n_heads, int d_head) {
    if (!supported(d_head)) return 2;
    const int64_t tp = round_up16(n_pos), row = (int64_t)n_heads * d_head;
    float *kt = scratch(d_head * tp), *kb = scratch(n_pos * d_head), *vt = scratch(d_head * tp),
          *qb = scratch(n_pos * d_head), *gob = scratch(n_pos * d_head), *p = scratch(n_pos * tp),
          *ds = scratch(n_pos * tp);
    if (!kt || !kb || !vt || !qb || !gob || !p || !ds) {
        free(kt); free(kb); free(vt); free(qb); free(gob); free(p); free(ds);
        return 1;
    }
    for (int64_t b = 0; b < batch; b++)
        for (int h = 0; h < n_heads; h++) {
            const int64_t base = b * n_pos * row + (int64_t)h * d_head;
            const float *lse_bh = lse + (b * n_heads + h) * n_pos;
#define BACKWARD(NC) backward_head(q + base, k + base, v + base, o + base, lse_bh, grad_o + base, \
                                   grad_q + base, grad_k + base, grad_v + base, n_pos, row, d_head, \
                                   tp, kt, kb, vt, qb, gob, p, ds, NC)
            switch (d_head) {
                case 16: BACKWARD(1); break;
                case 32: BACKWARD(2); break;
                case 64: BACKWARD(4); break;
                default: BACKWARD(8); break;
            }
        }
    free(kt); free(kb); free(vt); free(qb); free(gob); free(p); free(ds);
    return 0;
}
