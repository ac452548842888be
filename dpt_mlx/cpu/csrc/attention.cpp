// Fused multi-head attention: per (batch, head, block of query rows), the scores of a block of
// keys come from the BLAS, the softmax is taken online (running max and sum, vectorised exp),
// and the probabilities multiply the values before the next key block, so no (N, N) score
// matrix is ever stored. Parallel over heads and query blocks. An additive bias is either dense
// (broadcast to (B, H, Nq, Nk)) or gathered while it is added from a small per-head table by an
// (Nq, Nk) index (BEiT's relative positions), so its (H, Nq, Nk) expansion is never built.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"

#include "kernels.h"
#include "tiles.h"
#include "vec.h"

namespace dpt {

namespace {

constexpr int64_t kScoreFloats = int64_t(1) << 15;  // a block's scores (512 KiB) stay in L2 with its keys

// Query rows per block: as many as keep the block's scores within kScoreFloats (a multiple of 8,
// 32 to 256).
int64_t query_block(int64_t keys) { return std::clamp<int64_t>(kScoreFloats / std::max<int64_t>(keys, 1) / 8 * 8, 32, 256); }
constexpr int64_t kKeyBlock = 512;  // keys per block when there are more than kWholeKeys
constexpr int64_t kWholeKeys = 2048;

struct View {  // a 4-D float array by element strides (0 where broadcast)
  const float* data;
  int64_t sb, sh, sn, sd;
};

// Where a score block's bias comes from: nothing, a dense view, or table[h][index[i][j]].
struct Bias {
  enum Kind { kNone, kDense, kTable } kind = kNone;
  View dense{};
  const float* table = nullptr;  // (H, R)
  int64_t entries = 0;           // R
  const int32_t* index = nullptr;  // (Nq, Nk)
};

View view_of(const mx::array& a) {
  auto st = a.strides();
  auto sh = a.shape();
  auto stride = [&](int i) -> int64_t { return sh[i] == 1 ? 0 : st[i]; };
  return {a.data<float>(), stride(0), stride(1), stride(2), stride(3)};
}

DPT_CLONES float row_max(const float* si, int64_t nk) {
  vf vm = splat(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + kLanes <= nk; j += kLanes) vm = vmax(vm, load(si + j));
  float mx_ = hmax(vm);
  for (; j < nk; ++j) mx_ = si[j] > mx_ ? si[j] : mx_;
  return mx_;
}

// Online-softmax update of one block of scores s (rows x nk, row stride nk) whose row maxima are
// `rowmax` (nullptr: found here): on return s holds exp(s - new max), acc rows are rescaled to the
// new max, m and l are updated.
DPT_CLONES void softmax_block(float* s, int64_t rows, int64_t nk, const float* rowmax, float* m, float* l,
                              float* acc, int64_t d, bool first) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < rows; ++i) {
    float* si = s + i * nk;
    float mx_ = rowmax ? rowmax[i] : row_max(si, nk);
    float m_old = first ? neg_inf : m[i];
    float m_new = mx_ > m_old ? mx_ : m_old;
    float shift = m_new == neg_inf ? 0.f : m_new;  // a row masked so far: exp(-inf) = 0
    vf sum = splat(0.f);
    int64_t j = 0;
    for (; j + kLanes <= nk; j += kLanes) {
      vf e = vexp(load(si + j) - shift);
      store(si + j, e);
      sum += e;
    }
    float total = hsum(sum);
    for (; j < nk; ++j) {
      float e = vexp(splat(si[j] - shift))[0];
      si[j] = e;
      total += e;
    }
    if (first) {
      l[i] = total;
    } else {
      float corr = vexp(splat(m_old - shift))[0];
      l[i] = l[i] * corr + total;
      float* ai = acc + i * d;
      for (int64_t c = 0; c < d; ++c) ai[c] *= corr;
    }
    m[i] = m_new;
  }
}

