// diffGrad's fused CPU step (paper Eq. 11–20): one pass over each parameter and its state.
//
// Plain C++17 with a C ABI (loaded by diffgrad/optim/fused.py through ctypes, built there with
// g++ -O3 -march=native -fopenmp): raw pointers, element counts, format codes and scalars. No
// torch headers, so the build is one small translation unit that does not depend on how many
// tensors a model has.
//
// For every element, in the compute dtype T (double for float64 parameters, float otherwise):
//
//     g  = grad·grad_factor (+ λθ, coupled decay)     first = g·ratio (AdaNorm), AdaInject's form
//     θ ← θ·(1 − αλ)                                  decoupled decay
//     m  = β1·m + (1 − β1)·first                      Eq. 11
//     v  = β2·v + (1 − β2)·g²                         Eq. 12   (v_max = max(v_max, v): AMSGrad)
//     ξ  = scale·sigmoid(slope·h(g_prev − g)/d − offset) + shift   Eq. 17–19
//          d = 1, or sqrt(v̂) + ε for a relative friction (dfc-rms, docs/paper.md §10)
//     θ ← θ − s_t·ξ·m/(sqrt(v) + ε_t)                 Eq. 13, 20
//     g_prev ← g
//
// with s_t = α·r_t·sqrt(1 − β2^t)/(1 − β1^t) and ε_t = ε·sqrt(1 − β2^t), which equal α·m̂/(sqrt(v̂) + ε)
// up to round-off without a bias-correction pass; for the same reason a relative friction's slope
// takes the factor sqrt(1 − β2^t): slope·h/(sqrt(v̂) + ε) = slope·sqrt(1 − β2^t)·h/(sqrt(v) + ε_t).
// r_t and the warm-up's momentum step come from RAdam's rule when rectified, and cautious masking
// scales the update by a whole-tensor count (a counting pass before the step).
//
// Storage formats match diffgrad/optim/state.py bit for bit: a state buffer is a plain array in
// T, bfloat16 (round to nearest even, as torch's conversion), or 8-bit block-wise float8-e4m3fn
// codes of x/absmax·448 per 256 elements with a float32 absmax (x = sqrt(v) for second moments,
// whose decoded code is clamped to ≥ 2^−10 first).
//
// Work is split into items of whole 256-element blocks of one tensor, shared among OpenMP threads;
// inside an item the step runs block by block: buffers in T are read and written in place, other
// formats are decoded into block-sized arrays on the stack (in L1) and encoded back.

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kBlock = 256;               // the 8-bit block, and the unit of staging
constexpr int64_t kItemBlocks = 64;           // blocks per work item: 16384 elements
constexpr int64_t kPrefetchBlocks = 2;        // how far ahead the next blocks are requested
constexpr int64_t kSerialNumel = 1 << 15;     // below this many elements in all, one thread
constexpr float kCodeMax = 448.0f;            // largest finite float8-e4m3fn value
constexpr float kSqrtFloor = 0.0009765625f;   // 2^−10: what a zero code of sqrt(v) decodes to

enum Format : int32_t { kAbsent = 0, kFloat32 = 1, kFloat64 = 2, kBFloat16 = 3, kBlockwise8 = 4 };
enum Slot : int { kExpAvg, kExpAvgSq, kPreviousGrad, kMaxExpAvgSq, kPreviousParam, kSlots };
// Second moments are quantised as sqrt(v), halving their dynamic range (state.py).
constexpr bool kSqrtDomain[kSlots] = {false, true, false, true, false};

