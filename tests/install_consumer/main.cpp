#include <dd/ddunet.hpp>
#include <cstdio>
int main() {
  using Net = dd::UNet<3, 1, 3, 4>;
  dd::Model<Net> model(/*seed=*/42);
  model.train();
  dd::Tensor x = dd::Tensor::randn({1, 1, 64, 64}, /*seed=*/7);
  dd::Var logits = model.forward(dd::Var(x));
  dd::Tensor labels = dd::Tensor::zeros({1, 1, 64, 64});
  dd::Var loss = dd::cross_entropy(logits, labels);
  loss.backward();
  const auto s = logits.value().shape();
  std::printf("output shape: %lldx%lldx%lldx%lld\n", (long long)s.n, (long long)s.c, (long long)s.h, (long long)s.w);
  std::printf("loss: %.6f\n", loss.value().item());
  std::printf("grad norm: %.6f\n", model.grad_norm());
  return (s.c == 3 && s.h == 64 && s.w == 64) ? 0 : 1;
}
