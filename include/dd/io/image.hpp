#pragma once
// Image and segmentation-mask input/output on stb_image / stb_image_write.
//
// The stb implementations are NOT compiled here: this header only declares them and the `dd` CMake
// target links Debian's precompiled libstb.so (package libstb-dev), so the header can be included
// from any number of translation units. Do not define STB_IMAGE_IMPLEMENTATION /
// STB_IMAGE_WRITE_IMPLEMENTATION in a program that links dd (that would duplicate the symbols).
//
//   load_image(path, channels)     -> [1, C, H, W] in [0, 1]       (8- or 16-bit PNG, JPEG, BMP, ...)
//   load_image_u8(path, channels)  -> Image: 8-bit interleaved pixels (no float copy of huge inputs)
//   probe_image(path)              -> {width, height, channels}    (header only, no decoding)
//   load_mask(path, table, K)      -> [1, 1, H, W] class indices   (index PNG, or colours via ColorTable)
//   save_class_png / save_color_png / save_overlay_png              (atomic: path + ".tmp", then rename)
//   argmax_classes(logits)         -> [N, 1, H, W] class indices
// For outputs too large to hold as one 8-bit buffer, dd/io/png_stream.hpp (included here) writes PNGs
// band by band: save_gray_png_rows / save_rgb_png_rows.
#include <stb/stb_image.h>
#include <stb/stb_image_write.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "dd/core/error.hpp"
#include "dd/core/tensor.hpp"
#include "dd/io/png_stream.hpp"

namespace dd::io {

struct ImageInfo {
  int width = 0;
  int height = 0;
  int channels = 0;  // as stored: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA (palette PNGs report 3 or 4)
  int bits = 8;      // bits per channel: 8, or 16 for 16-bit PNG/PNM
};

// ---------------------------------------------------------------------------------------------
// Colour tables: class index <-> RGB colour of a colour-coded mask.
// ---------------------------------------------------------------------------------------------
struct ColorTable {
  using Color = std::array<std::uint8_t, 3>;
  std::vector<Color> colors;       // colors[k] is the colour of class k
  std::vector<std::string> names;  // empty, or one name per colour

  std::size_t size() const { return colors.size(); }

  // Class index of colour c, or -1 when the table does not contain it.
  int find(Color c) const {
    for (std::size_t k = 0; k < colors.size(); ++k)
      if (colors[k] == c) return static_cast<int>(k);
    return -1;
  }
  std::string name(std::size_t k) const {
    return k < names.size() && !names[k].empty() ? names[k] : fmt::format("class {}", k);
  }
  // "0 urban (0,255,255); 1 agriculture (255,255,0); ..." for error messages.
  std::string describe() const {
    std::string s;
    for (std::size_t k = 0; k < colors.size(); ++k) {
      if (k) s += "; ";
      s += fmt::format("{} {} ({},{},{})", k, name(k), colors[k][0], colors[k][1], colors[k][2]);
    }
    return s;
  }

  // DeepGlobe land-cover classification (7 classes).
  static ColorTable deepglobe() {
    return {{{0, 255, 255}, {255, 255, 0}, {255, 0, 255}, {0, 255, 0}, {0, 0, 255}, {255, 255, 255}, {0, 0, 0}},
            {"urban", "agriculture", "rangeland", "forest", "water", "barren", "unknown"}};
  }
  // Black (class 0) / white (class 1) masks, e.g. ISBI 2012 membranes (membrane = black = class 0).
  static ColorTable binary() { return {{{0, 0, 0}, {255, 255, 255}}, {"black", "white"}}; }