template <class To, class From>
inline To bit_cast(From from) {
  static_assert(sizeof(To) == sizeof(From));
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

// ---------------------------------------------------------------------------------------------
// Codecs, element by element (the loops that call them vectorise).

inline float bf16_to_float(uint16_t h) { return bit_cast<float>(static_cast<uint32_t>(h) << 16); }

// Round to nearest even, as c10::BFloat16 and torch's vectorised conversion; NaN becomes 0xffff
// as in the vectorised conversion, which every tensor of more than a few elements takes.
inline uint16_t float_to_bf16(float f) {
  const uint32_t u = bit_cast<uint32_t>(f);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return f != f ? uint16_t{0xffff} : static_cast<uint16_t>(rounded);
}

// c10's fp8e4m3fn_from_fp32_value: round to nearest even; magnitudes from 480 on (and NaN)
// become the NaN code 0x7f with the input's sign, as torch does (no saturation).
inline uint8_t float_to_e4m3(float f) {
  uint32_t bits = bit_cast<uint32_t>(f);
  const uint32_t sign = bits & 0x80000000u;
  bits ^= sign;
  constexpr uint32_t kMax = 1087u << 20;        // 480.0f
  constexpr uint32_t kDenormMask = 141u << 23;  // adds the implicit bits for subnormal codes
  // Under 2^−6 (the smallest normal code) a float addition rounds into the subnormal codes.
  const uint32_t subnormal = bit_cast<uint32_t>(bit_cast<float>(bits) + bit_cast<float>(kDenormMask)) - kDenormMask;
  const uint32_t normal = (bits + (static_cast<uint32_t>(7 - 127) << 23) + 0x7ffffu + ((bits >> 20) & 1u)) >> 20;
  uint32_t code = bits < (121u << 23) ? subnormal : normal;
  code = bits >= kMax ? 0x7fu : code;
  return static_cast<uint8_t>((code & 0xffu) | (sign >> 24));
}

inline float e4m3_to_float(uint8_t c) {
  const uint32_t magnitude = c & 0x7fu;
  // The code's bits with the exponent rebased from 7 to 127: exact for normal codes; a
  // subnormal code (exponent 0, value mantissa·2^−9) reads as 2^−7·(1 + mantissa/8) there, and
  // 2·that − 2^−6 is its value (one fused multiply-add, exact).
  const float rebased = bit_cast<float>((magnitude << 20) + (120u << 23));
  float x = magnitude < 8u ? std::fma(rebased, 2.0f, -0.015625f) : rebased;
  x = magnitude == 0x7fu ? std::numeric_limits<float>::quiet_NaN() : x;
  return bit_cast<float>(bit_cast<uint32_t>(x) | (static_cast<uint32_t>(c & 0x80u) << 24));
}

// The float32 bit pattern of the e4m3 code ``magnitude`` (0–127), as e4m3_to_float decodes it:
// only the upper 16 bits can be set (every e4m3 value, and its NaN, is a bfloat16 value).
constexpr uint32_t e4m3_bits(uint32_t magnitude) {
  if (magnitude == 0x7fu) return 0x7fc00000u;
  if (magnitude >= 8u) return (magnitude << 20) + (120u << 23);
  if (magnitude == 0u) return 0u;
  uint32_t top = 2;  // a subnormal code's value is magnitude·2^−9; normalised, 2^(top−9)·(1 + …)
  while (!(magnitude >> top)) --top;
  return ((127u + top - 9u) << 23) | ((magnitude - (1u << top)) << (23 - top));
}

struct E4m3Table {
  alignas(64) uint8_t high[128];  // bits 24–31 of e4m3_bits
  alignas(64) uint8_t low[128];   // bits 16–23
  alignas(64) uint8_t order[64];  // see decode_e4m3
};

constexpr E4m3Table make_e4m3_table() {
  E4m3Table table{};
  for (uint32_t m = 0; m < 128; ++m) {
    table.high[m] = static_cast<uint8_t>(e4m3_bits(m) >> 24);
    table.low[m] = static_cast<uint8_t>(e4m3_bits(m) >> 16);
  }
  // Position 16l + 4q + j (l, q, j < 4) takes code 16q + 4l + j, so that the byte and word
  // interleaves of decode_e4m3, which work within 128-bit lanes, leave the values in order.
  for (uint32_t l = 0; l < 4; ++l)
    for (uint32_t q = 0; q < 4; ++q)
      for (uint32_t j = 0; j < 4; ++j) table.order[16 * l + 4 * q + j] = static_cast<uint8_t>(16 * q + 4 * l + j);
  return table;
}

constexpr E4m3Table kE4m3 = make_e4m3_table();

// The values of n ≤ kBlock codes (e4m3_to_float of each) into ``out``, which has room for kBlock.
inline void decode_e4m3(const uint8_t* __restrict codes, int64_t n, float* __restrict out) {
#if defined(__AVX512VBMI__) && defined(__AVX512BW__)
  // Compiler workaround (GCC 12): GCC vectorises e4m3_to_float arithmetic in 32-bit lanes,
  // about ten operations per 16 codes; looking the two upper bytes of each value up in 128-entry
  // tables, 64 codes at a time (vpermi2b, AVX-512 VBMI), and interleaving them with zero bytes
  // gives the same bits with about a quarter of the operations.
  const __m512i high0 = _mm512_load_si512(kE4m3.high), high1 = _mm512_load_si512(kE4m3.high + 64);
  const __m512i low0 = _mm512_load_si512(kE4m3.low), low1 = _mm512_load_si512(kE4m3.low + 64);
  const __m512i order = _mm512_load_si512(kE4m3.order), sign = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t i = 0; i < n; i += 64) {
    const __mmask64 lanes = n - i >= 64 ? ~__mmask64{0} : (__mmask64{1} << (n - i)) - 1u;
    const __m512i index = _mm512_permutexvar_epi8(order, _mm512_maskz_loadu_epi8(lanes, codes + i));
    __m512i high = _mm512_permutex2var_epi8(high0, index, high1);
    high = _mm512_ternarylogic_epi32(high, index, sign, 0xf8);  // high | (index & sign)
    const __m512i low = _mm512_permutex2var_epi8(low0, index, low1);
    const __m512i words0 = _mm512_unpacklo_epi8(low, high), words1 = _mm512_unpackhi_epi8(low, high);
    _mm512_store_si512(out + i, _mm512_unpacklo_epi16(zero, words0));
    _mm512_store_si512(out + i + 16, _mm512_unpackhi_epi16(zero, words0));
    _mm512_store_si512(out + i + 32, _mm512_unpacklo_epi16(zero, words1));
    _mm512_store_si512(out + i + 48, _mm512_unpackhi_epi16(zero, words1));
  }
#else
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = e4m3_to_float(codes[i]);
#endif
}

// Decode one block of 8-bit codes (state.load): code·(absmax/448), squared for sqrt(v).
template <class T, bool kSqrtDomain>
void decode_block8(const uint8_t* __restrict codes, float absmax, int64_t n, T* __restrict out) {
  const float scale = absmax / kCodeMax;
  alignas(64) float decoded[kBlock];
  decode_e4m3(codes, n, decoded);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    float x = decoded[i];
    if constexpr (kSqrtDomain) {
      x = x < kSqrtFloor ? kSqrtFloor : x;  // clamp_min, which keeps NaN
      x *= scale;
      out[i] = static_cast<T>(x * x);
    } else {
      out[i] = static_cast<T>(x * scale);
    }
  }
}

// The largest |x| as the unsigned maximum of the bit patterns of |x|: the order of non-negative
// floats, with NaN above infinity, so that a NaN propagates as amax propagates it. An integer
// maximum vectorises as a plain reduction (a float one needs -ffinite-math-only, or an OpenMP
// reduction, which GCC 12 keeps in memory across iterations).
inline uint32_t abs_bits(float x) { return bit_cast<uint32_t>(x) & 0x7fffffffu; }

