/* Fused first block of the tutorials' CNNs for CPU training: a valid stride-1 convolution with a small
 * fan-in (K = C*KH*KW <= 64), 2x2 stride-2 max-pool (floor) and ReLU, forward and weight/bias gradients.
 *
 * Layouts: x (N, C, H, W) float32; wt (K, F) float32 (the weight transposed so the inner loops run over
 * filters); out (N, H2, W2, F) float32, or bfloat16 when the caller asks (`bf16`: what the next layer
 * takes under bf16 autocast, rounded to nearest even as PyTorch's cast rounds, so no separate cast pass);
 * code (N, H2, W2, F) uint8: bits 0-1 = which of the 4 window positions won (the first maximum in scan
 * order, as PyTorch's max-pool), bit 2 = the ReLU passed the gradient (!(out <= 0)), so the backward
 * needs neither the output nor its dtype. The backward's incoming gradient g has the output's layout and
 * dtype. Each call handles images [n0, n1), so a caller can split a batch over threads.
 *
 * The portable forward processes filters in blocks of 16 (one AVX-512 register of floats) so the 4 window
 * sums stay in registers; K = 9, 25 and 27 (3x3 grey, 5x5 grey, 3x3 RGB) get compile-time specialisations.
 * Loops are written branch-free where the compiler would otherwise not vectorise them (a 5x difference).
 */
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && !defined(CONVPOOL_PORTABLE)
#include <immintrin.h>
#define CONVPOOL_AVX512 1
#endif

#define MAXK 64
#define FB 16
#define RELU_PASSED 4

/* fp32 -> bf16, round to nearest even; NaN -> the canonical quiet NaN (c10::BFloat16's rule). */
static inline uint16_t to_bf16(float v) {
    uint32_t b;
    memcpy(&b, &v, 4);
    if (v != v) return 0x7FC0;
    return (uint16_t)((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}

static inline float from_bf16(uint16_t h) {
    const uint32_t b = (uint32_t)h << 16;
    float v;
    memcpy(&v, &b, 4);
    return v;
}

static inline void patch(const float *x, int C, int H, int W, int KH, int KW, int r, int c, float *p) {
    int k = 0;
    for (int ch = 0; ch < C; ch++)
        for (int u = 0; u < KH; u++)
            for (int v = 0; v < KW; v++)
                p[k++] = x[((long)ch * H + r + u) * W + c + v];
}

/* One 2x2 window of pooled output for filters [f0, f0 + FB): sums, max, argmax, ReLU. */
static inline void fwd_block(int K, const float (*p)[MAXK], const float *restrict wt, const float *restrict bias,
                             int F, int f0, void *restrict out, int bf16, uint8_t *restrict code) {
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
        const float r = m <= 0.f ? 0.f : m;
        if (bf16)
            ((uint16_t *)out)[f0 + f] = to_bf16(r);
        else
            ((float *)out)[f0 + f] = r;
        code[f0 + f] = b | (m <= 0.f ? 0 : RELU_PASSED);
    }
}

#define FORWARD(NAME, KCONST)                                                                                   \
    static void NAME(const float *restrict x, const float *restrict wt, const float *restrict bias,            \
                     void *restrict out, int bf16, uint8_t *restrict code, int n0, int n1, int C, int H, int W, \
                     int KH, int KW, int F, int Kdyn) {                                                         \
        const int K = KCONST ? KCONST : Kdyn, H2 = (H - KH + 1) / 2, W2 = (W - KW + 1) / 2;                   \
        float p[4][MAXK];                                                                                       \
        for (int n = n0; n < n1; n++) {                                                                         \
            const float *xn = x + (long)n * C * H * W;                                                          \
            for (int i = 0; i < H2; i++)                                                                        \
                for (int j = 0; j < W2; j++) {                                                                  \
                    for (int q = 0; q < 4; q++)                                                                 \
                        patch(xn, C, H, W, KH, KW, 2 * i + (q >> 1), 2 * j + (q & 1), p[q]);                    \
                    long o = (((long)n * H2 + i) * W2 + j) * F;                                                 \
                    void *oo = bf16 ? (void *)((uint16_t *)out + o) : (void *)((float *)out + o);             \
                    for (int f0 = 0; f0 < F; f0 += FB)                                                          \
                        fwd_block(K, (const float (*)[MAXK])p, wt, bias, F, f0, oo, bf16, code + o);            \
                }                                                                                               \
        }                                                                                                       \
    }

FORWARD(fwd_k9, 9)
FORWARD(fwd_k25, 25)
FORWARD(fwd_k27, 27)
FORWARD(fwd_any, 0)

#ifdef CONVPOOL_AVX512
/* AVX-512 versions of the two loops below, used where the compiler targets AVX-512 (with BW and VL for the
 * byte masks). The forward does the same arithmetic per output (bias, then one FMA per k in order), so it
 * equals the portable loop bit for bit; what changes is the register blocking. The portable forward keeps 4
 * accumulators (one 16-filter block, 4 window positions) in flight, too few to hide the FMA latency, and
 * copies each patch; here a window's 4 positions x up to 64 filters (16 registers) accumulate at once,
 * reading the pixels in place through an offset table: 2.8x faster on the tutorial CNN's 1->64 3x3 layer.
 * The backward keeps each k's weight gradient in a register over one image's windows (the portable loop
 * loads and stores gw for every window) and adds a position's product only where it won the pool (masked
 * FMA): 1.8x faster. Its sums run in another order (per image), and a non-finite input pixel makes NaN
 * only the gradients of the windows it won, where a product with zero spreads it further in the portable
 * loop and in eager PyTorch; either way the gradient is non-finite, which is what the NaN guard checks. */

/* 16 floats -> bf16, as to_bf16 does one. */
static inline __m256i bf16_rne(__m512 v) {
    const __m512i b = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
    return _mm512_cvtepi32_epi16(r);
}

static inline __m512 from_bf16x16(const uint16_t *h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)h)), 16));
}