  // Parses "0,0,0;255,255,255" or "water=0,0,255;land=255,255,255" (entries separated by ';',
  // optional "name=" prefix, colour as "r,g,b" with 0..255 components or as "#rrggbb").
  static ColorTable parse(const std::string& spec);
};

namespace detail {

inline std::string trim(std::string s) {
  const auto sp = [](unsigned char ch) { return std::isspace(ch) != 0; };
  while (!s.empty() && sp(static_cast<unsigned char>(s.back()))) s.pop_back();
  std::size_t i = 0;
  while (i < s.size() && sp(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

inline std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (;;) {
    const std::size_t p = s.find(sep, start);
    out.push_back(s.substr(start, p == std::string::npos ? std::string::npos : p - start));
    if (p == std::string::npos) return out;
    start = p + 1;
  }
}

inline std::string stb_reason() {
  const char* r = stbi_failure_reason();
  return r ? r : "unknown stb_image error";
}

inline std::array<unsigned char, 3> magic(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::array<unsigned char, 3> b{0, 0, 0};
  f.read(reinterpret_cast<char*>(b.data()), 3);
  return b;
}
inline bool starts_like_jpeg(const std::string& path) {
  const auto b = magic(path);
  return b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF;
}

// Why reading `path` failed, in words, after stb said `reason`.
inline std::string describe_read_failure(const std::string& path, const std::string& reason) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) return fmt::format("no such file ({})", reason);
  if (fs::is_directory(st)) return fmt::format("it is a directory ({})", reason);
  const auto bytes = fs::file_size(path, ec);
  if (ec) return fmt::format("cannot open it ({})", reason);
  return fmt::format("not a readable image or corrupt ({} bytes; stb_image: {})", bytes, reason);
}

// Decoded pixels as stored: 8- or 16-bit samples, n interleaved channels.
struct Pixels {
  int w = 0, h = 0, n = 0;
  bool is16 = false;
  std::unique_ptr<void, void (*)(void*)> data{nullptr, [](void* p) { stbi_image_free(p); }};