#if defined(__AVX512F__)
// float_to_e4m3 of 16 floats, in the low byte of each 32-bit lane (the upper bytes are left
// over). With E = max(⌊log2 |y|⌋, −6) and M = 2^(E+20), the codes around |y| are 2^(E−3) apart, M's
// unit in the last place, so the float addition |y| + M rounds |y| to the nearest even multiple k
// ≤ 16 of that spacing, and the code is (E + 6)·8 + k, subnormal codes (E = −6, k < 8) included.
// In the low byte the sum's bits are k (M's bits are a multiple of 2^23) plus the 56 units added
// to M (an even count, which keeps ties to even), and (E + 127)·8 + 56 ≡ (E + 6)·8 (mod 256). The
// same codes as float_to_e4m3 for every float32 input; without ``kNonFinite`` only for |y| under
// 480, where no lane takes the NaN code.
template <bool kNonFinite>
inline __m512i e4m3_codes(__m512 y) {
  const __m512i bits = _mm512_castps_si512(y);
  const __m512i magnitude = _mm512_and_si512(bits, _mm512_set1_epi32(0x7fffffff));
  const __m512i exponent =
      _mm512_max_epu32(_mm512_and_si512(bits, _mm512_set1_epi32(0x7f800000)), _mm512_set1_epi32(121 << 23));
  const __m512i magic = _mm512_add_epi32(exponent, _mm512_set1_epi32((20 << 23) + 56));
  const __m512i sum = _mm512_castps_si512(_mm512_add_ps(_mm512_castsi512_ps(magnitude), _mm512_castsi512_ps(magic)));
  __m512i code = _mm512_add_epi32(sum, _mm512_srli_epi32(exponent, 20));
  if constexpr (kNonFinite) {
    code = _mm512_mask_mov_epi32(code, _mm512_cmpge_epu32_mask(magnitude, _mm512_set1_epi32(1087 << 20)),
                                 _mm512_set1_epi32(0x7f));
  }
  // code | (sign bit → bit 7)
  return _mm512_ternarylogic_epi32(code, _mm512_srli_epi32(bits, 24), _mm512_set1_epi32(0x80), 0xf8);
}
#endif

// The codes of one block (state.store) from its float32 values x and their absmax = max |x|:
// (x·(1/max(absmax, FLT_MIN)))·448. Returns the absmax to store.
inline float write_codes8(const float* __restrict x, uint32_t absmax_bits, int64_t n, uint8_t* __restrict codes) {
  const float absmax = bit_cast<float>(absmax_bits);
  const float clamped = absmax < std::numeric_limits<float>::min() ? std::numeric_limits<float>::min() : absmax;
  const float inverse = 1.0f / clamped;
#if defined(__AVX512F__)
  // Compiler workaround (GCC 12): vectorising float_to_e4m3 into uint8 stores, GCC narrows each
  // intermediate to bytes before the selects (three permute-packs per 64 codes); written with
  // intrinsics (e4m3_codes), the work stays in 32-bit lanes and each 16 codes take one narrowing
  // store. With a finite absmax every |x|·(1/absmax)·448 is under 480: no NaN code to select.
  const __m512 scale_inverse = _mm512_set1_ps(inverse), code_max = _mm512_set1_ps(kCodeMax);
  const bool finite = absmax_bits < 0x7f800000u;
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 lanes = n - i >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (n - i)) - 1u);
    const __m512 f = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, x + i), scale_inverse), code_max);
    _mm512_mask_cvtepi32_storeu_epi8(codes + i, lanes, finite ? e4m3_codes<false>(f) : e4m3_codes<true>(f));
  }
#else
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) codes[i] = float_to_e4m3(x[i] * inverse * kCodeMax);
#endif
  return absmax;
}

// Encode one block: x = the values in float32 (sqrt(v) for second moments).
template <class T, bool kSqrtDomain>
float encode_block8(const T* __restrict values, int64_t n, uint8_t* __restrict codes) {
  alignas(64) float x[kBlock];
  uint32_t absmax = 0;
  for (int64_t i = 0; i < n; ++i) {
    float v = static_cast<float>(values[i]);
    if constexpr (kSqrtDomain) v = std::sqrt(v);
    x[i] = v;
    absmax = std::max(absmax, abs_bits(v));
  }
  return write_codes8(x, absmax, n, codes);
}

// ---------------------------------------------------------------------------------------------
// e^{−z} beside 1, without libm: 1 + e^{−z} = 1 + 2^{−n}·e^{−r}, n = round(z·log2 e),
// r = z − n·ln 2 ∈ [−ln2/2, ln2/2], e^{−r} from its Taylor polynomial (degree 7 for float, 13
// for double: truncation error under 2^−(p+3) relative, p the mantissa bits), 2^{−n} written
// into the exponent field. Above z = (p + 2)·ln 2, e^{−z} is under a quarter unit of 1, so z is
// clamped there; below −(bias − 2)·ln 2, 1 + e^{−z} would overflow, and there the logistic is
// under the smallest normal number, so z is clamped there too (unless ``kNonNegative``: the
// default friction's z = slope·|Δg| ≥ 0). NaN stays NaN.

template <class T>
struct FloatTraits;
template <>
struct FloatTraits<float> {
  using Bits = uint32_t;
  using Int = int32_t;
  static constexpr int kMantissa = 23;
  static constexpr int kBias = 127;
  static constexpr int kDegree = 7;
};
template <>
struct FloatTraits<double> {
  using Bits = uint64_t;
  using Int = int64_t;
  static constexpr int kMantissa = 52;
  static constexpr int kBias = 1023;
  static constexpr int kDegree = 13;
};

constexpr double inverse_factorial(int k) {
  double value = 1.0;
  for (int i = 2; i <= k; ++i) value /= i;
  return value;
}

// Σ_{k ≤ degree} x^k/k!, unrolled at compile time.
template <class T, int kDegree, int kFrom = kDegree>
inline T horner(T x) {
  if constexpr (kFrom == 0) {
    return static_cast<T>(inverse_factorial(kDegree));
  } else {
    constexpr T coefficient = static_cast<T>(inverse_factorial(kDegree - kFrom));
    return horner<T, kDegree, kFrom - 1>(x) * x + coefficient;
  }
}