static void offsets(int C, int H, int W, int KH, int KW, int *off) {
    int k = 0;
    for (int ch = 0; ch < C; ch++)
        for (int u = 0; u < KH; u++)
            for (int v = 0; v < KW; v++) off[k++] = (ch * H + u) * W + v;
}

/* One 2x2 window, filters [f0, f0 + 16 * NB); xq[q] points at position q's top-left input pixel. */
static inline __attribute__((always_inline)) void fwd_window(const float *const xq[4], const int *restrict off,
                                                             int K, const float *restrict wt,
                                                             const float *restrict bias, int F, int f0, const int NB,
                                                             void *restrict out, int bf16, uint8_t *restrict code) {
    __m512 a[4][4];
    for (int z = 0; z < NB; z++) {
        const __m512 b = _mm512_loadu_ps(bias + f0 + 16 * z);
        for (int q = 0; q < 4; q++) a[q][z] = b;
    }
    for (int k = 0; k < K; k++) {
        const float *restrict w = wt + (long)k * F + f0;
        __m512 wz[4];
        for (int z = 0; z < NB; z++) wz[z] = _mm512_loadu_ps(w + 16 * z);
        for (int q = 0; q < 4; q++) {
            const __m512 p = _mm512_set1_ps(xq[q][off[k]]);
            for (int z = 0; z < NB; z++) a[q][z] = _mm512_fmadd_ps(p, wz[z], a[q][z]);
        }
    }
    const __m512 zero = _mm512_setzero_ps();
    for (int z = 0; z < NB; z++) {
        __m512 m = a[0][z];
        __m128i b = _mm_setzero_si128();
        for (int q = 1; q < 4; q++) {  /* first maximum wins; a NaN wins and propagates (see fwd_block) */
            const __mmask16 take = _mm512_cmp_ps_mask(a[q][z], m, _CMP_GT_OQ) |
                                   _mm512_cmp_ps_mask(a[q][z], a[q][z], _CMP_UNORD_Q);
            m = _mm512_mask_mov_ps(m, take, a[q][z]);
            b = _mm_mask_mov_epi8(b, take, _mm_set1_epi8((char)q));
        }
        const __mmask16 cut = _mm512_cmp_ps_mask(m, zero, _CMP_LE_OQ);
        m = _mm512_mask_mov_ps(m, cut, zero);
        b = _mm_or_si128(b, _mm_maskz_mov_epi8((__mmask16)~cut, _mm_set1_epi8(RELU_PASSED)));
        if (bf16)
            _mm256_storeu_si256((__m256i *)((uint16_t *)out + f0 + 16 * z), bf16_rne(m));
        else
            _mm512_storeu_ps((float *)out + f0 + 16 * z, m);
        _mm_storeu_si128((__m128i *)(code + f0 + 16 * z), b);
    }
}