  std::uint32_t max_value() const { return is16 ? 65535u : 255u; }
  // Calls f(const T* samples) with T = uint8_t or uint16_t.
  template <class F>
  decltype(auto) visit(F&& f) const {
    if (is16) return f(static_cast<const std::uint16_t*>(data.get()));
    return f(static_cast<const std::uint8_t*>(data.get()));
  }
};

inline Pixels decode(const std::string& path, const char* who, bool allow16 = true) {
  Pixels px;
  const bool file16 = stbi_is_16_bit(path.c_str()) != 0;
  const bool is16 = allow16 && file16;
  if (file16) {
    // Debian's stb (git 2022-09) reads 16-bit binary PNM samples little-endian (the format is
    // big-endian), so both the 16- and the 8-bit decode would be silently wrong.
    const auto b = magic(path);
    if (b[0] == 'P' && (b[1] == '5' || b[1] == '6'))
      fail("{}: '{}' is a 16-bit PGM/PPM, which this stb_image build decodes with swapped bytes; convert it to "
           "a 16-bit PNG",
           who, path);
  }
  void* p = is16 ? static_cast<void*>(stbi_load_16(path.c_str(), &px.w, &px.h, &px.n, 0))
                 : static_cast<void*>(stbi_load(path.c_str(), &px.w, &px.h, &px.n, 0));
  if (!p) fail("{}: cannot load '{}': {}", who, path, describe_read_failure(path, stb_reason()));
  px.data.reset(p);
  px.is16 = is16;
  DD_CHECK(px.n >= 1 && px.n <= 4, "{}: '{}' decoded to {} channels (expected 1..4)", who, path, px.n);
  return px;
}

// Writes through `path + ".tmp"` and renames, so readers never see a half-written file.
// write(tmp) returns false on failure.
template <class F>
void write_atomic(const std::string& path, const char* who, F&& write) {
  namespace fs = std::filesystem;
  DD_CHECK(!path.empty(), "{}: empty output path", who);
  const fs::path parent = fs::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty() && !fs::is_directory(parent, ec))
    fail("{}: cannot write '{}': directory '{}' does not exist", who, path, parent.string());
  const std::string tmp = path + ".tmp";
  bool ok = false;
  try {
    ok = write(tmp);
  } catch (...) {
    fs::remove(tmp, ec);
    throw;
  }
  if (!ok) {
    fs::remove(tmp, ec);
    fail("{}: cannot write '{}' (writing the temporary file '{}' failed: disk full or not writable?)", who,
         path, tmp);
  }
  fs::rename(tmp, path, ec);
  if (ec) {
    std::error_code ec2;
    fs::remove(tmp, ec2);
    fail("{}: cannot write '{}': renaming '{}' failed: {}", who, path, tmp, ec.message());
  }
}

// A class map given as {1,1,H,W} (NCHW) or {H,W,1,1} (a 2-D [H,W] tensor with trailing ones).
struct ClassMap {
  const Tensor* t = nullptr;
  bool nchw = true;
  std::int64_t h = 0, w = 0;
  float at(std::int64_t y, std::int64_t x) const { return nchw ? t->at(0, 0, y, x) : t->at(y, x, 0, 0); }
};

inline ClassMap class_map(const Tensor& classes, const char* who, const std::string& path) {
  DD_CHECK(classes.defined(), "{}: '{}': the class tensor is undefined", who, path);
  const Shape& s = classes.shape();
  if (s.n == 1 && s.c == 1) return {&classes, true, s.h, s.w};
  if (s.h == 1 && s.w == 1) return {&classes, false, s.n, s.c};
  fail("{}: '{}': classes must have shape 1x1xHxW or HxWx1x1 (a 2-D map), got {}", who, path, s);
}

// The class index at (x, y), checked to be an integer in [0, limit).
inline int class_at(const ClassMap& m, std::int64_t y, std::int64_t x, int limit, const char* who,
                    const std::string& path, const char* limit_what) {
  const float v = m.at(y, x);
  const float r = std::nearbyint(v);
  if (!(std::fabs(v - r) <= 1e-3f) || r < 0.0f || r >= static_cast<float>(limit))
    fail("{}: '{}': pixel (x={}, y={}) holds class {}, which is not an integer in [0, {}) ({})", who, path, x,
         y, v, limit, limit_what);
  return static_cast<int>(r);
}

inline void check_png_size(std::int64_t w, std::int64_t h, int comp, const char* who, const std::string& path) {
  DD_CHECK(w > 0 && h > 0, "{}: '{}': cannot write an empty {}x{} image", who, path, w, h);
  DD_CHECK(w * comp <= 0x7fffffff && h <= 0x7fffffff && w * h * comp <= (std::int64_t(1) << 40),
           "{}: '{}': {}x{} is too large for stb_image_write; use dd/io/png_stream.hpp", who, path, w, h);
}

inline std::uint8_t to_u8(float v01) {
  const float v = std::clamp(v01, 0.0f, 1.0f) * 255.0f;
  return static_cast<std::uint8_t>(std::lround(std::isnan(v01) ? 0.0f : v));
}

}  // namespace detail