template <class T, bool kNonNegative = false>
inline T one_plus_exp_neg(T z) {
  using F = FloatTraits<T>;
  constexpr T kLn2Hi = static_cast<T>(0.693145751953125);  // few bits: n·kLn2Hi is exact
  constexpr T kLn2Lo = static_cast<T>(1.4286068203094172321e-6);
  constexpr T kLog2E = static_cast<T>(1.4426950408889634074);
  constexpr T kHigh = static_cast<T>((F::kMantissa + 2) * 0.6931471805599453);
  constexpr T kLow = static_cast<T>(-(F::kBias - 2) * 0.6931471805599453);
  // Adding and subtracting 1.5·2^p rounds to the nearest integer (no -ffast-math here).
  constexpr T kShifter = static_cast<T>(1.5 * static_cast<double>(typename F::Bits{1} << F::kMantissa));
  z = z > kHigh ? kHigh : z;
  if constexpr (!kNonNegative) z = z < kLow ? kLow : z;
  const T n = (z * kLog2E + kShifter) - kShifter;
  const T minus_r = (n * kLn2Hi - z) + n * kLn2Lo;
  const T taylor = horner<T, F::kDegree>(minus_r);
  const auto exponent = static_cast<typename F::Bits>(F::kBias) - static_cast<typename F::Bits>(static_cast<typename F::Int>(n));
  return taylor * bit_cast<T>(exponent << F::kMantissa) + T(1);
}

// max as torch.maximum: NaN if either is NaN.
template <class T>
inline T nan_max(T a, T b) {
  const T larger = a > b ? a : b;
  return a != a ? a : larger;
}

// ---------------------------------------------------------------------------------------------
// One step's scalars for one tensor (Eq. 13/20), in double, and the element loops.

}  // namespace

extern "C" {

// A parameter group's hyper-parameters and options (one per call).
struct DgHyper {
  double lr, beta1, beta2, eps, weight_decay;
  double grad_factor;  // (−1 if maximize else 1)/AMP scale
  double friction_slope, friction_scale, friction_shift;
  double rectify_threshold, adainject_k;
  int32_t coupled_weight_decay;  // g += λθ (off when the caller passes effective gradients)
  int32_t decoupled_weight_decay;
  int32_t amsgrad;
  int32_t friction_absolute;  // h = |·|
  int32_t rectify;
  int32_t rectify_sgd_warmup;  // 1: θ ← θ − α·m̂ while ρ_t is under the threshold; 0: no update
  int32_t adainject;
  int32_t cautious;
  int32_t num_threads;
  int32_t friction_relative;  // h(Δg) divided by sqrt(v̂) + ε (dfc-rms)
};

// A parameter's state and layout. Pointers are contiguous arrays of ``numel`` real elements;
// ``param`` and ``grad`` are passed separately per call (a gradient may be new every step).
struct DgTensor {
  void* state[kSlots];     // exp_avg, exp_avg_sq, previous_grad, max_exp_avg_sq, previous_param
  float* absmax[kSlots];   // per 256-element block, for kBlockwise8 buffers
  float* step;             // the 0-dim float32 step counter, incremented here
  int64_t numel;
  int32_t param_format;    // kFloat32, kFloat64 or kBFloat16; T is double for kFloat64
  int32_t grad_format;     // the same choices
  int32_t state_format[kSlots];  // kAbsent, the compute dtype, kBFloat16 or kBlockwise8
  int32_t reserved;
};

// Per-tensor values that the caller computes from whole-tensor statistics (or NULL: the
// defaults 1, the group's slope, 0).
struct DgTensorScalars {
  double ratio;   // AdaNorm: first = g·ratio
  double slope;   // friction slope (DFC3–5: from ν)
  double offset;  // friction offset (DFC3–5: μ)
};

}  // extern "C"

