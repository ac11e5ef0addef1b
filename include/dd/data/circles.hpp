#pragma once
// The synthetic "circles" dataset of the paper (PAPER_NOTES section 4): (k*32) x 32 gray images
// with two white discs of radius 4 in two different 32x32 subimages; the mask adds the segment
// between the centres (class 1, drawn first) under the discs (class 2).
#include <cmath>

#include "dd/core/rng.hpp"
#include "dd/core/tensor.hpp"

namespace dd {

struct CirclesOptions {
  std::int64_t subimages = 4;  // k: the image is k*32 wide
  std::int64_t tile = 32;      // side of a subimage
  std::int64_t radius = 4;
  float line_width = 3.0f;
};

struct SegmentationSet {
  Tensor images;  // [N,1,H,W] in [0, 1]
  Tensor labels;  // [N,1,H,W] class indices
  std::int64_t size() const { return images.shape().n; }
  SegmentationSet batch(std::int64_t start, std::int64_t len) const {
    return {images.batch(start, len), labels.batch(start, len)};
  }
};

inline SegmentationSet make_circles(std::int64_t count, std::uint64_t seed, CirclesOptions o = {}) {
  DD_CHECK(o.subimages >= 2, "dd::make_circles: needs at least 2 subimages, got {}", o.subimages);
  DD_CHECK(o.tile > 2 * o.radius, "dd::make_circles: a {}-pixel tile cannot hold a disc of radius {}", o.tile, o.radius);
  const std::int64_t H = o.tile, W = o.tile * o.subimages;
  SegmentationSet set{Tensor::zeros({count, 1, H, W}), Tensor::zeros({count, 1, H, W})};
  Rng rng(seed);
  const double half = o.line_width / 2.0, r2 = double(o.radius) * o.radius;
  for (std::int64_t n = 0; n < count; ++n) {
    const std::int64_t s1 = rng.uniform_int(0, o.subimages - 1);
    std::int64_t s2 = rng.uniform_int(0, o.subimages - 2);
    if (s2 >= s1) ++s2;  // uniform over the other subimages
    std::int64_t cx[2], cy[2];
    const std::int64_t s[2] = {s1, s2};
    for (int i = 0; i < 2; ++i) {
      cx[i] = rng.uniform_int(o.tile * s[i] + o.radius, o.tile * s[i] + o.tile - o.radius - 1);
      cy[i] = rng.uniform_int(o.radius, o.tile - o.radius - 1);
    }
    const double dx = double(cx[1] - cx[0]), dy = double(cy[1] - cy[0]), len2 = dx * dx + dy * dy;
    for (std::int64_t y = 0; y < H; ++y)
      for (std::int64_t x = 0; x < W; ++x) {
        // Distance from the pixel to the segment between the centres.
        const double t = std::clamp(((x - cx[0]) * dx + (y - cy[0]) * dy) / len2, 0.0, 1.0);
        const double px = cx[0] + t * dx - x, py = cy[0] + t * dy - y;
        float label = px * px + py * py <= half * half ? 1.0f : 0.0f;
        for (int i = 0; i < 2; ++i)
          if (double(x - cx[i]) * (x - cx[i]) + double(y - cy[i]) * (y - cy[i]) <= r2) {
            label = 2.0f;
            set.images.at(n, 0, y, x) = 1.0f;
          }
        set.labels.at(n, 0, y, x) = label;
      }
  }
  return set;
}

}  // namespace dd
