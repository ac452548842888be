// What every kernel primitive shares: data access, allocation, and the transforms (gradients,
// forward derivatives, vmap) taken through the primitive's plain-MLX reference.
#include <stdexcept>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/transforms.h"

#include "common.h"

namespace dpt {

mx::array dense(const mx::array& a, mx::Stream s) {
  return mx::contiguous(mx::astype(a, mx::float32, s), false, s);
}

mx::cpu::CommandEncoder& Kernel::begin(const std::vector<mx::array>& inputs, mx::array& out) {
  if (!out.data_shared_ptr()) out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& enc = mx::cpu::get_command_encoder(stream());
  for (auto& a : inputs) enc.set_input_array(a);
  enc.set_output_array(out);
  return enc;
}

void Kernel::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error(std::string(name()) + " is a CPU kernel; on a GPU the model runs MLX's own ops");
}

namespace {

// reference() as a function of the inputs at `argnums` only (the others held at `primals`).
std::function<std::vector<mx::array>(const std::vector<mx::array>&)> of_args(Kernel* k,
                                                                          const std::vector<mx::array>& primals,
                                                                          const std::vector<int>& argnums) {
  return [k, primals, argnums](const std::vector<mx::array>& sub) {
    auto all = primals;
    for (size_t j = 0; j < argnums.size(); ++j) all[argnums[j]] = sub[j];
    return k->reference(all);
  };
}

std::vector<mx::array> select(const std::vector<mx::array>& a, const std::vector<int>& idx) {
  std::vector<mx::array> out;
  for (int i : idx) out.push_back(a[i]);
  return out;
}

}  // namespace

std::vector<mx::array> Kernel::vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                                   const std::vector<int>& argnums, const std::vector<mx::array>&) {
  return mx::vjp(of_args(this, primals, argnums), select(primals, argnums), cotangents).second;
}

std::vector<mx::array> Kernel::jvp(const std::vector<mx::array>& primals, const std::vector<mx::array>& tangents,
                                   const std::vector<int>& argnums) {
  return mx::jvp(of_args(this, primals, argnums), select(primals, argnums), tangents).second;
}

std::pair<std::vector<mx::array>, std::vector<int>> Kernel::vmap(const std::vector<mx::array>& inputs,
                                                                 const std::vector<int>& axes) {
  auto fun = [this](const std::vector<mx::array>& in) { return reference(in); };
  std::vector<int> out_axes(1, 0);
  auto outs = mx::vmap(fun, axes, out_axes)(inputs);
  return {outs, out_axes};
}

}  // namespace dpt
