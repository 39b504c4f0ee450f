/* Softmax over the last axis of float32 rows, in place, bit for bit what MLX 0.32's CPU
 * backend computes (mlx/backend/cpu/softmax.cpp with the exp of simd/math.h), with AVX2 and
 * FMA. engines/llm/native_softmax.py builds and loads it; see its docstring for why.
 *
 * MLX on x86 runs its softmax one element at a time (its SIMD width there is 1): a running
 * maximum, then each exp(x - max) written out and added to a running sum, first element to
 * last, then every element times 1 / sum. Its exp is a degree-6 polynomial in fused
 * multiply-adds after a split of x * log2(e) into integer and fraction. Each step below is
 * the same IEEE operation on the same operands, eight elements at a time where the order of
 * operations does not depend on it (the exps, the maximum, the scaling); the sums keep MLX's
 * order, first to last, with eight rows' sums interleaved so their additions overlap.
 *
 * Built with -ffp-contract=off: no multiply and add may be fused other than where MLX fuses
 * them (its explicit fma calls, _mm256_fmadd_ps here).
 *
 * One exception: a row holding several NaNs with different payloads may come out with another
 * payload than MLX's (which NaN an operation returns depends on its operands' order in MLX's
 * compiled code). Such a row is all NaN either way.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define LOG2E 1.442695f

/* MLX's exp for one element (the rows' tails). */
static float exp_one(float x_init) {
    float x = x_init * LOG2E;
    /* MLX adds the double 0.5: the sum and its floor are taken in double. */
    float ipart = (float)floor((double)x + 0.5);
    float fpart = x - ipart;
    x = 1.535336188319500e-4f;
    x = fmaf(x, fpart, 1.339887440266574e-3f);
    x = fmaf(x, fpart, 9.618437357674640e-3f);
    x = fmaf(x, fpart, 5.550332471162809e-2f);
    x = fmaf(x, fpart, 2.402264791363012e-1f);
    x = fmaf(x, fpart, 6.931472028550421e-1f);
    x = fmaf(x, fpart, 1.000000000000000f);
    /* Clamped before the integer conversion: outside [-128, 128] the result is replaced
       below (|x_init| > 88), and the clamp keeps the conversion defined. */
    float clamped = ipart < -128.0f ? -128.0f : (ipart > 128.0f ? 128.0f : ipart);
    uint32_t bits = (uint32_t)((int32_t)clamped + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    float result = isnan(x_init) ? x_init : scale * x;
    result = x_init > 88.0f ? INFINITY : result;
    return x_init < -88.0f ? 0.0f : result;
}

/* The same for eight elements. */
static __m256 exp_eight(__m256 x_init) {
    __m256 x = _mm256_mul_ps(x_init, _mm256_set1_ps(LOG2E));
    const __m256d half = _mm256_set1_pd(0.5);
    __m256d low = _mm256_floor_pd(_mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(x)), half));
    __m256d high = _mm256_floor_pd(_mm256_add_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)), half));
    __m256 ipart = _mm256_set_m128(_mm256_cvtpd_ps(high), _mm256_cvtpd_ps(low));
    __m256 fpart = _mm256_sub_ps(x, ipart);
    x = _mm256_set1_ps(1.535336188319500e-4f);
    x = _mm256_fmadd_ps(x, fpart, _mm256_set1_ps(1.339887440266574e-3f));
    x = _mm256_fmadd_ps(x, fpart, _mm256_set1_ps(9.618437357674640e-3f));
    x = _mm256_fmadd_ps(x, fpart, _mm256_set1_ps(5.550332471162809e-2f));
    x = _mm256_fmadd_ps(x, fpart, _mm256_set1_ps(2.402264791363012e-1f));
    x = _mm256_fmadd_ps(x, fpart, _mm256_set1_ps(6.931472028550421e-1f));
    x = _mm256_fmadd_ps(x, fpart, _mm256_set1_ps(1.000000000000000f));
    __m256 clamped = _mm256_min_ps(_mm256_max_ps(ipart, _mm256_set1_ps(-128.0f)), _mm256_set1_ps(128.0f));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(clamped), _mm256_set1_epi32(127)), 23);
    __m256 result = _mm256_mul_ps(_mm256_castsi256_ps(bits), x);
    result = _mm256_blendv_ps(result, x_init, _mm256_cmp_ps(x_init, x_init, _CMP_UNORD_Q));
    result = _mm256_blendv_ps(result, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x_init, _mm256_set1_ps(88.0f), _CMP_GT_OQ));
    return _mm256_blendv_ps(result, _mm256_setzero_ps(), _mm256_cmp_ps(x_init, _mm256_set1_ps(-88.0f), _CMP_LT_OQ));
}

/* MLX's running maximum: each NaN seen replaces it and stays until the next (the last one
   wins); otherwise the largest value, which does not depend on the order of comparison. */
static float row_max(const float *row, int64_t n) {
    __m256 lanes = _mm256_set1_ps(-INFINITY);
    __m256 unordered = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 a = _mm256_loadu_ps(row + j);
        unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
        lanes = _mm256_max_ps(a, lanes);
    }
    float lane[8];
    _mm256_storeu_ps(lane, lanes);
    int nan = _mm256_movemask_ps(unordered) != 0;
    float m = -INFINITY;
    for (int k = 0; k < 8; k++) m = lane[k] > m ? lane[k] : m;
    for (; j < n; j++) {
        nan |= isnan(row[j]);
        m = row[j] > m ? row[j] : m;
    }
    if (nan)
        for (j = n - 1; j >= 0; j--)
            if (isnan(row[j])) return row[j];
    return m;
}

static void exps(float *row, int64_t n, float m) {
    __m256 shift = _mm256_set1_ps(m);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(row + j, exp_eight(_mm256_sub_ps(_mm256_loadu_ps(row + j), shift)));
    for (; j < n; j++) row[j] = exp_one(row[j] - m);
}

static void scale(float *row, int64_t n, float sum) {
    float factor = 1 / sum;
    __m256 f = _mm256_set1_ps(factor);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(row + j, _mm256_mul_ps(_mm256_loadu_ps(row + j), f));
    for (; j < n; j++) row[j] *= factor;
}

#define GROUP 8

/* `rows` rows of `n` contiguous floats at `data`, each replaced by its softmax. */
void mlxd_softmax_rows(float *data, int64_t rows, int64_t n) {
    for (int64_t first = 0; first < rows; first += GROUP) {
        int64_t count = rows - first < GROUP ? rows - first : GROUP;
        float *row[GROUP];
        float sum[GROUP];
        for (int64_t r = 0; r < count; r++) {
            row[r] = data + (first + r) * n;
            exps(row[r], n, row_max(row[r], n));
            sum[r] = 0.0f;
        }
        if (count == GROUP) {
            for (int64_t j = 0; j < n; j++)
                for (int r = 0; r < GROUP; r++) sum[r] += row[r][j];
        } else {
            for (int64_t r = 0; r < count; r++)
                for (int64_t j = 0; j < n; j++) sum[r] += row[r][j];
        }
        for (int64_t r = 0; r < count; r++) scale(row[r], n, sum[r]);
    }
}