// s += bias, and rowmax = the rows' maxima after it.
DPT_CLONES void add_bias_block(float* s, int64_t rows, int64_t nk, const float* bias, int64_t row_stride,
                               float* rowmax) {
  for (int64_t i = 0; i < rows; ++i) {
    float* si = s + i * nk;
    const float* bi = bias + i * row_stride;
    vf vm = splat(-std::numeric_limits<float>::infinity());
    int64_t j = 0;
    for (; j + kLanes <= nk; j += kLanes) {
      vf x = load(si + j) + load(bi + j);
      store(si + j, x);
      vm = vmax(vm, x);
    }
    float mx_ = hmax(vm);
    for (; j < nk; ++j) {
      si[j] += bi[j];
      mx_ = si[j] > mx_ ? si[j] : mx_;
    }
    rowmax[i] = mx_;
  }
}

// s[i][j] += table[index[i][j]], an index outside [0, entries) clamped to it (never read outside),
// and rowmax = the rows' maxima after it. The compilers do not vectorise the gather by themselves;
// AVX-512 has one.
#if defined(__x86_64__)
__attribute__((target("avx512f"))) void add_table_block_avx512(float* s, int64_t rows, int64_t nk,
                                                               const float* table, int32_t entries,
                                                               const int32_t* index, int64_t row_stride,
                                                               float* rowmax) {
  const __m512i lo = _mm512_setzero_si512(), hi = _mm512_set1_epi32(entries - 1);
  for (int64_t i = 0; i < rows; ++i) {
    float* si = s + i * nk;
    const int32_t* ii = index + i * row_stride;
    __m512 vm = _mm512_set1_ps(-__builtin_inff());
    int64_t j = 0;
    for (; j + 16 <= nk; j += 16) {
      __m512i at = _mm512_min_epi32(_mm512_max_epi32(_mm512_loadu_si512(ii + j), lo), hi);
      __m512 x = _mm512_add_ps(_mm512_loadu_ps(si + j), _mm512_i32gather_ps(at, table, 4));
      _mm512_storeu_ps(si + j, x);
      vm = _mm512_max_ps(vm, x);
    }
    float mx_ = _mm512_reduce_max_ps(vm);
    for (; j < nk; ++j) {
      si[j] += table[std::clamp(ii[j], 0, entries - 1)];
      mx_ = si[j] > mx_ ? si[j] : mx_;
    }
    rowmax[i] = mx_;
  }
}
#endif

void add_table_block(float* s, int64_t rows, int64_t nk, const float* table, int32_t entries, const int32_t* index,
                     int64_t row_stride, float* rowmax) {
#if defined(__x86_64__)
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  if (avx512) return add_table_block_avx512(s, rows, nk, table, entries, index, row_stride, rowmax);
#endif
  for (int64_t i = 0; i < rows; ++i) {
    float* si = s + i * nk;
    const int32_t* ii = index + i * row_stride;
    for (int64_t j = 0; j < nk; ++j) si[j] += table[std::clamp(ii[j], 0, entries - 1)];
    rowmax[i] = row_max(si, nk);
  }
}

