#pragma once
// Real images for training and evaluation: a folder of images and a folder of masks paired by
// file name (image/7.png <-> label/7.png), loaded once; training draws random crops with flips
// and 90-degree rotations.
#include <algorithm>
#include <filesystem>
#include <vector>

#include "dd/data/circles.hpp"
#include "dd/io/image.hpp"

namespace dd {

struct ImagePair {
  std::string image, mask;
};

namespace detail {
inline bool is_image_file(const std::filesystem::path& p) {
  std::string e = p.extension().string();
  std::transform(e.begin(), e.end(), e.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return e == ".png" || e == ".jpg" || e == ".jpeg" || e == ".bmp" || e == ".tga";
}
// "2" before "10": numeric stems sort as numbers, others as text.
inline bool natural_less(const std::string& a, const std::string& b) {
  const bool na = !a.empty() && std::all_of(a.begin(), a.end(), ::isdigit);
  const bool nb = !b.empty() && std::all_of(b.begin(), b.end(), ::isdigit);
  if (na && nb && a.size() != b.size()) return a.size() < b.size();
  return a < b;
}
}  // namespace detail

// Pairs every image in images_dir with the mask of the same stem in masks_dir (PNG preferred).
inline std::vector<ImagePair> list_pairs(const std::string& images_dir, const std::string& masks_dir) {
  namespace fs = std::filesystem;
  DD_CHECK(fs::is_directory(images_dir), "image folder {} does not exist or is not a folder", images_dir);
  DD_CHECK(fs::is_directory(masks_dir), "mask folder {} does not exist or is not a folder", masks_dir);
  std::vector<fs::path> images;
  for (const auto& e : fs::directory_iterator(images_dir))
    if (e.is_regular_file() && detail::is_image_file(e.path())) images.push_back(e.path());
  DD_CHECK(!images.empty(), "image folder {} holds no images (.png, .jpg, .bmp, .tga)", images_dir);
  std::sort(images.begin(), images.end(), [](const fs::path& a, const fs::path& b) {
    return detail::natural_less(a.stem().string(), b.stem().string());
  });
  std::vector<ImagePair> pairs;
  for (const auto& img : images) {
    fs::path mask;
    for (const char* ext : {".png", ".PNG", ".bmp", ".tga", ".jpg"}) {
      const fs::path candidate = fs::path(masks_dir) / (img.stem().string() + ext);
      if (fs::exists(candidate)) {
        mask = candidate;
        break;
      }
    }
    DD_CHECK(!mask.empty(), "image {} has no mask: looked for {}/{}.png", img.string(), masks_dir, img.stem().string());
    pairs.push_back({img.string(), mask.string()});
  }
  return pairs;
}

struct LabeledImages {
  std::vector<Tensor> images;  // [1, C, H, W] in [0, 1]
  std::vector<Tensor> masks;   // [1, 1, H, W] class indices
  std::vector<std::string> names;
  std::size_t size() const { return images.size(); }
};

// table == nullptr: masks hold class indices; otherwise their colours map through the table.
inline LabeledImages load_pairs(const std::vector<ImagePair>& pairs, int channels, const io::ColorTable* table,
                                int classes) {
  LabeledImages out;
  for (const auto& p : pairs) {
    Tensor img = io::load_image(p.image, channels);
    Tensor mask = io::load_mask(p.mask, table, classes);
    DD_CHECK(img.shape().h == mask.shape().h && img.shape().w == mask.shape().w,
             "image {} is {}x{} (WxH) but its mask {} is {}x{}", p.image, img.shape().w, img.shape().h, p.mask,
             mask.shape().w, mask.shape().h);
    out.images.push_back(std::move(img));
    out.masks.push_back(std::move(mask));
    out.names.push_back(std::filesystem::path(p.image).filename().string());
  }
  return out;
}

namespace detail {
// dst[y][x] = src[transformed (y, x)] for one channel plane of a crop: flips, then k quarter turns.
inline void copy_transformed(const Tensor& src, std::int64_t c, std::int64_t y0, std::int64_t x0, std::int64_t s,
                             bool flip_x, bool flip_y, int turns, const Tensor& dst, std::int64_t n, std::int64_t dc) {
  for (std::int64_t y = 0; y < s; ++y)
    for (std::int64_t x = 0; x < s; ++x) {
      std::int64_t u = x, v = y;
      for (int t = 0; t < turns; ++t) {  // rotate the sampling point by 90 degrees
        const std::int64_t nu = s - 1 - v, nv = u;
        u = nu, v = nv;
      }
      if (flip_x) u = s - 1 - u;
      if (flip_y) v = s - 1 - v;
      dst.at(n, dc, y, x) = src.at(0, c, y0 + v, x0 + u);
    }
}
}  // namespace detail

// `per_image` random crop x crop squares from every image (flips and quarter turns when augment).
inline SegmentationSet sample_crops(const LabeledImages& data, std::int64_t crop, std::int64_t per_image, Rng& rng,
                                    bool augment) {
  DD_CHECK(!data.images.empty(), "dd::sample_crops: no images");
  const std::int64_t C = data.images[0].shape().c, N = static_cast<std::int64_t>(data.size()) * per_image;
  SegmentationSet set{Tensor::empty({N, C, crop, crop}), Tensor::empty({N, 1, crop, crop})};
  std::int64_t n = 0;
  for (std::size_t i = 0; i < data.size(); ++i) {
    const Shape s = data.images[i].shape();
    DD_CHECK(crop <= s.h && crop <= s.w, "crop {} is larger than image {} ({}x{})", crop, data.names[i], s.w, s.h);
    for (std::int64_t k = 0; k < per_image; ++k, ++n) {
      const std::int64_t y0 = rng.uniform_int(0, s.h - crop), x0 = rng.uniform_int(0, s.w - crop);
      const bool fx = augment && rng.bernoulli(0.5f), fy = augment && rng.bernoulli(0.5f);
      const int turns = augment ? static_cast<int>(rng.uniform_int(0, 3)) : 0;
      for (std::int64_t c = 0; c < C; ++c) detail::copy_transformed(data.images[i], c, y0, x0, crop, fx, fy, turns, set.images, n, c);
      detail::copy_transformed(data.masks[i], 0, y0, x0, crop, fx, fy, turns, set.labels, n, 0);
    }
  }
  return set;
}

}  // namespace dd