inline ColorTable ColorTable::parse(const std::string& spec) {
  constexpr const char* who = "dd::io::ColorTable::parse";
  ColorTable t;
  DD_CHECK(!detail::trim(spec).empty(), "{}: no colours in \"{}\" (expected e.g. \"0,0,0;255,255,255\")", who, spec);
  const std::vector<std::string> entries = detail::split(spec, ';');
  bool any_name = false;
  std::vector<std::string> names;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const std::string entry = detail::trim(entries[i]);
    if (entry.empty()) {
      if (i + 1 == entries.size() && i > 0) break;  // tolerate one trailing ';'
      fail("{}: entry {} of \"{}\" is empty (expected \"r,g,b\" or \"name=r,g,b\", separated by ';')", who,
           i + 1, spec);
    }
    std::string name, colour = entry;
    if (const std::size_t eq = entry.find('='); eq != std::string::npos) {
      name = detail::trim(entry.substr(0, eq));
      colour = detail::trim(entry.substr(eq + 1));
      DD_CHECK(!name.empty(), "{}: entry {} ('{}') of \"{}\" has '=' but no name", who, i + 1, entry, spec);
      any_name = true;
    }
    Color c{};
    if (!colour.empty() && colour[0] == '#') {
      const std::string hex = colour.substr(1);
      DD_CHECK(hex.size() == 6 && std::all_of(hex.begin(), hex.end(), [](unsigned char ch) { return std::isxdigit(ch); }),
               "{}: entry {} ('{}') of \"{}\": '{}' is not a #rrggbb colour", who, i + 1, entry, spec, colour);
      for (int k = 0; k < 3; ++k) c[k] = static_cast<std::uint8_t>(std::stoi(hex.substr(2 * k, 2), nullptr, 16));
    } else {
      const std::vector<std::string> parts = detail::split(colour, ',');
      DD_CHECK(parts.size() == 3,
               "{}: entry {} ('{}') of \"{}\" has {} component(s); a colour is \"r,g,b\" (or \"#rrggbb\")", who,
               i + 1, entry, spec, parts.size());
      for (int k = 0; k < 3; ++k) {
        const std::string p = detail::trim(parts[k]);
        const bool digits = !p.empty() && p.size() <= 3 &&
                            std::all_of(p.begin(), p.end(), [](unsigned char ch) { return std::isdigit(ch); });
        const int v = digits ? std::stoi(p) : -1;
        DD_CHECK(digits && v <= 255, "{}: entry {} ('{}') of \"{}\": component '{}' is not an integer 0..255", who,
                 i + 1, entry, spec, p);
        c[k] = static_cast<std::uint8_t>(v);
      }
    }
    if (const int dup = t.find(c); dup >= 0)
      fail("{}: entry {} ('{}') of \"{}\" repeats colour ({},{},{}) of entry {}; colours must be distinct", who,
           i + 1, entry, spec, c[0], c[1], c[2], dup + 1);
    t.colors.push_back(c);
    names.push_back(name);
  }
  DD_CHECK(!t.colors.empty(), "{}: no colours in \"{}\" (expected e.g. \"0,0,0;255,255,255\")", who, spec);
  if (any_name) t.names = std::move(names);
  return t;
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

// Size and stored channel count, read from the file header only.
inline ImageInfo probe_image(const std::string& path) {
  ImageInfo info;
  if (!stbi_info(path.c_str(), &info.width, &info.height, &info.channels))
    fail("dd::io::probe_image: cannot read '{}': {}", path, detail::describe_read_failure(path, detail::stb_reason()));
  info.bits = stbi_is_16_bit(path.c_str()) ? 16 : 8;
  return info;
}

// Loads an image as [1, C, H, W] floats in [0, 1] (8-bit samples / 255, 16-bit samples / 65535).
// channels 0: as stored, without alpha (gray or gray+alpha -> 1, RGB or RGBA -> 3);
// channels 1: gray (RGB converted with ITU-R BT.601 luma 0.299 R + 0.587 G + 0.114 B);
// channels 3: RGB (gray replicated).
inline Tensor load_image(const std::string& path, int channels = 0) {
  constexpr const char* who = "dd::io::load_image";
  DD_CHECK(channels == 0 || channels == 1 || channels == 3,
           "{}: '{}': channels must be 0 (as stored), 1 (gray) or 3 (RGB), got {}", who, path, channels);
  const detail::Pixels px = detail::decode(path, who);
  const bool gray_in = px.n <= 2;
  const int out_c = channels != 0 ? channels : (gray_in ? 1 : 3);
  const std::int64_t H = px.h, W = px.w, plane = H * W;
  Tensor t = Tensor::empty({1, out_c, H, W});
  float* d = t.data();
  const float maxv = static_cast<float>(px.max_value());  // divide (not multiply by 1/max): exactly k / 255
  px.visit([&](const auto* s) {
    const std::int64_t n = px.n;
    for (std::int64_t i = 0; i < plane; ++i) {
      const auto* p = s + i * n;
      if (gray_in) {
        const float g = static_cast<float>(p[0]) / maxv;
        for (int c = 0; c < out_c; ++c) d[c * plane + i] = g;
      } else if (out_c == 3) {
        for (int c = 0; c < 3; ++c) d[c * plane + i] = static_cast<float>(p[c]) / maxv;
      } else {
        const float y = 0.299f * static_cast<float>(p[0]) + 0.587f * static_cast<float>(p[1]) +
                        0.114f * static_cast<float>(p[2]);
        d[i] = std::min(1.0f, y / maxv);
      }
    }
  });
  return t;
}