namespace {

struct Coefficients {
  double grad_factor, weight_decay, decay, beta1, lerp1, beta2, lerp2, eps, step_size, momentum_step, inject_scale;
  double ratio, slope, offset, scale, shift;
  double cautious_scale;  // N/(Σmask + 1), from the counting pass
};

// Eq. 13/20 at step t, as the reference paths (diffgrad/optim/functional.py) compute them in Python
// floats (the same libm pow, the same order of operations); the rectification is RAdam's rule
// (modifiers.rectification).
Coefficients coefficients_at(const DgHyper& h, double t, const DgTensorScalars* scalars) {
  Coefficients c{};
  const double bias_correction1 = 1.0 - std::pow(h.beta1, t);
  const double bias_correction2_sqrt = std::pow(1.0 - std::pow(h.beta2, t), 0.5);
  double ratio = 1.0, warm = 0.0;
  if (h.rectify) {
    const double rho_inf = 2.0 / (1.0 - h.beta2) - 1.0;
    const double beta2_t = std::pow(h.beta2, t);
    const double rho_t = rho_inf - 2.0 * t * beta2_t / (1.0 - beta2_t);
    if (rho_t >= h.rectify_threshold) {
      const double ratio_squared = (rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t);
      ratio = std::pow(ratio_squared, 0.5);
    } else {
      ratio = 0.0;
      warm = h.rectify_sgd_warmup ? 1.0 : 0.0;
    }
  }
  c.grad_factor = h.grad_factor;
  c.weight_decay = h.weight_decay;
  c.decay = h.decoupled_weight_decay ? 1.0 - h.lr * h.weight_decay : 1.0;
  c.beta1 = h.beta1;
  c.lerp1 = 1.0 - h.beta1;
  c.beta2 = h.beta2;
  c.lerp2 = 1.0 - h.beta2;
  c.eps = h.eps * bias_correction2_sqrt;
  c.step_size = h.lr * ratio * bias_correction2_sqrt / bias_correction1;
  c.momentum_step = h.lr * warm / bias_correction1;
  c.inject_scale = h.adainject && t > 1.0 ? 1.0 / h.adainject_k : 1.0;
  c.ratio = scalars ? scalars->ratio : 1.0;
  c.slope = (scalars ? scalars->slope : h.friction_slope) * (h.friction_relative ? bias_correction2_sqrt : 1.0);
  c.offset = scalars ? scalars->offset : 0.0;
  c.scale = h.friction_scale;
  c.shift = h.friction_shift;
  c.cautious_scale = 1.0;
  return c;
}

// The same scalars rounded to T once, as the eager path's Python floats become tensor scalars.
template <class T>
struct Scalars {
  T grad_factor, weight_decay, decay, beta1, lerp1, beta2, lerp2, eps, step_size, momentum_step, inject_scale;
  T ratio, slope, offset, scale, shift, cautious_scale;
  explicit Scalars(const Coefficients& c)
      : grad_factor(c.grad_factor), weight_decay(c.weight_decay), decay(c.decay), beta1(c.beta1), lerp1(c.lerp1),
        beta2(c.beta2), lerp2(c.lerp2), eps(c.eps), step_size(c.step_size), momentum_step(c.momentum_step),
        inject_scale(c.inject_scale), ratio(c.ratio), slope(c.slope), offset(c.offset), scale(c.scale),
        shift(c.shift), cautious_scale(c.cautious_scale) {}
};

// The arrays one block's step works on, all in T (in place, or staged on the stack).
template <class T>
struct Block {
  T* param;
  const T* grad;
  T* state[kSlots];
};

// The default step (friction ξ = sigmoid(slope·|Δg|) with slope ≥ 0, or its relative form
// sigmoid(slope·|Δg|/(sqrt(v) + ε_t)); no modifier): ξ enters as the divisor 1 + e^{−z}, so the
// update takes one division, θ − s_t·m/((sqrt(v) + ε_t)(1 + e^{−z})).
template <class T, bool kCoupled, bool kAmsgrad, bool kRelative>
void plain_loop(int64_t n, const Scalars<T>& c, const Block<T>& b) {
  T* __restrict p = b.param;
  const T* __restrict grad = b.grad;
  T* __restrict m = b.state[kExpAvg];
  T* __restrict v = b.state[kExpAvgSq];
  T* __restrict prev = b.state[kPreviousGrad];
  T* __restrict vmax = b.state[kMaxExpAvgSq];
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T theta = p[i];
    T g = grad[i] * c.grad_factor;
    if constexpr (kCoupled) g = std::fma(c.weight_decay, theta, g);
    const T m_t = std::fma(c.beta1, m[i], c.lerp1 * g);       // Eq. 11
    T v_t = std::fma(c.beta2, v[i], c.lerp2 * (g * g));       // Eq. 12
    m[i] = m_t;
    v[i] = v_t;
    if constexpr (kAmsgrad) {
      v_t = nan_max(vmax[i], v_t);
      vmax[i] = v_t;
    }
    const T root_eps = std::sqrt(v_t) + c.eps;
    T z = std::fabs(prev[i] - g) * c.slope;                   // Eq. 17–19
    if constexpr (kRelative) z /= root_eps;
    prev[i] = g;
    const T denominator = root_eps * one_plus_exp_neg<T, true>(z);
    p[i] = theta * c.decay - c.step_size * m_t / denominator;  // Eq. 13, 20
  }
}

// plain_loop with float arithmetic and every state buffer 8-bit: the codes are decoded into arrays
// on the stack, then the step taken and the blocks' maxima found in one loop, whose sqrt(v) (and
// sqrt(v_max)) serve both the denominator and the encoding; then the codes are written. Decoding
// inside the step's loop, GCC 12 vectorises it in 64 lanes (the codes' bytes), spilling registers
// every iteration; on decoded floats it takes 16 lanes, held in registers. The values are those of decoding into
// arrays, plain_loop and encode_block8 in turn.
template <bool kCoupled, bool kAmsgrad, bool kRelative>
void plain_loop_blockwise8(int64_t n, const Scalars<float>& c, float* __restrict p, const float* __restrict grad,
                           const DgTensor& t, int64_t lo) {
  const int64_t block = lo / kBlock;
  const uint8_t* __restrict m_codes = static_cast<const uint8_t*>(t.state[kExpAvg]) + lo;
  const uint8_t* __restrict v_codes = static_cast<const uint8_t*>(t.state[kExpAvgSq]) + lo;
  const uint8_t* __restrict prev_codes = static_cast<const uint8_t*>(t.state[kPreviousGrad]) + lo;
  const uint8_t* __restrict vmax_codes = static_cast<const uint8_t*>(t.state[kMaxExpAvgSq]) + lo;
  const float m_scale = t.absmax[kExpAvg][block] / kCodeMax;
  const float v_scale = t.absmax[kExpAvgSq][block] / kCodeMax;
  const float prev_scale = t.absmax[kPreviousGrad][block] / kCodeMax;
  const float vmax_scale = kAmsgrad ? t.absmax[kMaxExpAvgSq][block] / kCodeMax : 0.0f;
  alignas(64) float m_old[kBlock], v_old[kBlock], prev_old[kBlock], vmax_old[kBlock];
  decode_e4m3(m_codes, n, m_old);
  decode_e4m3(v_codes, n, v_old);
  decode_e4m3(prev_codes, n, prev_old);
  if constexpr (kAmsgrad) decode_e4m3(vmax_codes, n, vmax_old);
  alignas(64) float m_new[kBlock], v_root[kBlock], g_new[kBlock], vmax_root[kBlock];
  uint32_t m_absmax = 0, v_absmax = 0, g_absmax = 0, vmax_absmax = 0;
#pragma omp simd reduction(max : m_absmax, v_absmax, g_absmax, vmax_absmax)
  for (int64_t i = 0; i < n; ++i) {
    const float theta = p[i];
    float g = grad[i] * c.grad_factor;
    if constexpr (kCoupled) g = std::fma(c.weight_decay, theta, g);
    float root = v_old[i];
    root = (root < kSqrtFloor ? kSqrtFloor : root) * v_scale;
    const float m_t = std::fma(c.beta1, m_old[i] * m_scale, c.lerp1 * g);  // Eq. 11
    const float v_t = std::fma(c.beta2, root * root, c.lerp2 * (g * g));   // Eq. 12
    root = std::sqrt(v_t);
    v_root[i] = root;
    v_absmax = std::max(v_absmax, abs_bits(root));
    if constexpr (kAmsgrad) {
      float root_max = vmax_old[i];
      root_max = (root_max < kSqrtFloor ? kSqrtFloor : root_max) * vmax_scale;
      root = std::sqrt(nan_max(root_max * root_max, v_t));
      vmax_root[i] = root;
      vmax_absmax = std::max(vmax_absmax, abs_bits(root));
    }
    const float root_eps = root + c.eps;
    float z = std::fabs(prev_old[i] * prev_scale - g) * c.slope;  // Eq. 17–19
    if constexpr (kRelative) z /= root_eps;
    const float denominator = root_eps * one_plus_exp_neg<float, true>(z);
    p[i] = theta * c.decay - c.step_size * m_t / denominator;  // Eq. 13, 20
    m_new[i] = m_t;
    g_new[i] = g;
    m_absmax = std::max(m_absmax, abs_bits(m_t));
    g_absmax = std::max(g_absmax, abs_bits(g));
  }
  auto write = [&](int slot, const float* x, uint32_t absmax) {
    t.absmax[slot][block] = write_codes8(x, absmax, n, static_cast<uint8_t*>(t.state[slot]) + lo);
  };
  write(kExpAvg, m_new, m_absmax);
  write(kExpAvgSq, v_root, v_absmax);
  write(kPreviousGrad, g_new, g_absmax);
  if constexpr (kAmsgrad) write(kMaxExpAvgSq, vmax_root, vmax_absmax);
}

