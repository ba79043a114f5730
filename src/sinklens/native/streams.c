/* The multi-stream read and write of hyper-connections (HC, mHC, mHC-lite), forward and backward.

   Per token t, with X the [n, d] streams:
     read:   y = sum_i h_pre_i X_i                              ([n, d] -> [d])
     write:  X'_i = h_post_i out + sum_j h_res_ij X_j           ([n, d] -> [n, d])
   Each pass touches every stream once, with the d-long rows as the vectorised inner loop. As
   torch ops these are batched 1 x n and n x n matrix products over thousands of tokens, which
   torch's CPU bmm runs at a few GB/s; here they run near the speed of a copy.

   Layout (all float32, contiguous): streams / grads of streams [T][n][d], h_pre / h_post [T][n],
   h_res [T][n][n] (row i: where stream i's new value comes from), out / y [T][d]. */

#include <stdint.h>

void read_streams_forward(const float *restrict x, const float *restrict pre, float *restrict y, int64_t T,
                          int n, int d) {
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * n * d, *pt = pre + t * n;
        float *yt = y + t * d;
        for (int k = 0; k < d; k++) yt[k] = pt[0] * xt[k];
        for (int i = 1; i < n; i++)
            for (int k = 0; k < d; k++) yt[k] += pt[i] * xt[i * d + k];
    }
}

void read_streams_backward(const float *restrict x, const float *restrict pre, const float *restrict g,
                           float *restrict gx, float *restrict gpre, int64_t T, int n, int d) {
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * n * d, *gt = g + t * d;
        for (int i = 0; i < n; i++) {
            float p = pre[t * n + i], dot = 0.0f;
            float *gxi = gx + (t * n + i) * d;
            for (int k = 0; k < d; k++) {
                gxi[k] = p * gt[k];
                dot += xt[i * d + k] * gt[k];
            }
            gpre[t * n + i] = dot;
        }
    }
}

void write_streams_forward(const float *restrict x, const float *restrict h, const float *restrict post,
                           const float *restrict out, float *restrict y, int64_t T, int n, int d) {
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * n * d, *ht = h + t * n * n, *ot = out + t * d;
        for (int i = 0; i < n; i++) {
            float *yi = y + (t * n + i) * d, p = post[t * n + i];
            for (int k = 0; k < d; k++) yi[k] = p * ot[k];
            for (int j = 0; j < n; j++) {
                float w = ht[i * n + j];
                for (int k = 0; k < d; k++) yi[k] += w * xt[j * d + k];
            }
        }
    }
}

void write_streams_backward(const float *restrict x, const float *restrict h, const float *restrict post,
                            const float *restrict out, const float *restrict g, float *restrict gx,
                            float *restrict gh, float *restrict gpost, float *restrict gout, int64_t T, int n,
                            int d) {
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * n * d, *ht = h + t * n * n, *ot = out + t * d, *gt = g + t * n * d;
        float *gxt = gx + t * n * d, *got = gout + t * d;
        for (int k = 0; k < d; k++) got[k] = 0.0f;
        for (int j = 0; j < n; j++)
            for (int k = 0; k < d; k++) gxt[j * d + k] = 0.0f;
        for (int i = 0; i < n; i++) {
            const float *gi = gt + i * d;
            float p = post[t * n + i], dot_out = 0.0f;
            for (int k = 0; k < d; k++) {
                got[k] += p * gi[k];
                dot_out += gi[k] * ot[k];
            }
            gpost[t * n + i] = dot_out;
            for (int j = 0; j < n; j++) {
                float w = ht[i * n + j], dot = 0.0f;
                float *gxj = gxt + j * d;
                const float *xj = xt + j * d;
                for (int k = 0; k < d; k++) {
                    gxj[k] += w * gi[k];
                    dot += gi[k] * xj[k];
                }
                gh[(t * n + i) * n + j] = dot;
            }
        }
    }
}
