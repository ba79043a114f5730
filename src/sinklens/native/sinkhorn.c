/* Sinkhorn-Knopp on many small n x n matrices (one per token), forward and backward, on the CPU.

   The same iterations as sinklens.hyperconnections._ExpSinkhorn / _LogSinkhorn: n_iters times,
   normalise the rows, then the columns. Matrices are processed in blocks of BLOCK (one AVX-512
   vector of floats): every loop over the block's lanes is a plain fixed-length loop the compiler
   vectorises, so one block of 16 matrices costs about what one matrix costs in scalar code.

   Per block, the path is chosen as in sinklens.hyperconnections.sinkhorn_knopp: in linear space
   (divide by row / column sums, starting from exp(logits - max)) when every matrix's logits span
   at most MAX_SPREAD, so nothing can underflow; in log space (log-softmax over rows / columns)
   otherwise. The backward pass recomputes the forward iterations of its block (a few kilobytes,
   in cache) instead of keeping 2 * n_iters intermediate matrices per token in memory, as the mHC
   paper does for its fused kernels.

   Layout: logits, out, grad_out and grad_in are [n_matrices, n, n], row-major and contiguous. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
/* Denormal floats (below 1.2e-38) take a slow path in the FPU: flush them to zero while a kernel
   runs (entries that small relative to 1 change nothing here), and restore the caller's mode. */
#define FLUSH_DENORMALS unsigned int saved_csr = _mm_getcsr(); _mm_setcsr(saved_csr | 0x8040)
#define RESTORE_DENORMALS _mm_setcsr(saved_csr)
#else
#define FLUSH_DENORMALS
#define RESTORE_DENORMALS
#endif

#define BLOCK 16
#define MAX_SPREAD 60.0f

typedef float vf __attribute__((vector_size(BLOCK * sizeof(float))));  /* one lane per matrix */
typedef int vi __attribute__((vector_size(BLOCK * sizeof(int))));

static inline vf vmax(vf a, vf b) { vi m = a > b; return (vf)((m & (vi)a) | (~m & (vi)b)); }
static inline vf vmin(vf a, vf b) { vi m = a < b; return (vf)((m & (vi)a) | (~m & (vi)b)); }
/* exp and log lane by lane through float arrays, a loop the compiler vectorises (libmvec). exp's
   argument is floored at EXP_FLOOR, so its result is never a denormal (whose arithmetic is many
   times slower): an entry below exp(-87) = 1.6e-38 of its line's largest counts as 1.6e-38. */
#define EXP_FLOOR -87.0f
__attribute__((noinline)) static vf vexp(vf a) {  /* inlined, gcc 12 unrolls it into scalar calls */
    float in[BLOCK], out[BLOCK];
    vf r;
    memcpy(in, &a, sizeof a);
    for (int t = 0; t < BLOCK; t++) out[t] = expf(fmaxf(in[t], EXP_FLOOR));
    memcpy(&r, out, sizeof r);
    return r;
}
static inline vf vlog(vf a) {
    float in[BLOCK], out[BLOCK];
    vf r;
    memcpy(in, &a, sizeof a);
    for (int t = 0; t < BLOCK; t++) out[t] = logf(in[t]);
    memcpy(&r, out, sizeof r);
    return r;
}
static inline vf vsplat(float x) { vf r; for (int t = 0; t < BLOCK; t++) r[t] = x; return r; }

/* Scratch for one block of matrices: entry k = i * n + j is the vector m[k] (lane t: matrix t). */
typedef struct {
    int n, nn, n_iters;
    vf *m;      /* [nn] the current matrix (linear) or its log (log space) */
    vf *first;  /* [nn] exp(logits - max): the linear path's starting point */
    vf *outs;   /* [2 n_iters][nn] the matrix after every half-step (log space: its exp) */
    vf *sums;   /* [2 n_iters][n] the sums divided by (linear path only) */
    vf *g;      /* [nn] gradient */
    vf *x;      /* [nn] logits */
} Scratch;

