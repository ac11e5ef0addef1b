#pragma once
// Per-block memory and weight summary of a (DD)U-Net, laid out like the paper's Table 5
// (U-Net(4), base 16, RGB 1024x1024, 3 classes, 4 subimages, F = 64), plus per-device peaks.
//
// Feature-map accounting. The paper does not state its rule; these rules reproduce Table 5's
// "# of values" column (unit u_l = c_l * (H/2^l) * (W/2^l), c_l = base * 2^l):
//   input           in_channels * H * W                       3.1 M
//   input block     4 u_0: conv and BN outputs of both convs   67 M (Table: 67 M)
//   encoder block l 5 u_l                                      42 / 21 / 10 / 5.2 M (Table: same)
//   decoder block   6 u_l for the block producing level l: the concat [skip, up] (2 c_l channels)
//                   plus conv and BN outputs of both convs     13 / 25 / 50 / 101 M (Table: same)
//   output block    classes * H * W                            3.1 M
//   labels          H * W class indices, int64 (8 bytes)       1.0 M, 8 MB
// Table 5's MB column equals 4 bytes * values except for the encoder rows, whose MB are 5.5 u_l
// (e.g. 176 MB for 42 M values: it seems to add the pooled input, c_l / 2 channels); we follow
// the values column, so our encoder MB are 160 / 80 / 40 / 20.
//
// Communication network (not reproduced). We count the stitched input plus the conv and BN
// outputs of each layer, the same tensors the U-Net rows count: (1 + 2 * layers) * F * (H/2^D) *
// (W/2^D) = 7 * 64 * 64^2 = 1.8 M (7 MB) for Table 5's case. Table 5 gives 7.6 M = 29.0 MB =
// exactly 29 such maps; 29 is prime, and the only natural fit we found is 4 * 7 + 1 (every one of
// the 4 subimages holding a full copy of the comm net's activations, plus one stitched map). Here
// the comm net runs once, on one device, so we count one copy. (Table 5's comm weight MB, 0.04,
// is also off: 307,776 weights are 1.17 MB.)
//
// Weights come from DynamicUNet::slots (BN gamma/beta count, running stats do not). They equal
// Table 5 for the input, encoder, comm and output rows. Table 5's decoder rows (573,952 / 143,616 /
// 35,968 / 9,024) leave out the up-conv bias (c_l values per row); ours include it, as do the
// paper's totals in Table 8 (PAPER_NOTES section 1), so the rows sum to param_count().
//
// Per device: every block's feature maps are counted for the largest tile of
// Grid::split(H, W, grid, 2^D) (a tile is a multiple of 2^D, so the rules divide exactly), except
// the comm network, which one device holds whole (the peaks count it on that device).
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "dd/decomposition/grid.hpp"
#include "dd/models/dynamic_unet.hpp"

namespace dd {

struct SummaryRow {
  std::string name;
  std::int64_t size = 0;  // height of the block's input feature maps (the side for square images)
  int in_channels = 0, out_channels = 0;
  double feature_values = 0, feature_mb = 0;  // whole image, batch 1
  std::int64_t weights = 0;
  double weight_mb = 0;
  double device_values = 0;  // feature values on one device (largest tile; comm net whole), batch 1
};

struct ModelSummary {
  std::vector<SummaryRow> rows;
  std::int64_t total_params = 0;
  std::int64_t receptive_field = 0;
  double peak_train_bytes_per_device = 0, peak_infer_bytes_per_device = 0;

