#include "reference.h"

#include <algorithm>
#include <cmath>

#include "mlx/ops.h"

namespace fusedconv::reference {

mx::array group_norm_stats(const mx::array& x, int groups, float eps, mx::StreamOrDevice s) {
  const int n = x.shape(0), c = x.shape(3);
  const mx::array g = mx::reshape(mx::astype(x, mx::float32, s), {n, -1, groups, c / groups}, s);
  const mx::array mean = mx::mean(g, {1, 3}, false, s);
  const mx::array var = mx::var(g, {1, 3}, false, 0, s);
  return mx::stack({mean, mx::rsqrt(mx::add(var, mx::array(eps), s), s)}, -1, s);
}

mx::array pixel_norm_stats(const mx::array& x, float eps, mx::StreamOrDevice s) {
  const mx::array x32 = mx::astype(x, mx::float32, s);
  const mx::array norm = mx::sqrt(mx::sum(mx::square(x32, s), -1, false, s), s);
  return mx::divide(mx::array(std::sqrt(float(x.shape(3)))), mx::maximum(norm, mx::array(eps), s), s);
}

mx::array conv3x3(const Conv3x3Inputs& in, const Conv3x3Options& o, mx::StreamOrDevice s) {
  const int n = in.x.shape(0), h = in.x.shape(1), w = in.x.shape(2), c = in.x.shape(3);
  mx::array a = in.x;
  if (o.groups || o.pixel_norm || o.silu) {  // in f32, rounded to the storage dtype once, as the kernels do
    mx::array v = mx::astype(in.x, mx::float32, s);
    if (o.pixel_norm) {
      v = mx::multiply(v, mx::expand_dims(*in.stats, -1, s), s);
      v = mx::add(mx::multiply(v, mx::astype(*in.gamma, mx::float32, s), s), mx::astype(*in.beta, mx::float32, s), s);
    }
    if (o.groups) {
      const int g = o.groups;
      const mx::array mean = mx::reshape(mx::slice(*in.stats, {0, 0, 0}, {n, g, 1}, s), {n, 1, 1, g, 1}, s);
      const mx::array rstd = mx::reshape(mx::slice(*in.stats, {0, 0, 1}, {n, g, 2}, s), {n, 1, 1, g, 1}, s);
      v = mx::multiply(mx::subtract(mx::reshape(v, {n, h, w, g, c / g}, s), mean, s), rstd, s);
      v = mx::add(mx::multiply(mx::reshape(v, {n, h, w, c}, s), mx::astype(*in.gamma, mx::float32, s), s),
                  mx::astype(*in.beta, mx::float32, s), s);
    }
    if (o.silu) v = mx::multiply(v, mx::sigmoid(v, s), s);
    a = mx::astype(v, in.x.dtype(), s);
  }
  if (o.upsample == 2) {
    a = mx::broadcast_to(mx::reshape(a, {n, h, 1, w, 1, c}, s), {n, h, 2, w, 2, c}, s);
    a = mx::reshape(a, {n, 2 * h, 2 * w, c}, s);
  }
  mx::array y = mx::conv2d(a, in.weight, {1, 1}, {1, 1}, {1, 1}, 1, s);
  if (in.bias) y = mx::add(y, *in.bias, s);
  if (in.residual) y = mx::add(y, *in.residual, s);
  if (in.shortcut_x) {
    const mx::array w1 = mx::reshape(*in.shortcut_w, {in.shortcut_w->shape(0), -1}, s);
    y = mx::add(y, mx::matmul(*in.shortcut_x, mx::transpose(w1, s), s), s);
    if (in.shortcut_bias) y = mx::add(y, *in.shortcut_bias, s);
  }
  return y;
}

mx::array linear(const mx::array& x, const mx::array& weight, const std::optional<mx::array>& bias,
                 mx::StreamOrDevice s) {
  const mx::array y = mx::matmul(x, mx::transpose(weight, s), s);
  return bias ? mx::add(y, *bias, s) : y;
}

int attention_query_rows(int batch, int keys, int itemsize, size_t budget) {
  const size_t per_row = size_t(batch) * keys * (2 * size_t(itemsize) + 4);
  return int(std::max<size_t>(1, budget / per_row));
}

mx::array attention(const mx::array& q, const mx::array& k, const mx::array& v, float scale,
                    mx::StreamOrDevice s) {
  const int b = q.shape(0), tq = q.shape(1), c = q.shape(2);
  const int rows = std::min(tq, attention_query_rows(b, k.shape(1), q.itemsize(), kAttentionScoresBudget));
  const mx::array kt = mx::transpose(k, {0, 2, 1}, s);
  std::vector<mx::array> chunks;
  for (int r0 = 0; r0 < tq; r0 += rows) {
    const mx::array qc = mx::slice(q, {0, r0, 0}, {b, std::min(tq, r0 + rows), c}, s);
    const mx::array scores = mx::matmul(mx::multiply(qc, mx::array(scale, q.dtype()), s), kt, s);
    chunks.push_back(mx::matmul(mx::softmax(scores, -1, true, s), v, s));
  }
  return chunks.size() == 1 ? chunks[0] : mx::concatenate(chunks, 1, s);
}

}  // namespace fusedconv::reference