static int scratch_init(Scratch *s, int n, int n_iters) {
    size_t nn = (size_t)n * n, steps = 2 * (size_t)n_iters;
    s->n = n;
    s->nn = (int)nn;
    s->n_iters = n_iters;
    vf *mem = (vf *)aligned_alloc(sizeof(vf), sizeof(vf) * (4 * nn + steps * (nn + n)));
    if (!mem) return 0;
    s->m = mem;
    s->first = s->m + nn;
    s->g = s->first + nn;
    s->x = s->g + nn;
    s->outs = s->x + nn;
    s->sums = s->outs + steps * nn;
    return 1;
}

/* Load a block, one vector per entry; lanes past the last matrix get zeros. */
static void load_block(vf *dst, const float *src, int64_t first, int64_t count, int nn) {
    for (int k = 0; k < nn; k++) dst[k] = vsplat(0.0f);
    for (int t = 0; t < BLOCK && first + t < count; t++)
        for (int k = 0; k < nn; k++) dst[k][t] = src[(first + t) * nn + k];
}

static void store_block(float *dst, const vf *src, int64_t first, int64_t count, int nn) {
    for (int t = 0; t < BLOCK && first + t < count; t++)
        for (int k = 0; k < nn; k++) dst[(first + t) * nn + k] = src[k][t];
}

/* Whether any matrix of the block spans more than MAX_SPREAD. */
static int block_needs_log_space(const vf *x, int nn) {
    vf hi = x[0], lo = x[0];
    for (int k = 1; k < nn; k++) {
        hi = vmax(hi, x[k]);
        lo = vmin(lo, x[k]);
    }
    vf spread = hi - lo;
    int wide = 0;
    for (int t = 0; t < BLOCK; t++) wide |= !(spread[t] <= MAX_SPREAD);  /* infinite spread too */
    return wide;
}

/* A half-step normalises rows (axis 0: line i holds entries i * n + e) or columns (axis 1:
   entries e * n + i). */
#define LINE_BASE(axis, line, n) ((axis) == 0 ? (line) * (n) : (line))
#define LINE_STEP(axis, n) ((axis) == 0 ? 1 : (n))

/* Linear-space forward from s->x; fills s->outs / s->sums; the result is the last of s->outs. */
static void forward_linear(Scratch *s) {
    int n = s->n, nn = s->nn;
    vf mx = s->x[0];
    for (int k = 1; k < nn; k++) mx = vmax(mx, s->x[k]);
    for (int k = 0; k < nn; k++) s->first[k] = vexp(s->x[k] - mx);
    const vf *m = s->first;
    for (int step = 0; step < 2 * s->n_iters; step++) {
        int axis = step % 2, stride = LINE_STEP(axis, n);
        vf *out = s->outs + (size_t)step * nn, *sums = s->sums + (size_t)step * n;
        for (int line = 0; line < n; line++) {
            int base = LINE_BASE(axis, line, n);
            vf sum = m[base];
            for (int e = 1; e < n; e++) sum += m[base + e * stride];
            sums[line] = sum;
            vf inv = 1.0f / sum;
            for (int e = 0; e < n; e++) out[base + e * stride] = m[base + e * stride] * inv;
        }
        m = out;
    }
}

/* Backward of forward_linear: grad of the last output in s->g -> grad of the logits in s->g. */
static void backward_linear(Scratch *s) {
    int n = s->n, nn = s->nn;
    vf *g = s->g;
    for (int step = 2 * s->n_iters - 1; step >= 0; step--) {
        int axis = step % 2, stride = LINE_STEP(axis, n);
        const vf *out = s->outs + (size_t)step * nn, *sums = s->sums + (size_t)step * n;
        for (int line = 0; line < n; line++) {  /* y = m / sum:  dm = (g - sum(g * y)) / sum */
            int base = LINE_BASE(axis, line, n);
            vf dot = g[base] * out[base];
            for (int e = 1; e < n; e++) dot += g[base + e * stride] * out[base + e * stride];
            vf inv = 1.0f / sums[line];
            for (int e = 0; e < n; e++) g[base + e * stride] = (g[base + e * stride] - dot) * inv;
        }
    }
    for (int k = 0; k < nn; k++) g[k] *= s->first[k];  /* d exp(x - max) / dx; the max cancels out */
}