void attention_task(const View& q, const View& k, const View& v, const Bias& bias, float* out, int64_t heads,
                    int64_t nq, int64_t nk, int64_t d, float scale, int64_t b, int64_t h, int64_t r0, uint64_t call,
                    int64_t block) {
  int64_t rows = std::min(block, nq - r0);
  int64_t kb_size = nk <= kWholeKeys ? nk : kKeyBlock;
  float* s = scratch(0, size_t(block * kb_size));
  float* acc = scratch(1, size_t(block * d));
  float* m = scratch(2, size_t(block));
  float* l = scratch(3, size_t(block));
  float* rowmax = scratch(4, size_t(block));
  const float* qp = q.data + b * q.sb + h * q.sh + r0 * q.sn;
  const bool tiles = tiles_apply(d);
  for (int64_t k0 = 0; k0 < nk; k0 += kb_size) {
    int64_t n = std::min(kb_size, nk - k0);
    const float* kp = k.data + b * k.sb + h * k.sh + k0 * k.sn;
    if (tiles)
      score_tiles(s, qp, q.sn, kp, k.sn, rows, n, d, scale, TileKey{call, b * heads + h, k0}, rowmax);
    else
      sgemm(false, true, rows, n, d, scale, qp, q.sn, kp, k.sn, 0.f, s, n);
    if (bias.kind == Bias::kDense) {
      const View& bv = bias.dense;
      add_bias_block(s, rows, n, bv.data + b * bv.sb + h * bv.sh + r0 * bv.sn + k0 * bv.sd, bv.sn, rowmax);
    } else if (bias.kind == Bias::kTable) {
      add_table_block(s, rows, n, bias.table + h * bias.entries, int32_t(bias.entries), bias.index + r0 * nk + k0,
                      nk, rowmax);
    }
    softmax_block(s, rows, n, tiles || bias.kind != Bias::kNone ? rowmax : nullptr, m, l, acc, d, k0 == 0);
    const float* vp = v.data + b * v.sb + h * v.sh + k0 * v.sn;
    if (tiles)
      value_tiles(acc, s, vp, v.sn, rows, n, d, k0 > 0, TileKey{call, b * heads + h, k0});
    else
      sgemm(false, false, rows, d, n, 1.f, s, n, vp, v.sn, k0 == 0 ? 0.f : 1.f, acc, d);
  }
  for (int64_t i = 0; i < rows; ++i) {  // out is (B, Nq, H, D) in memory
    float inv = 1.f / l[i];
    float* o = out + ((b * nq + r0 + i) * heads + h) * d;
    const float* a = acc + i * d;
    for (int64_t c = 0; c < d; ++c) o[c] = a[c] * inv;
  }
}

class Attention : public Kernel {
 public:
  Attention(mx::Stream s, float scale, Bias::Kind bias) : Kernel(s), scale_(scale), bias_(bias) {}
  const char* name() const override { return "DptAttention"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const Attention&>(other);
    return scale_ == o.scale_ && bias_ == o.bias_;
  }

  std::vector<mx::array> reference(const std::vector<mx::array>& in) override {
    auto s = stream();
    auto scores = mx::matmul(mx::multiply(in[0], mx::array(scale_), s), mx::swapaxes(in[1], -1, -2, s), s);
    if (bias_ == Bias::kDense) scores = mx::add(scores, in[3], s);
    if (bias_ == Bias::kTable) scores = mx::add(scores, mx::expand_dims(mx::take(in[3], in[4], 1, s), 0, s), s);
    return {mx::matmul(mx::softmax(scores, std::vector<int>{-1}, true, s), in[2], s)};
  }

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const auto& in = inputs;
    auto& out = outputs[0];
    int64_t bsz = out.shape(0), heads = out.shape(1), nq = out.shape(2), d = out.shape(3);
    int64_t nk = in[1].shape(2);
    mx::Strides strides{nq * heads * d, d, heads * d, 1};
    auto flags = out.flags();
    flags.contiguous = true;
    flags.row_contiguous = heads == 1 || nq == 1;
    flags.col_contiguous = out.size() <= 1;
    out.set_data(mx::allocator::malloc(out.nbytes()), out.size(), strides, flags);
    auto& enc = begin(in, out);
    View q = view_of(in[0]), k = view_of(in[1]), v = view_of(in[2]);
    Bias bias;
    bias.kind = bias_;
    if (bias_ == Bias::kDense) bias.dense = view_of(in[3]);
    if (bias_ == Bias::kTable) {
      bias.table = in[3].data<float>();
      bias.entries = in[3].shape(1);
      bias.index = in[4].data<int32_t>();
    }
    float* o = out.data<float>();
    float scale = scale_;
    auto shapes = std::vector<mx::Shape>{in[0].shape(), in[1].shape(), in[2].shape()};
    enc.dispatch([=]() mutable {
      // An operand whose rows the BLAS cannot read in place (rare: a transposed head dimension, a
      // broadcast sequence) is gathered first.
      std::vector<std::vector<float>> gathered;
      View* views[3] = {&q, &k, &v};
      for (int i = 0; i < 3; ++i) {
        View& a = *views[i];
        bool rows_ok = shapes[i][2] == 1 || a.sn >= shapes[i][3];  // a leading dimension the BLAS takes
        if ((a.sd == 1 || shapes[i][3] == 1) && rows_ok) {
          if (shapes[i][2] == 1) a.sn = shapes[i][3];
          continue;
        }
        auto& g = gathered.emplace_back(size_t(shapes[i][0]) * shapes[i][1] * shapes[i][2] * shapes[i][3]);
        int64_t nh = shapes[i][1], nn = shapes[i][2], nd = shapes[i][3];
        for (int64_t b = 0; b < shapes[i][0]; ++b)
          for (int64_t h = 0; h < nh; ++h)
            for (int64_t r = 0; r < nn; ++r)
              for (int64_t c = 0; c < nd; ++c)
                g[((b * nh + h) * nn + r) * nd + c] = a.data[b * a.sb + h * a.sh + r * a.sn + c * a.sd];
        a = View{g.data(), nh * nn * nd, nn * nd, nd, 1};
      }
      static std::atomic<uint64_t> calls{0};
      uint64_t call = ++calls;
      int64_t block = query_block(std::min(nk, kWholeKeys < nk ? kKeyBlock : nk));
      int64_t blocks = (nq + block - 1) / block;
      parallel_for(bsz * heads * blocks, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          int64_t blk = t % blocks, bh = t / blocks;
          attention_task(q, k, v, bias, o, heads, nq, nk, d, scale, bh / heads, bh % heads,
                         blk * block, call, block);
        }
      });
    });
  }

 private:
  float scale_;
  Bias::Kind bias_;
};

}  // namespace