// Every friction variant and modifier: ξ = scale·sigmoid(z) + shift, z = slope·h(Δg)/d − offset;
// AdaNorm's ratio and AdaInject's form on the first moment's input; θ − (ξ·s_t/(sqrt(v) + ε_t)
// + the rectified warm-up's step)·m, masked as cautious asks. Returns the count of elements
// whose update agrees in sign with g (cautious masking's Σmask).
template <class T, bool kAmsgrad, bool kInject, bool kRelative>
int64_t general_loop(int64_t n, const Scalars<T>& c, const DgHyper& h, const Block<T>& b) {
  T* __restrict p = b.param;
  const T* __restrict grad = b.grad;
  T* __restrict m = b.state[kExpAvg];
  T* __restrict v = b.state[kExpAvgSq];
  T* __restrict prev = b.state[kPreviousGrad];
  T* __restrict vmax = b.state[kMaxExpAvgSq];
  T* __restrict previous_param = b.state[kPreviousParam];
  const bool coupled = h.coupled_weight_decay, absolute = h.friction_absolute, cautious = h.cautious;
  int64_t agree = 0;
#pragma omp simd reduction(+ : agree)
  for (int64_t i = 0; i < n; ++i) {
    const T theta = p[i];
    T g = grad[i] * c.grad_factor;
    g = coupled ? std::fma(c.weight_decay, theta, g) : g;
    T first = g * c.ratio;
    if constexpr (kInject) {
      // Δθ = θ_{t−1} − θ_t, taken before the step moves θ; θ_{t−1} then takes θ_t.
      const T change = previous_param[i] - theta;
      previous_param[i] = theta;
      first = (first + change * (first * first)) * c.inject_scale;
    }
    const T m_t = std::fma(c.beta1, m[i], c.lerp1 * first);   // Eq. 11
    T v_t = std::fma(c.beta2, v[i], c.lerp2 * (g * g));       // Eq. 12
    m[i] = m_t;
    v[i] = v_t;
    if constexpr (kAmsgrad) {
      v_t = nan_max(vmax[i], v_t);
      vmax[i] = v_t;
    }
    const T root_eps = std::sqrt(v_t) + c.eps;
    const T change = prev[i] - g;                             // Eq. 17
    prev[i] = g;
    T h_change = absolute ? std::fabs(change) : change;
    if constexpr (kRelative) h_change /= root_eps;
    const T z = std::fma(h_change, c.slope, -c.offset);
    const T xi = std::fma(T(1) / one_plus_exp_neg(z), c.scale, c.shift);  // Eq. 18–19
    T update = std::fma(xi / root_eps, c.step_size, c.momentum_step) * m_t;
    const bool agrees = update * g > T(0);
    agree += agrees;
    update = cautious ? update * (agrees ? c.cautious_scale : T(0)) : update;
    p[i] = theta * c.decay - update;                          // Eq. 13, 20
  }
  return agree;
}

template <class T>
using PlainLoop = void (*)(int64_t, const Scalars<T>&, const Block<T>&);
template <class T>
using GeneralLoop = int64_t (*)(int64_t, const Scalars<T>&, const DgHyper&, const Block<T>&);
using Fused8 = void (*)(int64_t, const Scalars<float>&, float*, const float*, const DgTensor&, int64_t);

// The loops' instances for the options of a call: each option a template parameter, so that no
// loop tests an option that is off element by element.
template <class T, bool kRelative>
PlainLoop<T> plain_loop_for(bool coupled, bool amsgrad) {
  return coupled ? (amsgrad ? plain_loop<T, true, true, kRelative> : plain_loop<T, true, false, kRelative>)
                 : (amsgrad ? plain_loop<T, false, true, kRelative> : plain_loop<T, false, false, kRelative>);
}