  std::string table() const {
    auto values = [](double v) {  // like the paper: 3.1 M, 67 M, 101 M
      const char* unit = v >= 1e6 ? " M" : v >= 1e3 ? " k" : "";
      const double x = v >= 1e6 ? v / 1e6 : v >= 1e3 ? v / 1e3 : v;
      return (x < 10 && *unit ? fmt::format("{:.1f}", x) : fmt::format("{:.0f}", x)) + unit;
    };
    std::string s = fmt::format("{:<22} {:>6} {:>6} {:>6} {:>9} {:>9} {:>11} {:>10} {:>11}\n", "name", "size", "in",
                                "out", "values", "MB", "weights", "MB", "per device");
    for (const auto& r : rows)
      s += fmt::format("{:<22} {:>6} {:>6} {:>6} {:>9} {:>9.1f} {:>11} {:>10.2f} {:>11}\n", r.name, r.size,
                       r.in_channels, r.out_channels, values(r.feature_values), r.feature_mb,
                       r.weights ? std::to_string(r.weights) : "-", r.weight_mb, values(r.device_values));
    s += fmt::format("total parameters {}, receptive field {} px, peak per device: training {:.1f} MB, "
                     "inference {:.1f} MB\n",
                     total_params, receptive_field, peak_train_bytes_per_device / 1048576.0,
                     peak_infer_bytes_per_device / 1048576.0);
    return s;
  }
};

// net: the encoder-decoder; F, comm_layers, comm_kernel: the communication network (F = 0: none);
// image_h x image_w split into grid subimages; batch multiplies the feature maps in the peaks.
// Peaks per device (4-byte floats):
//   training  = 4 * batch * (sum of the device's feature values of all rows but labels)
//               + 4 * 4 * params (weights, gradients, Adam m and v)
//   inference = 4 * batch * (largest sum of two consecutive rows' device values
//                            + skip connections kept for the decoder, u_l per device for l < D)
//               + 4 * params (an estimate for a forward pass that frees activations)
inline ModelSummary summarize(const UNetConfig& net, int F, int comm_layers, int comm_kernel, std::int64_t image_h,
                              std::int64_t image_w, GridSpec grid, int batch = 1) {
  const DynamicUNet unet(net);
  const DynamicCommNet comm(F, comm_layers, comm_kernel);
  const int D = net.depth;
  DD_CHECK(F <= unet.bottleneck_channels(), "dd::summarize: F = {} exceeds the {} bottleneck channels", F,
           unet.bottleneck_channels());
  DD_CHECK(batch > 0, "dd::summarize: batch {} must be positive", batch);
  const Grid tiles = Grid::split(image_h, image_w, grid, unet.downsampling());
  const std::int64_t th = *std::max_element(tiles.heights().begin(), tiles.heights().end());
  const std::int64_t tw = *std::max_element(tiles.widths().begin(), tiles.widths().end());

  // Parameters per named block ("enc0", "dec3", "head"), from the network's own slots.
  std::vector<TensorSlot> ps, bs;
  unet.slots(ps, bs);
  auto weights = [&](const std::string& block) {
    std::int64_t n = 0;
    for (const auto& p : ps)
      if (p.name.rfind(block + ".", 0) == 0) n += p.shape.numel();
    return n;
  };
  // c channels at level l for an h x w image.
  auto at = [](double c, int l, std::int64_t h, std::int64_t w) { return c * double(h >> l) * double(w >> l); };

  ModelSummary m;
  auto add = [&](std::string name, int l_in, int in, int out, double k, double c, int l, std::int64_t w,
                 double bytes = 4.0) {
    const double v = at(k * c, l, image_h, image_w);
    m.rows.push_back({std::move(name), image_h >> l_in, in, out, v, v * bytes / 1048576.0, w, w * 4.0 / 1048576.0,
                      at(k * c, l, th, tw)});
  };
  add("input", 0, net.in_channels, net.in_channels, 1, net.in_channels, 0, 0);
  add("input block", 0, net.in_channels, unet.ch(0), 4, unet.ch(0), 0, weights("enc0"));
  for (int l = 1; l <= D; ++l)
    add(fmt::format("encoder block {}", l), l, unet.ch(l - 1), unet.ch(l), 5, unet.ch(l), l,
        weights(fmt::format("enc{}", l)));
  if (F > 0) {
    add("communication network", D, F, F, 1 + 2 * comm_layers, F, D, std::int64_t(comm.param_count()));
    m.rows.back().device_values = m.rows.back().feature_values;  // one device holds it whole
  }
  for (int l = D - 1; l >= 0; --l)
    add(fmt::format("decoder block {}", D - l), l + 1, unet.ch(l + 1), unet.ch(l), 6, unet.ch(l), l,
        weights(fmt::format("dec{}", l)));
  add("output block", 0, unet.ch(0), net.classes, 1, net.classes, 0, weights("head"));
  add("labels", 0, net.classes, net.classes, 1, 1, 0, 0, 8.0);  // int64 class indices

  m.total_params = std::int64_t(unet.param_count() + comm.param_count());
  m.receptive_field = unet.receptive_field() + (F > 0 ? std::int64_t(comm_layers) * (comm_kernel - 1) << D : 0);

  const std::size_t n = m.rows.size() - 1;  // all rows but labels
  double sum = 0, pair = 0, skips = 0;
  for (std::size_t i = 0; i < n; ++i) {
    sum += m.rows[i].device_values;
    if (i > 0) pair = std::max(pair, m.rows[i - 1].device_values + m.rows[i].device_values);
  }
  for (int l = 0; l < D; ++l) skips += at(unet.ch(l), l, th, tw);
  const double params = double(m.total_params);
  m.peak_train_bytes_per_device = 4.0 * batch * sum + 16.0 * params;
  m.peak_infer_bytes_per_device = 4.0 * batch * (pair + skips) + 4.0 * params;
  return m;
}

}  // namespace dd