mx::array attention(const mx::array& q, const mx::array& k, const mx::array& v, float scale, const OptArray& bias,
                    const OptArray& bias_index, mx::StreamOrDevice sd) {
  auto s = mx::to_stream(sd);
  if (q.ndim() != 4 || k.ndim() != 4 || v.ndim() != 4 || k.shape() != v.shape() || q.shape(0) != k.shape(0) ||
      q.shape(1) != k.shape(1) || q.shape(3) != k.shape(3))
    throw std::invalid_argument("attention: q (B, H, Nq, D) and k, v (B, H, Nk, D) do not match");
  auto f32 = mx::float32;
  std::vector<mx::array> in{mx::astype(q, f32, s), mx::astype(k, f32, s), mx::astype(v, f32, s)};
  Bias::Kind kind = bias ? Bias::kDense : Bias::kNone;
  if (bias && bias_index) {
    // bias: a (R, H) table; bias_index: (Nq, Nk) entries of it.
    if (bias->ndim() != 2 || bias->shape(1) != q.shape(1) || bias_index->ndim() != 2 ||
        bias_index->shape(0) != q.shape(2) || bias_index->shape(1) != k.shape(2) ||
        !mx::issubdtype(bias_index->dtype(), mx::integer))
      throw std::invalid_argument("attention: a bias table is (R, H) and its index (Nq, Nk) integers");
    kind = Bias::kTable;
    in.push_back(dense(mx::transpose(*bias, {1, 0}, s), s));  // (H, R): one head's entries together
    in.push_back(mx::contiguous(mx::astype(*bias_index, mx::int32, s), false, s));
  } else if (bias_index) {
    throw std::invalid_argument("attention: bias_index without a bias table");
  } else if (bias) {
    auto b = mx::astype(*bias, f32, s);
    if (b.ndim() > 4) throw std::invalid_argument("attention: the bias has more than 4 axes");
    while (b.ndim() < 4) b = mx::expand_dims(b, 0, s);
    mx::Shape full{q.shape(0), q.shape(1), q.shape(2), k.shape(2)};
    for (int i = 0; i < 4; ++i)
      if (b.shape(i) != 1 && b.shape(i) != full[i])
        throw std::invalid_argument("attention: the bias does not broadcast to (B, H, Nq, Nk)");
    if (b.shape(3) == 1 && k.shape(2) > 1) b = mx::broadcast_to(b, {b.shape(0), b.shape(1), b.shape(2), k.shape(2)}, s);
    in.push_back(dense(b, s));  // rows read with unit stride
  }
  auto out = mx::array(q.shape(), f32, std::make_shared<Attention>(s, scale, kind), in);
  return q.dtype() == f32 ? out : mx::astype(out, q.dtype(), s);
}

}  // namespace dpt