// 8-bit pixels kept as bytes (for images too large to hold as floats, e.g. 16384 x 16384 RGB):
// interleaved channels, row-major, at(y, x, c) = pixels[(y * width + x) * channels + c].
struct Image {
  std::int64_t width = 0;
  std::int64_t height = 0;
  int channels = 0;
  std::shared_ptr<std::uint8_t> pixels;  // width * height * channels bytes

  std::uint8_t* data() const { return pixels.get(); }
  std::uint8_t& at(std::int64_t y, std::int64_t x, int c) const {
    return pixels.get()[(y * width + x) * channels + c];
  }
  // [1, C, H, W] floats in [0, 1] of the rectangle [y0, y0 + h) x [x0, x0 + w).
  Tensor tile(std::int64_t y0, std::int64_t h, std::int64_t x0, std::int64_t w) const {
    DD_CHECK(y0 >= 0 && x0 >= 0 && h >= 0 && w >= 0 && y0 + h <= height && x0 + w <= width,
             "dd::io::Image::tile: rectangle {}x{} at (x={}, y={}) is outside the {}x{} image", w, h, x0, y0, width,
             height);
    Tensor t = Tensor::empty({1, channels, h, w});
    for (int c = 0; c < channels; ++c)
      for (std::int64_t y = 0; y < h; ++y)
        for (std::int64_t x = 0; x < w; ++x) t.at(0, c, y, x) = static_cast<float>(at(y0 + y, x0 + x, c)) / 255.0f;
    return t;
  }
};

// As load_image, but keeps 8-bit pixels (16-bit files are rounded to 8 bits). When the stored
// layout already matches (gray -> 1, RGB -> 3) stb's buffer is kept without a copy.
inline Image load_image_u8(const std::string& path, int channels = 0) {
  constexpr const char* who = "dd::io::load_image_u8";
  DD_CHECK(channels == 0 || channels == 1 || channels == 3,
           "{}: '{}': channels must be 0 (as stored), 1 (gray) or 3 (RGB), got {}", who, path, channels);
  detail::Pixels px = detail::decode(path, who);
  const bool gray_in = px.n <= 2;
  const int out_c = channels != 0 ? channels : (gray_in ? 1 : 3);
  Image img;
  img.width = px.w;
  img.height = px.h;
  img.channels = out_c;
  const std::int64_t plane = img.width * img.height;
  if (!px.is16 && px.n == out_c) {
    img.pixels = std::shared_ptr<std::uint8_t>(static_cast<std::uint8_t*>(px.data.release()),
                                               [](std::uint8_t* p) { stbi_image_free(p); });
    return img;
  }
  img.pixels = std::shared_ptr<std::uint8_t>(new std::uint8_t[static_cast<std::size_t>(plane * out_c)],
                                             std::default_delete<std::uint8_t[]>());
  std::uint8_t* d = img.pixels.get();
  const double maxv = static_cast<double>(px.max_value());
  px.visit([&](const auto* s) {
    const std::int64_t n = px.n;
    const auto u8 = [&](double v) { return static_cast<std::uint8_t>(std::lround(std::min(255.0, v * 255.0 / maxv))); };
    for (std::int64_t i = 0; i < plane; ++i) {
      const auto* p = s + i * n;
      std::uint8_t* o = d + i * out_c;
      if (gray_in) {
        const std::uint8_t g = u8(p[0]);
        for (int c = 0; c < out_c; ++c) o[c] = g;
      } else if (out_c == 3) {
        for (int c = 0; c < 3; ++c) o[c] = u8(p[c]);
      } else {
        o[0] = u8(0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]);
      }
    }
  });
  return img;
}