static void fwd_avx512(const float *restrict x, const float *restrict wt, const float *restrict bias,
                       void *restrict out, int bf16, uint8_t *restrict code, int n0, int n1, int C, int H, int W,
                       int KH, int KW, int F) {
    const int K = C * KH * KW, H2 = (H - KH + 1) / 2, W2 = (W - KW + 1) / 2;
    int off[MAXK];
    offsets(C, H, W, KH, KW, off);
    for (int n = n0; n < n1; n++) {
        const float *xn = x + (long)n * C * H * W;
        for (int i = 0; i < H2; i++)
            for (int j = 0; j < W2; j++) {
                const float *const xq[4] = {xn + 2 * i * W + 2 * j, xn + 2 * i * W + 2 * j + 1,
                                            xn + (2 * i + 1) * W + 2 * j, xn + (2 * i + 1) * W + 2 * j + 1};
                const long o = (((long)n * H2 + i) * W2 + j) * F;
                void *oo = bf16 ? (void *)((uint16_t *)out + o) : (void *)((float *)out + o);
                int f0 = 0;
                for (; f0 + 64 <= F; f0 += 64) fwd_window(xq, off, K, wt, bias, F, f0, 4, oo, bf16, code + o);
                switch ((F - f0) / 16) {
                    case 3: fwd_window(xq, off, K, wt, bias, F, f0, 3, oo, bf16, code + o); break;
                    case 2: fwd_window(xq, off, K, wt, bias, F, f0, 2, oo, bf16, code + o); break;
                    case 1: fwd_window(xq, off, K, wt, bias, F, f0, 1, oo, bf16, code + o); break;
                    default: break;
                }
            }
    }
}

#define KC 12 /* weight-gradient registers per pass: with the window's operands, what 32 registers hold without spilling */

/* The weight and bias gradients of k = k0 .. k0 + KCC - 1 and filters [f0, f0 + 16) over image n, added
 * into gw and (for k0 = 0) gb. KCC is a compile-time constant at every call, so the accumulators are
 * registers, not a stack array; one image's operands stay in cache across the calls for its other filters
 * and k (a pass over the whole batch per call would stream it from memory F/16 * K/16 times). */
static inline __attribute__((always_inline)) void bwd_chunk(
    const float *restrict x, const void *restrict g, int bf16, const uint8_t *restrict code,
    float *restrict gw, float *restrict gb, int n, int C, int H, int W, int H2, int W2, int F,
    const int *restrict off, int f0, int k0, const int KCC) {
    const __m512 zero = _mm512_setzero_ps();
    __m512 acc[KC], accb = zero;
    for (int k = 0; k < KCC; k++) acc[k] = zero;
    const float *xn = x + (long)n * C * H * W;
    for (int i = 0; i < H2; i++)
        for (int j = 0; j < W2; j++) {
            const long o = (((long)n * H2 + i) * W2 + j) * F + f0;
            const __m128i cb = _mm_loadu_si128((const __m128i *)(code + o));
            const __m512 gin = bf16 ? from_bf16x16((const uint16_t *)g + o) : _mm512_loadu_ps((const float *)g + o);
            /* through the ReLU: zero where it cut (threshold_backward's select, not a product) */
            const __m512 gv = _mm512_maskz_mov_ps(_mm_test_epi8_mask(cb, _mm_set1_epi8(RELU_PASSED)), gin);
            const __m128i pos = _mm_and_si128(cb, _mm_set1_epi8(3));
            accb = _mm512_add_ps(accb, gv);
            __mmask16 won[4];
            float p[4][KC];  /* the patch values copied first: the FMAs then broadcast from fixed offsets */
            for (int q = 0; q < 4; q++) {
                won[q] = _mm_cmpeq_epi8_mask(pos, _mm_set1_epi8((char)q));
                const float *xq = xn + (2 * i + (q >> 1)) * W + 2 * j + (q & 1);
                for (int k = 0; k < KCC; k++) p[q][k] = xq[off[k0 + k]];
            }
            for (int k = 0; k < KCC; k++)
                for (int q = 0; q < 4; q++)
                    acc[k] = _mm512_mask3_fmadd_ps(_mm512_set1_ps(p[q][k]), gv, acc[k], won[q]);
        }
    for (int k = 0; k < KCC; k++) {
        float *w = gw + (long)(k0 + k) * F + f0;
        _mm512_storeu_ps(w, _mm512_add_ps(_mm512_loadu_ps(w), acc[k]));
    }
    if (k0 == 0) _mm512_storeu_ps(gb + f0, _mm512_add_ps(_mm512_loadu_ps(gb + f0), accb));
}