template <class T, bool kRelative>
GeneralLoop<T> general_loop_for(bool amsgrad, bool inject) {
  return amsgrad ? (inject ? general_loop<T, true, true, kRelative> : general_loop<T, true, false, kRelative>)
                 : (inject ? general_loop<T, false, true, kRelative> : general_loop<T, false, false, kRelative>);
}

template <bool kRelative>
Fused8 plain_loop_blockwise8_for(bool coupled, bool amsgrad) {
  return coupled ? (amsgrad ? plain_loop_blockwise8<true, true, kRelative> : plain_loop_blockwise8<true, false, kRelative>)
                 : (amsgrad ? plain_loop_blockwise8<false, true, kRelative> : plain_loop_blockwise8<false, false, kRelative>);
}

// ---------------------------------------------------------------------------------------------
// Loading and storing one block of a buffer in T.

template <class T>
constexpr int32_t kComputeFormat = std::is_same_v<T, double> ? kFloat64 : kFloat32;

// The block's values in T: the buffer itself when it holds T (unless ``copy``), else decoded
// into ``scratch``.
template <class T>
T* load_block(int32_t format, void* data, const float* absmax, bool sqrt_domain, int64_t lo, int64_t n, bool copy,
              T* scratch) {
  switch (format) {
    case kBFloat16: {
      const uint16_t* __restrict src = static_cast<const uint16_t*>(data) + lo;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) scratch[i] = static_cast<T>(bf16_to_float(src[i]));
      return scratch;
    }
    case kBlockwise8:
      if (sqrt_domain) {
        decode_block8<T, true>(static_cast<const uint8_t*>(data) + lo, absmax[lo / kBlock], n, scratch);
      } else {
        decode_block8<T, false>(static_cast<const uint8_t*>(data) + lo, absmax[lo / kBlock], n, scratch);
      }
      return scratch;
    default: {
      T* values = static_cast<T*>(data) + lo;
      if (!copy) return values;
      std::memcpy(scratch, values, n * sizeof(T));
      return scratch;
    }
  }
}

// Write a staged block back in its format (buffers in T were updated in place).
template <class T>
void store_block(int32_t format, void* data, float* absmax, bool sqrt_domain, int64_t lo, int64_t n,
                 const T* __restrict values) {
  if (format == kBFloat16) {
    uint16_t* __restrict dst = static_cast<uint16_t*>(data) + lo;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) dst[i] = float_to_bf16(static_cast<float>(values[i]));
  } else if (format == kBlockwise8) {
    uint8_t* codes = static_cast<uint8_t*>(data) + lo;
    absmax[lo / kBlock] = sqrt_domain ? encode_block8<T, true>(values, n, codes) : encode_block8<T, false>(values, n, codes);
  }
}

// Requests the elements [lo, lo + n) of an array into the cache ahead of use: between a block's
// loads come its decoding and encoding, while which the hardware prefetcher alone lets the
// next block's streams fall behind.
inline void prefetch(int32_t format, const void* data, int64_t lo, int64_t n) {
  const int64_t bytes = format == kFloat64 ? 8 : format == kFloat32 ? 4 : format == kBFloat16 ? 2 : format == kBlockwise8 ? 1 : 0;
  const char* begin = static_cast<const char*>(data) + lo * bytes;
  for (int64_t offset = 0; offset < n * bytes; offset += 64) __builtin_prefetch(begin + offset, 1, 3);
}

enum class Pass { kStep, kCount };

// The step on elements [lo, hi) of one tensor (lo a multiple of kBlock). Pass::kCount only
// counts cautious masking's agreeing elements: everything is staged and nothing is stored.
template <class T>
int64_t step_range(const DgHyper& h, const DgTensor& t, void* param, const void* grad, const Coefficients& coefficients,
                   int64_t lo, int64_t hi, Pass pass) {
  const Scalars<T> c(coefficients);
  const bool count = pass == Pass::kCount;
  const bool amsgrad = t.state_format[kMaxExpAvgSq] != kAbsent;
  const bool inject = t.state_format[kPreviousParam] != kAbsent;
  const bool general = h.rectify || h.cautious || inject || !h.friction_absolute || coefficients.ratio != 1.0 ||
                       coefficients.scale != 1.0 || coefficients.shift != 0.0 || coefficients.offset != 0.0 ||
                       !(coefficients.slope >= 0.0);
  const PlainLoop<T> plain = h.friction_relative ? plain_loop_for<T, true>(h.coupled_weight_decay, amsgrad)
                                                 : plain_loop_for<T, false>(h.coupled_weight_decay, amsgrad);
  const GeneralLoop<T> general_step = h.friction_relative ? general_loop_for<T, true>(amsgrad, inject)
                                                          : general_loop_for<T, false>(amsgrad, inject);
  // The default step on float32 parameters with 8-bit state: decoding and encoding fused with it.
  bool fused8 = false;
  if constexpr (std::is_same_v<T, float>) {
    fused8 = !general && !count && t.param_format == kFloat32 && t.grad_format == kFloat32 &&
             t.state_format[kExpAvg] == kBlockwise8 && t.state_format[kExpAvgSq] == kBlockwise8 &&
             t.state_format[kPreviousGrad] == kBlockwise8 && (!amsgrad || t.state_format[kMaxExpAvgSq] == kBlockwise8);
  }
  const Fused8 plain8 = h.friction_relative ? plain_loop_blockwise8_for<true>(h.coupled_weight_decay, amsgrad)
                                            : plain_loop_blockwise8_for<false>(h.coupled_weight_decay, amsgrad);
  alignas(64) T scratch[kSlots + 2][kBlock];
  int64_t agree = 0;
  for (int64_t i = lo; i < hi; i += kBlock) {
    const int64_t n = std::min(kBlock, hi - i);
    const int64_t ahead = i + kPrefetchBlocks * kBlock;
    if (ahead < hi) {
      const int64_t m = std::min(kBlock, hi - ahead);
      prefetch(t.param_format, param, ahead, m);
      prefetch(t.grad_format, grad, ahead, m);
      for (int s = 0; s < kSlots; ++s) prefetch(t.state_format[s], t.state[s], ahead, m);
    }
    if constexpr (std::is_same_v<T, float>) {
      if (fused8) {
        plain8(n, c, static_cast<float*>(param) + i, static_cast<const float*>(grad) + i, t, i);
        continue;
      }
    }
    Block<T> b{};
    b.param = load_block<T>(t.param_format, param, nullptr, false, i, n, count, scratch[kSlots]);
    b.grad = load_block<T>(t.grad_format, const_cast<void*>(grad), nullptr, false, i, n, false, scratch[kSlots + 1]);
    for (int s = 0; s < kSlots; ++s) {
      if (t.state_format[s] != kAbsent) {
        b.state[s] = load_block<T>(t.state_format[s], t.state[s], t.absmax[s], kSqrtDomain[s], i, n, count, scratch[s]);
      }
    }
    if (general) {
      agree += general_step(n, c, h, b);
    } else {
      plain(n, c, b);
    }
    if (count) continue;
    store_block<T>(t.param_format, param, nullptr, false, i, n, b.param);
    for (int s = 0; s < kSlots; ++s) {
      store_block<T>(t.state_format[s], t.state[s], t.absmax[s], kSqrtDomain[s], i, n, b.state[s]);
    }
  }
  return agree;
}