// Loads a segmentation mask as [1, 1, H, W] class indices (floats).
//  table == nullptr: the file is a class-index image; gray values are the class indices and must be
//    < classes (an RGB file is accepted only when R == G == B; a palette PNG decodes to colours, so
//    give its palette as a ColorTable). 16-bit gray index images are read exactly.
//  table != nullptr: every pixel's RGB (gray replicated) must be one of the table's colours; the class
//    is its position in the table and must be < classes (classes <= 0: the table's size).
// Alpha is ignored. Masks should be PNG: JPEG is lossy and shifts colours/values near edges.
inline Tensor load_mask(const std::string& path, const ColorTable* table, int classes) {
  constexpr const char* who = "dd::io::load_mask";
  if (table) {
    DD_CHECK(table->size() > 0, "{}: '{}': the colour table is empty", who, path);
    if (classes <= 0) classes = static_cast<int>(table->size());
  }
  DD_CHECK(classes >= 1, "{}: '{}': classes must be >= 1, got {}", who, path, classes);
  const detail::Pixels px = detail::decode(path, who);
  const auto jpeg_note = [&]() -> std::string {
    return detail::starts_like_jpeg(path)
               ? fmt::format(". Note: '{}' is a JPEG; JPEG compression is lossy and alters mask values and "
                             "colours, so masks should be stored as PNG",
                             path)
               : std::string();
  };
  const std::int64_t H = px.h, W = px.w, plane = H * W;
  Tensor t = Tensor::empty({1, 1, H, W});
  float* d = t.data();
  const int n = px.n;

  if (!table) {
    px.visit([&](const auto* s) {
      std::int64_t bad = 0, first = -1;
      bool not_gray = false;
      for (std::int64_t i = 0; i < plane; ++i) {
        const auto* p = s + i * n;
        const std::uint32_t v = p[0];
        if (n >= 3 && (p[1] != p[0] || p[2] != p[0])) {
          not_gray = true;
          first = i;
          break;
        }
        if (v >= static_cast<std::uint32_t>(classes)) {
          if (bad++ == 0) first = i;
        }
        d[i] = static_cast<float>(v);
      }
      if (not_gray) {
        const auto* p = s + first * n;
        fail("{}: '{}' is a colour image ({} channels; pixel (x={}, y={}) has colour ({},{},{})), but no colour "
             "table was given: pass a ColorTable (palette PNGs decode to colours), or store class indices as "
             "8-bit gray{}",
             who, path, n, first % W, first / W, p[0], p[1], p[2], jpeg_note());
      }
      if (bad > 0) {
        const std::uint32_t v = s[first * n];
        const std::string hint =
            v == 255 && classes <= 2 ? " (a black/white 0/255 mask? load it with ColorTable::binary())" : "";
        fail("{}: '{}': pixel (x={}, y={}) has class index {}, but classes = {} (valid 0..{}); {} pixel(s) out "
             "of range{}{}",
             who, path, first % W, first / W, v, classes, classes - 1, bad, hint, jpeg_note());
      }
    });
    return t;
  }

  if (px.is16) fail("{}: '{}' is a 16-bit image; colour masks must be 8-bit RGB or gray", who, path);
  const auto* s = static_cast<const std::uint8_t*>(px.data.get());
  // Lookup through the previous pixel's colour first: masks are mostly runs of one colour.
  std::uint32_t last_key = 0xFFFFFFFFu;
  int last_cls = -1;
  std::int64_t bad = 0, first = -1, beyond = 0, first_beyond = -1;
  for (std::int64_t i = 0; i < plane; ++i) {
    const std::uint8_t* p = s + i * n;
    const ColorTable::Color c = n <= 2 ? ColorTable::Color{p[0], p[0], p[0]} : ColorTable::Color{p[0], p[1], p[2]};
    const std::uint32_t key = (std::uint32_t(c[0]) << 16) | (std::uint32_t(c[1]) << 8) | c[2];
    if (key != last_key) {
      last_key = key;
      last_cls = table->find(c);
    }
    if (last_cls < 0) {
      if (bad++ == 0) first = i;
      d[i] = 0.0f;
    } else {
      if (last_cls >= classes && beyond++ == 0) first_beyond = i;
      d[i] = static_cast<float>(last_cls);
    }
  }
  if (bad > 0) {
    const std::uint8_t* p = s + first * n;
    const ColorTable::Color c = n <= 2 ? ColorTable::Color{p[0], p[0], p[0]} : ColorTable::Color{p[0], p[1], p[2]};
    fail("{}: '{}': pixel (x={}, y={}) has colour ({},{},{}), which is not in the colour table [{}]; {} pixel(s) "
         "have colours outside the table{}",
         who, path, first % W, first / W, c[0], c[1], c[2], table->describe(), bad, jpeg_note());
  }
  if (beyond > 0) {
    const int k = static_cast<int>(d[first_beyond]);
    fail("{}: '{}': pixel (x={}, y={}) has the colour of class {} ({}), but classes = {}; {} pixel(s) affected",
         who, path, first_beyond % W, first_beyond / W, k, table->name(static_cast<std::size_t>(k)), classes,
         beyond);
  }
  return t;
}