/* Log-space forward: every half-step is a log-softmax over rows or columns; s->outs keeps the
   exp of each half-step's output (a softmax), which is all the backward pass needs. */
static void forward_log(Scratch *s) {
    int n = s->n, nn = s->nn;
    vf *a = s->m;
    for (int k = 0; k < nn; k++) a[k] = s->x[k];
    for (int step = 0; step < 2 * s->n_iters; step++) {
        int axis = step % 2, stride = LINE_STEP(axis, n);
        vf *p = s->outs + (size_t)step * nn;
        for (int line = 0; line < n; line++) {
            int base = LINE_BASE(axis, line, n);
            vf mx = a[base];
            for (int e = 1; e < n; e++) mx = vmax(mx, a[base + e * stride]);
            vf sum = vsplat(0.0f);
            for (int e = 0; e < n; e++) {
                p[base + e * stride] = vexp(a[base + e * stride] - mx);
                sum += p[base + e * stride];
            }
            vf shift = mx + vlog(sum), inv = 1.0f / sum;
            for (int e = 0; e < n; e++) {
                a[base + e * stride] -= shift;
                p[base + e * stride] *= inv;
            }
        }
    }
}

/* Backward of forward_log: grad of the output (= exp of the last log) in s->g -> grad of the logits. */
static void backward_log(Scratch *s) {
    int n = s->n, nn = s->nn;
    vf *g = s->g;
    const vf *last = s->outs + (size_t)(2 * s->n_iters - 1) * nn;
    for (int k = 0; k < nn; k++) g[k] *= last[k];
    for (int step = 2 * s->n_iters - 1; step >= 0; step--) {
        int axis = step % 2, stride = LINE_STEP(axis, n);
        const vf *p = s->outs + (size_t)step * nn;
        for (int line = 0; line < n; line++) {  /* log-softmax backward: g - softmax * sum(g) */
            int base = LINE_BASE(axis, line, n);
            vf total = g[base];
            for (int e = 1; e < n; e++) total += g[base + e * stride];
            for (int e = 0; e < n; e++) g[base + e * stride] -= p[base + e * stride] * total;
        }
    }
}

/* Returns 0 on success, 1 if out of memory. */
int sinkhorn_forward(const float *logits, float *out, int64_t count, int n, int n_iters) {
    Scratch s;
    if (!scratch_init(&s, n, n_iters)) return 1;
    FLUSH_DENORMALS;
    const vf *last = s.outs + (size_t)(2 * n_iters - 1) * s.nn;
    for (int64_t first = 0; first < count; first += BLOCK) {
        load_block(s.x, logits, first, count, s.nn);
        if (block_needs_log_space(s.x, s.nn)) forward_log(&s);
        else forward_linear(&s);
        store_block(out, last, first, count, s.nn);
    }
    RESTORE_DENORMALS;
    free(s.m);
    return 0;
}

int sinkhorn_backward(const float *logits, const float *grad_out, float *grad_in, int64_t count, int n,
                      int n_iters) {
    Scratch s;
    if (!scratch_init(&s, n, n_iters)) return 1;
    FLUSH_DENORMALS;
    for (int64_t first = 0; first < count; first += BLOCK) {
        load_block(s.x, logits, first, count, s.nn);
        load_block(s.g, grad_out, first, count, s.nn);
        if (block_needs_log_space(s.x, s.nn)) {
            forward_log(&s);
            backward_log(&s);
        } else {
            forward_linear(&s);
            backward_linear(&s);
        }
        store_block(grad_in, s.g, first, count, s.nn);
    }
    RESTORE_DENORMALS;
    free(s.m);
    return 0;
}
