/* Fused first block of the tutorials' CNNs for CPU training: a valid stride-1 convolution with a small
 * fan-in (K = C*KH*KW <= 64), 2x2 stride-2 max-pool (floor) and ReLU, forward and weight/bias gradients.
 *
 * Layouts: x (N, C, H, W) float32; wt (K, F) float32 (the weight transposed so the inner loops run over
 * filters); out (N, H2, W2, F) float32; code (N, H2, W2, F) uint8 = which of the 4 window positions won
 * (0..3, the first maximum in scan order, as PyTorch's max-pool). Each call handles images [n0, n1), so
 * a caller can split a batch over threads.
 *
 * The forward processes filters in blocks of 16 (one AVX-512 register of floats) so the 4 window sums
 * stay in registers; K = 9, 25 and 27 (3x3 grey, 5x5 grey, 3x3 RGB) get compile-time specialisations.
 * Loops are written branch-free where the compiler would otherwise not vectorise them (a 5x difference).
 */
#include <stdint.h>
#include <string.h>

#define MAXK 64
#define FB 16

static inline void patch(const float *x, int C, int H, int W, int KH, int KW, int r, int c, float *p) {
    int k = 0;
    for (int ch = 0; ch < C; ch++)
        for (int u = 0; u < KH; u++)
            for (int v = 0; v < KW; v++)
                p[k++] = x[((long)ch * H + r + u) * W + c + v];
}

/* One 2x2 window of pooled output for filters [f0, f0 + FB): sums, max, argmax, ReLU. */
static inline void fwd_block(int K, const float (*p)[MAXK], const float *restrict wt, const float *restrict bias,
                             int F, int f0, float *restrict out, uint8_t *restrict code) {
    float a0[FB], a1[FB], a2[FB], a3[FB];
    for (int f = 0; f < FB; f++) a0[f] = a1[f] = a2[f] = a3[f] = bias[f0 + f];
    for (int k = 0; k < K; k++) {
        const float *restrict w = wt + (long)k * F + f0;
        const float p0 = p[0][k], p1 = p[1][k], p2 = p[2][k], p3 = p[3][k];
        for (int f = 0; f < FB; f++) {
            a0[f] += p0 * w[f];
            a1[f] += p1 * w[f];
            a2[f] += p2 * w[f];
            a3[f] += p3 * w[f];
        }
    }
    for (int f = 0; f < FB; f++) {
        float m = a0[f];
        uint8_t b = 0;
        /* NaN wins and propagates, as in PyTorch's max-pool (`val > max || isnan(val)`) and ReLU, so a NaN
         * guard downstream sees it; the pool's argmax is then the last NaN, as PyTorch's. */
        if (a1[f] > m || a1[f] != a1[f]) { m = a1[f]; b = 1; }
        if (a2[f] > m || a2[f] != a2[f]) { m = a2[f]; b = 2; }
        if (a3[f] > m || a3[f] != a3[f]) { m = a3[f]; b = 3; }
        out[f0 + f] = m <= 0.f ? 0.f : m;
        code[f0 + f] = b;
    }
}

#define FORWARD(NAME, KCONST)                                                                                   \
    static void NAME(const float *restrict x, const float *restrict wt, const float *restrict bias,            \
                     float *restrict out, uint8_t *restrict code, int n0, int n1, int C, int H, int W, int KH,  \
                     int KW, int F, int Kdyn) {                                                                 \
        const int K = KCONST ? KCONST : Kdyn, H2 = (H - KH + 1) / 2, W2 = (W - KW + 1) / 2;                   \
        float p[4][MAXK];                                                                                       \
        for (int n = n0; n < n1; n++) {                                                                         \
            const float *xn = x + (long)n * C * H * W;                                                          \
            for (int i = 0; i < H2; i++)                                                                        \
                for (int j = 0; j < W2; j++) {                                                                  \
                    for (int q = 0; q < 4; q++)                                                                 \
                        patch(xn, C, H, W, KH, KW, 2 * i + (q >> 1), 2 * j + (q & 1), p[q]);                    \
                    long o = (((long)n * H2 + i) * W2 + j) * F;                                                 \
                    for (int f0 = 0; f0 < F; f0 += FB)                                                          \
                        fwd_block(K, (const float (*)[MAXK])p, wt, bias, F, f0, out + o, code + o);             \
                }                                                                                               \
        }                                                                                                       \
    }

FORWARD(fwd_k9, 9)
FORWARD(fwd_k25, 25)
FORWARD(fwd_k27, 27)
FORWARD(fwd_any, 0)

/* F must be a multiple of 16 (the caller checks). */
int convpool_forward(const float *x, const float *wt, const float *bias, float *out, uint8_t *code,
                     int n0, int n1, int C, int H, int W, int KH, int KW, int F) {
    const int K = C * KH * KW;
    if (K > MAXK || F % FB) return -1;
    if (K == 9) fwd_k9(x, wt, bias, out, code, n0, n1, C, H, W, KH, KW, F, K);
    else if (K == 25) fwd_k25(x, wt, bias, out, code, n0, n1, C, H, W, KH, KW, F, K);
    else if (K == 27) fwd_k27(x, wt, bias, out, code, n0, n1, C, H, W, KH, KW, F, K);
    else fwd_any(x, wt, bias, out, code, n0, n1, C, H, W, KH, KW, F, K);
    return 0;
}

/* gw (K, F) and gb (F) are accumulated (the caller zeroes them; one buffer per thread). */
int convpool_backward(const float *restrict x, const float *restrict g, const float *restrict out,
                      const uint8_t *restrict code, float *restrict gw, float *restrict gb,
                      int n0, int n1, int C, int H, int W, int KH, int KW, int F) {
    const int K = C * KH * KW, H2 = (H - KH + 1) / 2, W2 = (W - KW + 1) / 2;
    if (K > MAXK || F % FB) return -1;
    float p[4][MAXK], gq[4][1024];
    if (F > 1024) return -1;
    for (int n = n0; n < n1; n++) {
        const float *xn = x + (long)n * C * H * W;
        for (int i = 0; i < H2; i++)
            for (int j = 0; j < W2; j++) {
                long o = (((long)n * H2 + i) * W2 + j) * F;
                for (int q = 0; q < 4; q++) patch(xn, C, H, W, KH, KW, 2 * i + (q >> 1), 2 * j + (q & 1), p[q]);
                for (int f = 0; f < F; f++) {  /* branch-free so it vectorises */
                    /* through the ReLU: PyTorch passes the gradient where !(out <= 0), NaN included */
                    const float gv = g[o + f] * (float)!(out[o + f] <= 0.f);
                    const int b = code[o + f];
                    gq[0][f] = gv * (float)(b == 0);
                    gq[1][f] = gv * (float)(b == 1);
                    gq[2][f] = gv * (float)(b == 2);
                    gq[3][f] = gv * (float)(b == 3);
                    gb[f] += gv;
                }
                for (int k = 0; k < K; k++) {  /* one pass over gw per k: the 4 window positions together */
                    const float p0 = p[0][k], p1 = p[1][k], p2 = p[2][k], p3 = p[3][k];
                    float *restrict w = gw + (long)k * F;
                    for (int f = 0; f < F; f++) w[f] += p0 * gq[0][f] + p1 * gq[1][f] + p2 * gq[2][f] + p3 * gq[3][f];
                }
            }
    }
    return 0;
}