// ---------------------------------------------------------------------------------------------
// Writing (atomic: path + ".tmp", then rename)
// ---------------------------------------------------------------------------------------------

// Per-pixel argmax over channels: [N, K, H, W] logits or probabilities -> [N, 1, H, W] class indices
// (ties go to the lower class).
inline Tensor argmax_classes(const Tensor& logits_in) {
  DD_CHECK(logits_in.defined() && logits_in.shape().c >= 1,
           "dd::io::argmax_classes: expected [N, K, H, W] logits with K >= 1, got {}", logits_in.shape());
  const Tensor logits = logits_in.host_f32();  // GPU or half logits too
  const Shape s = logits.shape();
  Tensor out = Tensor::empty({s.n, 1, s.h, s.w});
  for (std::int64_t n = 0; n < s.n; ++n)
    for (std::int64_t y = 0; y < s.h; ++y)
      for (std::int64_t x = 0; x < s.w; ++x) {
        float best = logits.at(n, 0, y, x);
        std::int64_t arg = 0;
        for (std::int64_t k = 1; k < s.c; ++k) {
          const float v = logits.at(n, k, y, x);
          if (v > best || (std::isnan(best) && !std::isnan(v))) {
            best = v;
            arg = k;
          }
        }
        out.at(n, 0, y, x) = static_cast<float>(arg);
      }
  return out;
}

// Writes class indices (integers 0..255 stored as floats; shape 1x1xHxW or HxWx1x1) as an 8-bit gray PNG.
inline void save_class_png(const std::string& path, const Tensor& classes) {
  constexpr const char* who = "dd::io::save_class_png";
  const detail::ClassMap m = detail::class_map(classes, who, path);
  detail::check_png_size(m.w, m.h, 1, who, path);
  std::vector<std::uint8_t> buf(static_cast<std::size_t>(m.w * m.h));
  for (std::int64_t y = 0; y < m.h; ++y)
    for (std::int64_t x = 0; x < m.w; ++x)
      buf[static_cast<std::size_t>(y * m.w + x)] =
          static_cast<std::uint8_t>(detail::class_at(m, y, x, 256, who, path, "8-bit class PNG"));
  detail::write_atomic(path, who, [&](const std::string& tmp) {
    return stbi_write_png(tmp.c_str(), int(m.w), int(m.h), 1, buf.data(), int(m.w)) != 0;
  });
}