int64_t run_item(const DgHyper& h, const DgTensor& t, void* param, const void* grad, const Coefficients& c, int64_t lo,
                 int64_t hi, Pass pass) {
  return t.param_format == kFloat64 ? step_range<double>(h, t, param, grad, c, lo, hi, pass)
                                    : step_range<float>(h, t, param, grad, c, lo, hi, pass);
}

struct Item {
  int64_t tensor, lo, hi;
};

}  // namespace

extern "C" {

// One step of every tensor: increments each ``step`` counter, then updates parameters and state
// in place. ``params[i]``/``grads[i]`` are tensor i's contiguous arrays; ``scalars`` is NULL or
// holds one DgTensorScalars per tensor. The caller skips the call when AMP found non-finite
// gradients.
void dg_step(const DgHyper* hyper, const DgTensor* tensors, int64_t count, void* const* params,
             const void* const* grads, const DgTensorScalars* scalars) {
  const DgHyper& h = *hyper;
  std::vector<Coefficients> coefficients(count);
  std::vector<Item> items;
  int64_t total = 0;
  for (int64_t i = 0; i < count; ++i) {
    const DgTensor& t = tensors[i];
    *t.step += 1.0f;  // float32, as the eager path's counter
    coefficients[i] = coefficients_at(h, *t.step, scalars ? scalars + i : nullptr);
    for (int64_t lo = 0; lo < t.numel; lo += kItemBlocks * kBlock) {
      items.push_back({i, lo, std::min(t.numel, lo + kItemBlocks * kBlock)});
    }
    total += t.numel;
  }
  const int64_t n_items = static_cast<int64_t>(items.size());
  const bool parallel = total >= kSerialNumel && h.num_threads > 1 && n_items > 1;
  const int threads = std::max(1, h.num_threads);
  if (h.cautious) {
    // Cautious masking scales each tensor's update by N/(Σmask + 1): a counting pass first.
    std::vector<int64_t> agree(count, 0);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (parallel)
    for (int64_t k = 0; k < n_items; ++k) {
      const Item& it = items[k];
      const int64_t n = run_item(h, tensors[it.tensor], params[it.tensor], grads[it.tensor], coefficients[it.tensor],
                                 it.lo, it.hi, Pass::kCount);
#pragma omp atomic
      agree[it.tensor] += n;
    }
    for (int64_t i = 0; i < count; ++i) {
      // N/(Σmask + 1) in T, as the eager path's tensor arithmetic.
      coefficients[i].cautious_scale =
          tensors[i].param_format == kFloat64
              ? static_cast<double>(tensors[i].numel) / (static_cast<double>(agree[i]) + 1.0)
              : static_cast<double>(static_cast<float>(tensors[i].numel) / (static_cast<float>(agree[i]) + 1.0f));
    }
  }
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (parallel)
  for (int64_t k = 0; k < n_items; ++k) {
    const Item& it = items[k];
    run_item(h, tensors[it.tensor], params[it.tensor], grads[it.tensor], coefficients[it.tensor], it.lo, it.hi,
             Pass::kStep);
  }
}

// The codecs on their own, for checking them against torch (diffgrad.optim.state).
void dg_encode_blockwise8(const float* values, int64_t numel, int32_t sqrt_domain, uint8_t* codes, float* absmax) {
  for (int64_t lo = 0; lo < numel; lo += kBlock) {
    const int64_t n = std::min(kBlock, numel - lo);
    absmax[lo / kBlock] = sqrt_domain ? encode_block8<float, true>(values + lo, n, codes + lo)
                                      : encode_block8<float, false>(values + lo, n, codes + lo);
  }
}

void dg_decode_blockwise8(const uint8_t* codes, const float* absmax, int64_t numel, int32_t sqrt_domain, float* values) {
  for (int64_t lo = 0; lo < numel; lo += kBlock) {
    const int64_t n = std::min(kBlock, numel - lo);
    if (sqrt_domain) {
      decode_block8<float, true>(codes + lo, absmax[lo / kBlock], n, values + lo);
    } else {
      decode_block8<float, false>(codes + lo, absmax[lo / kBlock], n, values + lo);
    }
  }
}

void dg_encode_bfloat16(const float* values, int64_t numel, uint16_t* out) {
#pragma omp simd
  for (int64_t i = 0; i < numel; ++i) out[i] = float_to_bf16(values[i]);
}

}  // extern "C"