#define CHUNK(KCC) \
    case KCC: bwd_chunk(x, g, bf16, code, gw, gb, n, C, H, W, H2, W2, F, off, f0, k0, KCC); break;

static void bwd_avx512(const float *restrict x, const void *restrict g, int bf16, const uint8_t *restrict code,
                       float *restrict gw, float *restrict gb, int n0, int n1, int C, int H, int W, int KH, int KW,
                       int F) {
    const int K = C * KH * KW, H2 = (H - KH + 1) / 2, W2 = (W - KW + 1) / 2;
    int off[MAXK];
    offsets(C, H, W, KH, KW, off);
    for (int n = n0; n < n1; n++)
        for (int f0 = 0; f0 < F; f0 += 16)
            for (int k0 = 0; k0 < K; k0 += KC) {
            switch (K - k0 < KC ? K - k0 : KC) {
                CHUNK(1) CHUNK(2) CHUNK(3) CHUNK(4) CHUNK(5) CHUNK(6) CHUNK(7) CHUNK(8)
                CHUNK(9) CHUNK(10) CHUNK(11) CHUNK(12)
                default: break;
            }
        }
}
#endif

/* F must be a multiple of 16 (the caller checks). */
int convpool_forward(const float *x, const float *wt, const float *bias, void *out, int bf16, uint8_t *code,
                     int n0, int n1, int C, int H, int W, int KH, int KW, int F) {
    const int K = C * KH * KW;
    if (K > MAXK || F % FB) return -1;
#ifdef CONVPOOL_AVX512
    fwd_avx512(x, wt, bias, out, bf16, code, n0, n1, C, H, W, KH, KW, F);
    return 0;
#endif
    if (K == 9) fwd_k9(x, wt, bias, out, bf16, code, n0, n1, C, H, W, KH, KW, F, K);
    else if (K == 25) fwd_k25(x, wt, bias, out, bf16, code, n0, n1, C, H, W, KH, KW, F, K);
    else if (K == 27) fwd_k27(x, wt, bias, out, bf16, code, n0, n1, C, H, W, KH, KW, F, K);
    else fwd_any(x, wt, bias, out, bf16, code, n0, n1, C, H, W, KH, KW, F, K);
    return 0;
}

/* gw (K, F) and gb (F) are accumulated (the caller zeroes them; one buffer per thread). */
int convpool_backward(const float *restrict x, const void *restrict g, int bf16, const uint8_t *restrict code,
                      float *restrict gw, float *restrict gb, int n0, int n1, int C, int H, int W, int KH, int KW,
                      int F) {
    const int K = C * KH * KW, H2 = (H - KH + 1) / 2, W2 = (W - KW + 1) / 2;
    if (K > MAXK || F % FB) return -1;
    float p[4][MAXK], gq[4][1024];
    if (F > 1024) return -1;
#ifdef CONVPOOL_AVX512
    bwd_avx512(x, g, bf16, code, gw, gb, n0, n1, C, H, W, KH, KW, F);
    return 0;
#endif
    for (int n = n0; n < n1; n++) {
        const float *xn = x + (long)n * C * H * W;
        for (int i = 0; i < H2; i++)
            for (int j = 0; j < W2; j++) {
                long o = (((long)n * H2 + i) * W2 + j) * F;
                for (int q = 0; q < 4; q++) patch(xn, C, H, W, KH, KW, 2 * i + (q >> 1), 2 * j + (q & 1), p[q]);
                for (int f = 0; f < F; f++) {  /* branch-free so it vectorises */
                    const float gin = bf16 ? from_bf16(((const uint16_t *)g)[o + f]) : ((const float *)g)[o + f];
                    const int b = code[o + f] & 3;
                    /* through the ReLU: zero where it cut (threshold_backward's select, not a product) */
                    const float gv = (code[o + f] & RELU_PASSED) ? gin : 0.f;
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