// Writes the colour-coded mask: class k becomes table.colors[k].
inline void save_color_png(const std::string& path, const Tensor& classes, const ColorTable& table) {
  constexpr const char* who = "dd::io::save_color_png";
  const detail::ClassMap m = detail::class_map(classes, who, path);
  DD_CHECK(table.size() > 0, "{}: '{}': the colour table is empty", who, path);
  detail::check_png_size(m.w, m.h, 3, who, path);
  const std::string what = fmt::format("colour table with {} entries", table.size());
  std::vector<std::uint8_t> buf(static_cast<std::size_t>(m.w * m.h * 3));
  for (std::int64_t y = 0; y < m.h; ++y)
    for (std::int64_t x = 0; x < m.w; ++x) {
      const auto& c = table.colors[static_cast<std::size_t>(
          detail::class_at(m, y, x, static_cast<int>(table.size()), who, path, what.c_str()))];
      std::copy(c.begin(), c.end(), buf.begin() + (y * m.w + x) * 3);
    }
  detail::write_atomic(path, who, [&](const std::string& tmp) {
    return stbi_write_png(tmp.c_str(), int(m.w), int(m.h), 3, buf.data(), int(m.w * 3)) != 0;
  });
}

// Writes image * (1 - alpha) + colour(class) * alpha as RGB. image: [1, C, H, W] in [0, 1], C = 1 or 3.
inline void save_overlay_png(const std::string& path, const Tensor& image, const Tensor& classes,
                             const ColorTable& table, float alpha = 0.5f) {
  constexpr const char* who = "dd::io::save_overlay_png";
  const detail::ClassMap m = detail::class_map(classes, who, path);
  DD_CHECK(table.size() > 0, "{}: '{}': the colour table is empty", who, path);
  DD_CHECK(alpha >= 0.0f && alpha <= 1.0f, "{}: '{}': alpha must be in [0, 1], got {}", who, path, alpha);
  DD_CHECK(image.defined(), "{}: '{}': the image tensor is undefined", who, path);
  const Shape s = image.shape();
  DD_CHECK(s.n == 1 && (s.c == 1 || s.c == 3) && s.h == m.h && s.w == m.w,
           "{}: '{}': image must be 1x1x{}x{} or 1x3x{}x{} to match the classes, got {}", who, path, m.h, m.w, m.h,
           m.w, s);
  detail::check_png_size(m.w, m.h, 3, who, path);
  const std::string what = fmt::format("colour table with {} entries", table.size());
  std::vector<std::uint8_t> buf(static_cast<std::size_t>(m.w * m.h * 3));
  for (std::int64_t y = 0; y < m.h; ++y)
    for (std::int64_t x = 0; x < m.w; ++x) {
      const auto& col = table.colors[static_cast<std::size_t>(
          detail::class_at(m, y, x, static_cast<int>(table.size()), who, path, what.c_str()))];
      for (int c = 0; c < 3; ++c) {
        float v = image.at(0, s.c == 3 ? c : 0, y, x);
        v = std::isnan(v) ? 0.0f : std::clamp(v, 0.0f, 1.0f);
        buf[static_cast<std::size_t>((y * m.w + x) * 3 + c)] =
            detail::to_u8((1.0f - alpha) * v + alpha * (static_cast<float>(col[c]) / 255.0f));
      }
    }
  detail::write_atomic(path, who, [&](const std::string& tmp) {
    return stbi_write_png(tmp.c_str(), int(m.w), int(m.h), 3, buf.data(), int(m.w * 3)) != 0;
  });
}

}  // namespace dd::io
