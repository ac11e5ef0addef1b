// Dynamic (run-time configured) networks against the typed ones they mirror.
#include <doctest/doctest.h>

#include <set>

#include <dd/ddunet.hpp>

using dd::Tensor;
using dd::Var;

TEST_CASE("DynamicUNet and DynamicCommNet hold the typed networks' weights and compute the same") {
  using Typed = dd::DomainDecomposed<dd::UNet<3, 1, 3, 4>, dd::CommNet<8>>;
  using Dynamic = dd::DomainDecomposed<dd::DynamicUNet, dd::DynamicCommNet>;
  Typed typed({1, 2}, dd::Exchange::stitched, 3);
  Dynamic dynamic(dd::DynamicUNet({3, 1, 3, 4}), dd::DynamicCommNet(8), {1, 2}, dd::Exchange::stitched, 3);
  CHECK(dynamic.num_params() == Typed::param_count);
  CHECK(dynamic.network().param_count() == dd::UNet<3, 1, 3, 4>::param_count);
  CHECK(dynamic.network().encoder_param_count() == 18'564);
  CHECK(dynamic.communication().param_count() == dd::CommNet<8>::param_count);
  CHECK(dynamic.network().receptive_field() == dd::receptive_field<dd::UNet<3, 1, 3, 4>>);
  CHECK(typed.parameters().to_vector() == dynamic.parameters().to_vector());
  CHECK(typed.buffers().to_vector() == dynamic.buffers().to_vector());

  const Tensor x = Tensor::randn({2, 1, 32, 64}, 4);
  const Tensor labels = Tensor::full({2, 1, 32, 64}, 1.0f);
  const Var a = typed.forward(Var(x));  // training: batch statistics and dropout draws must match too
  dd::dice_loss(a, labels).backward();
  const Var b = dynamic.forward(Var(x));
  dd::dice_loss(b, labels).backward();
  CHECK(a.value().to_vector() == b.value().to_vector());
  CHECK(typed.gradients().to_vector() == dynamic.gradients().to_vector());
  CHECK(typed.buffers().to_vector() == dynamic.buffers().to_vector());
}

TEST_CASE("dynamic networks name every parameter and buffer once, covering the flat buffers") {
  const dd::DynamicUNet net({4, 3, 7, 16});
  const dd::DynamicCommNet comm(64);
  std::vector<dd::TensorSlot> ps, bs;
  net.slots(ps, bs);
  comm.slots("comm", net.param_count(), net.buffer_count(), ps, bs);
  std::size_t params = 0, buffers = 0;
  std::set<std::string> names;
  for (const auto& s : ps) params += std::size_t(s.shape.numel()), names.insert(s.name);
  for (const auto& s : bs) buffers += std::size_t(s.shape.numel()), names.insert(s.name);
  CHECK(params == net.param_count() + comm.param_count());
  CHECK(buffers == net.buffer_count() + comm.buffer_count());
  CHECK(names.size() == ps.size() + bs.size());
  CHECK(names.count("enc0.conv1.weight") == 1);
  CHECK(names.count("dec3.up.weight") == 1);
  CHECK(names.count("comm.layer3.bn1.running_var") == 1);
  CHECK(comm.param_count() == dd::param_count<dd::CommNet<64>>);
  CHECK_THROWS_AS(dd::DynamicUNet({0, 1, 3, 4}), dd::Error);
  CHECK_THROWS_AS((dd::DomainDecomposed<dd::DynamicUNet, dd::DynamicCommNet>(
                      dd::DynamicUNet({2, 1, 3, 4}), dd::DynamicCommNet(32), {1, 2}, dd::Exchange::stitched)),
                  dd::Error);  // F = 32 > 16 bottleneck channels
}
