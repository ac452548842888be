// Register-tiled products for attention on AVX-512 CPUs: the scores of a block of queries against
// all keys, and probabilities times values. Both operands of a head are small (its head dimension
// is 32-128), so a BLAS call spends much of its time packing them again for every query block;
// these pack the keys once per block and keep an 8 x 32 tile of the result in registers.
#pragma once

#include <cstdint>

#include "common.h"

namespace dpt {

// Whether this CPU runs the tiles (AVX-512F) and they apply to head dimension d.
bool tiles_apply(int64_t d);

// Which keys a score_tiles call multiplies: the attention call (a number no other call has; 0
// never matches) and the (batch * heads + head, first key) within it.
struct TileKey {
  uint64_t call = 0;
  int64_t head = -1, first = -1;
  bool operator==(const TileKey& o) const { return call == o.call && head == o.head && first == o.first; }
};

// s (rows x n, row stride n) = scale * q (rows x d, row stride ldq) @ k^T (k: n x d, row stride ldk),
// and rowmax (rows) = each row's largest score, taken while the tile is in registers.
void score_tiles(float* s, const float* q, int64_t ldq, const float* k, int64_t ldk, int64_t rows, int64_t n,
                 int64_t d, float scale, const TileKey& key, float* rowmax);

// o (rows x d, row stride d) (+)= p (rows x n, row stride n) @ v (n x d, row stride ldv).
void value_tiles(float* o, const float* p, const float* v, int64_t ldv, int64_t rows, int64_t n, int64_t d,
                 bool accumulate, const TileKey& key);

// A convolution's geometry: NHWC input (b, h, w, i), weights (o, kh, kw, i), output (b, oh, ow, o).
struct ConvShape {
  int64_t b, h, w, i, o, kh, kw, oh, ow, sh, sw, ph, pw, dh, dw;
};

// Whether the direct convolution tiles run this convolution (AVX-512, 16 to 128 input channels
// under a 3x3 kernel).
bool conv_tiles_apply(const ConvShape& g);

// y = conv(x, w) followed by the epilogue (row = output pixel, column = output channel), without
// an im2col copy: each 8-pixel x 32-channel tile of the output accumulates in registers from the
// input pixels under its taps. Parallel over tiles.
void conv_tiles(float* y, const float* x, const float* w, const ConvShape& g, const Epilogue& e);

}  // namespace dpt
