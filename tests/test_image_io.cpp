// Image and mask I/O (dd/io/image.hpp on stb) and the band-by-band PNG writer (dd/io/png_stream.hpp).
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>
#include <zlib.h>

#include "dd/core/tensor.hpp"
#include "test_files.hpp"
#include "dd/io/image.hpp"
#include "dd/io/png_stream.hpp"

namespace fs = std::filesystem;
using dd::Tensor;
using dd::io::ColorTable;

using ddtest::contains;
using ddtest::error_of;

namespace {

struct TempDir : ddtest::TempDir {
  TempDir() : ddtest::TempDir("dd_image_io") {}
};

void write_png(const std::string& path, int w, int h, int comp, const std::vector<std::uint8_t>& px) {
  REQUIRE(px.size() == std::size_t(w) * h * comp);
  REQUIRE(stbi_write_png(path.c_str(), w, h, comp, px.data(), w * comp) != 0);
}

std::vector<std::uint8_t> pattern(int w, int h, int comp, int seed) {
  std::vector<std::uint8_t> px(std::size_t(w) * h * comp);
  for (std::size_t i = 0; i < px.size(); ++i) px[i] = static_cast<std::uint8_t>((i * 37 + seed * 101 + i / 7) % 256);
  return px;
}

}  // namespace

TEST_CASE("image io: gray and RGB PNG round trips are exact (k / 255)") {
  TempDir tmp;
  const int w = 37, h = 23;
  const auto gray = pattern(w, h, 1, 1), rgb = pattern(w, h, 3, 2);
  write_png(tmp / "gray.png", w, h, 1, gray);
  write_png(tmp / "rgb.png", w, h, 3, rgb);

  const auto ig = dd::io::probe_image(tmp / "gray.png");
  CHECK(ig.width == w);
  CHECK(ig.height == h);
  CHECK(ig.channels == 1);
  CHECK(ig.bits == 8);
  CHECK(dd::io::probe_image(tmp / "rgb.png").channels == 3);

  const Tensor g = dd::io::load_image(tmp / "gray.png");
  REQUIRE(g.shape() == dd::Shape{1, 1, h, w});
  bool exact = true;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) exact = exact && g.at(0, 0, y, x) == float(gray[y * w + x]) / 255.0f;
  CHECK(exact);

  const Tensor c = dd::io::load_image(tmp / "rgb.png");
  REQUIRE(c.shape() == dd::Shape{1, 3, h, w});
  exact = true;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int k = 0; k < 3; ++k) exact = exact && c.at(0, k, y, x) == float(rgb[(y * w + x) * 3 + k]) / 255.0f;
  CHECK(exact);
}

TEST_CASE("image io: channel conversions (gray <-> RGB, alpha dropped)") {
  TempDir tmp;
  const int w = 5, h = 4;
  const auto gray = pattern(w, h, 1, 3), rgb = pattern(w, h, 3, 4), ga = pattern(w, h, 2, 5), rgba = pattern(w, h, 4, 6);
  write_png(tmp / "g.png", w, h, 1, gray);
  write_png(tmp / "rgb.png", w, h, 3, rgb);
  write_png(tmp / "ga.png", w, h, 2, ga);
  write_png(tmp / "rgba.png", w, h, 4, rgba);

  const Tensor g3 = dd::io::load_image(tmp / "g.png", 3);
  REQUIRE(g3.shape() == dd::Shape{1, 3, h, w});
  for (int k = 0; k < 3; ++k) CHECK(g3.at(0, k, 2, 3) == float(gray[2 * w + 3]) / 255.0f);

  const Tensor y = dd::io::load_image(tmp / "rgb.png", 1);
  REQUIRE(y.shape() == dd::Shape{1, 1, h, w});
  for (int i = 0; i < w * h; ++i) {
    const double luma = (0.299 * rgb[i * 3] + 0.587 * rgb[i * 3 + 1] + 0.114 * rgb[i * 3 + 2]) / 255.0;
    CHECK(y.data()[i] == doctest::Approx(luma).epsilon(1e-5));
  }

  const Tensor a1 = dd::io::load_image(tmp / "ga.png");
  REQUIRE(a1.shape() == dd::Shape{1, 1, h, w});
  CHECK(a1.at(0, 0, 1, 2) == float(ga[(1 * w + 2) * 2]) / 255.0f);
  const Tensor a3 = dd::io::load_image(tmp / "rgba.png");
  REQUIRE(a3.shape() == dd::Shape{1, 3, h, w});
  for (int k = 0; k < 3; ++k) CHECK(a3.at(0, k, 3, 4) == float(rgba[(3 * w + 4) * 4 + k]) / 255.0f);
  CHECK(dd::io::probe_image(tmp / "rgba.png").channels == 4);

  CHECK(contains(error_of([&] { dd::io::load_image(tmp / "g.png", 2); }), "channels must be 0"));
}

// A minimal 16-bit gray PNG (stb_image_write only writes 8 bits): one IDAT, filter 0 per row.
void write_png16(const std::string& path, int w, int h, const std::vector<std::uint16_t>& v) {
  REQUIRE(v.size() == std::size_t(w) * h);
  std::vector<unsigned char> raw;
  for (int y = 0; y < h; ++y) {
    raw.push_back(0);
    for (int x = 0; x < w; ++x) raw.push_back(v[y * w + x] >> 8), raw.push_back(v[y * w + x] & 0xFF);
  }
  uLongf zlen = compressBound(static_cast<uLong>(raw.size()));
  std::vector<unsigned char> z(zlen);
  REQUIRE(compress(z.data(), &zlen, raw.data(), static_cast<uLong>(raw.size())) == Z_OK);
  z.resize(zlen);
  std::ofstream f(path, std::ios::binary);
  const auto u32 = [&](std::uint32_t x) { f.put(char(x >> 24)).put(char(x >> 16)).put(char(x >> 8)).put(char(x)); };
  const auto chunk = [&](const char* type, const std::vector<unsigned char>& d) {
    u32(static_cast<std::uint32_t>(d.size()));
    f.write(type, 4);
    f.write(reinterpret_cast<const char*>(d.data()), static_cast<std::streamsize>(d.size()));
    uLong crc = crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(type), 4);
    if (!d.empty()) crc = crc32(crc, d.data(), static_cast<uInt>(d.size()));
    u32(static_cast<std::uint32_t>(crc));
  };
  f.write("\x89PNG\r\n\x1a\n", 8);
  chunk("IHDR", {0, 0, 0, static_cast<unsigned char>(w), 0, 0, 0, static_cast<unsigned char>(h), 16, 0, 0, 0, 0});
  chunk("IDAT", z);
  chunk("IEND", {});
}

TEST_CASE("image io: load_image_u8 keeps bytes and converts channels like load_image") {
  TempDir tmp;
  const int w = 7, h = 3;
  const auto gray = pattern(w, h, 1, 11), rgb = pattern(w, h, 3, 12), rgba = pattern(w, h, 4, 13);
  write_png(tmp / "g.png", w, h, 1, gray);
  write_png(tmp / "rgb.png", w, h, 3, rgb);
  write_png(tmp / "rgba.png", w, h, 4, rgba);
  const dd::io::Image c = dd::io::load_image_u8(tmp / "rgb.png");
  REQUIRE(c.width == w);
  REQUIRE(c.height == h);
  REQUIRE(c.channels == 3);
  CHECK(std::equal(rgb.begin(), rgb.end(), c.data()));
  CHECK(c.tile(0, h, 0, w).to_vector() == dd::io::load_image(tmp / "rgb.png").to_vector());
  const dd::io::Image g3 = dd::io::load_image_u8(tmp / "g.png", 3);
  CHECK(g3.at(2, 5, 0) == gray[2 * w + 5]);
  CHECK(g3.at(2, 5, 2) == gray[2 * w + 5]);
  const dd::io::Image a = dd::io::load_image_u8(tmp / "rgba.png");
  REQUIRE(a.channels == 3);
  CHECK(a.at(1, 6, 1) == rgba[(1 * w + 6) * 4 + 1]);
  const dd::io::Image y = dd::io::load_image_u8(tmp / "rgb.png", 1);
  const float luma = dd::io::load_image(tmp / "rgb.png", 1).at(0, 0, 2, 3) * 255.0f;
  CHECK(std::abs(int(y.at(2, 3, 0)) - int(std::lround(luma))) == 0);
  CHECK(contains(error_of([&] { dd::io::load_image_u8(tmp / "missing.png"); }), tmp / "missing.png"));
  CHECK(contains(error_of([&] { c.tile(1, 3, 0, 1); }), "outside"));
}

TEST_CASE("image io: 16-bit gray PNG loads as v / 65535, and as exact class indices") {
  TempDir tmp;
  const std::vector<std::uint16_t> v = {0, 1, 257, 40000, 65535, 3};
  write_png16(tmp / "d.png", 3, 2, v);
  const auto info = dd::io::probe_image(tmp / "d.png");
  CHECK(info.bits == 16);
  CHECK(info.channels == 1);
  const Tensor t = dd::io::load_image(tmp / "d.png");
  REQUIRE(t.shape() == dd::Shape{1, 1, 2, 3});
  for (int i = 0; i < 6; ++i) CHECK(t.data()[i] == float(v[i]) / 65535.0f);
  const Tensor m = dd::io::load_mask(tmp / "d.png", nullptr, 65536);
  for (int i = 0; i < 6; ++i) CHECK(m.data()[i] == float(v[i]));
  const dd::io::Image u8 = dd::io::load_image_u8(tmp / "d.png");
  CHECK(u8.at(0, 2, 0) == 1);  // 257 / 257
  CHECK(u8.at(1, 0, 0) == 156);  // 40000 * 255 / 65535 = 155.6
  CHECK(u8.at(1, 1, 0) == 255);
  const ColorTable b = ColorTable::binary();
  CHECK(contains(error_of([&] { dd::io::load_mask(tmp / "d.png", &b, 2); }), "16-bit"));

  // 16-bit binary PGM: this stb build swaps its bytes, so it is refused rather than misread.
  {
    std::ofstream f(tmp / "d.pgm", std::ios::binary);
    f << "P5\n3 2\n65535\n";
    for (std::uint16_t s : v) f.put(char(s >> 8)).put(char(s & 0xFF));
  }
  CHECK(contains(error_of([&] { dd::io::load_image(tmp / "d.pgm"); }), "16-bit PGM"));
}

TEST_CASE("image io: errors for a missing file and a corrupt file name the path") {
  TempDir tmp;
  const std::string missing = tmp / "nope.png";
  std::string e = error_of([&] { dd::io::load_image(missing); });
  CHECK(contains(e, missing));
  CHECK(contains(e, "no such file"));
  CHECK(contains(error_of([&] { dd::io::probe_image(missing); }), missing));
  CHECK(contains(error_of([&] { dd::io::load_mask(missing, nullptr, 2); }), missing));

  const std::string corrupt = tmp / "corrupt.png";
  {
    std::mt19937 rng(7);
    std::ofstream f(corrupt, std::ios::binary);
    for (int i = 0; i < 1000; ++i) f.put(static_cast<char>(rng() & 0xFF));
  }
  e = error_of([&] { dd::io::load_image(corrupt); });
  CHECK(contains(e, corrupt));
  CHECK(contains(e, "corrupt"));
  CHECK(contains(e, stbi_failure_reason()));  // the stb reason is quoted
  CHECK(contains(error_of([&] { dd::io::probe_image(corrupt); }), corrupt));

  // A truncated PNG.
  const auto px = pattern(64, 64, 3, 9);
  write_png(tmp / "full.png", 64, 64, 3, px);
  std::string bytes;
  {
    std::ifstream f(tmp / "full.png", std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(f), {});
  }
  {
    std::ofstream f(tmp / "cut.png", std::ios::binary);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
  }
  CHECK(contains(error_of([&] { dd::io::load_image(tmp / "cut.png"); }), tmp / "cut.png"));
}

TEST_CASE("image io: class-index masks, and an index >= classes names the pixel and value") {
  TempDir tmp;
  const int w = 6, h = 3;
  std::vector<std::uint8_t> px(w * h);
  for (int i = 0; i < w * h; ++i) px[i] = static_cast<std::uint8_t>(i % 3);
  write_png(tmp / "m.png", w, h, 1, px);
  const Tensor m = dd::io::load_mask(tmp / "m.png", nullptr, 3);
  REQUIRE(m.shape() == dd::Shape{1, 1, h, w});
  for (int i = 0; i < w * h; ++i) CHECK(m.data()[i] == float(i % 3));

  px[2 * w + 4] = 7;  // (x=4, y=2)
  write_png(tmp / "bad.png", w, h, 1, px);
  const std::string e = error_of([&] { dd::io::load_mask(tmp / "bad.png", nullptr, 3); });
  CHECK(contains(e, tmp / "bad.png"));
  CHECK(contains(e, "x=4, y=2"));
  CHECK(contains(e, "class index 7"));
  // With classes = 2 the first offender is the first 2 at (x=2, y=0).
  CHECK(contains(error_of([&] { dd::io::load_mask(tmp / "m.png", nullptr, 2); }), "x=2, y=0"));

  // A colour image is not an index mask; a gray image stored as RGB is.
  std::vector<std::uint8_t> rgb(w * h * 3);
  for (int i = 0; i < w * h; ++i) rgb[i * 3] = rgb[i * 3 + 1] = rgb[i * 3 + 2] = static_cast<std::uint8_t>(i % 2);
  write_png(tmp / "grayrgb.png", w, h, 3, rgb);
  CHECK(dd::io::load_mask(tmp / "grayrgb.png", nullptr, 2).data()[5] == 1.0f);
  rgb[3 * 3 + 1] = 200;
  write_png(tmp / "colour.png", w, h, 3, rgb);
  CHECK(contains(error_of([&] { dd::io::load_mask(tmp / "colour.png", nullptr, 2); }), "ColorTable"));
}

TEST_CASE("image io: colour masks with the DeepGlobe table; an unknown colour names the pixel") {
  TempDir tmp;
  const ColorTable t = ColorTable::deepglobe();
  REQUIRE(t.size() == 7);
  CHECK(t.names[4] == "water");
  CHECK(t.colors[0] == ColorTable::Color{0, 255, 255});
  CHECK(t.colors[6] == ColorTable::Color{0, 0, 0});
  const int w = 9, h = 5;
  std::vector<std::uint8_t> px(w * h * 3);
  for (int i = 0; i < w * h; ++i)
    for (int k = 0; k < 3; ++k) px[i * 3 + k] = t.colors[(i * 5) % 7][k];
  write_png(tmp / "dg.png", w, h, 3, px);
  const Tensor m = dd::io::load_mask(tmp / "dg.png", &t, 7);
  REQUIRE(m.shape() == dd::Shape{1, 1, h, w});
  for (int i = 0; i < w * h; ++i) CHECK(m.data()[i] == float((i * 5) % 7));
  CHECK(dd::io::load_mask(tmp / "dg.png", &t, 0).data()[1] == 5.0f);  // classes 0 = table size

  // Class 6 (unknown, black) is beyond classes = 6.
  const std::string e6 = error_of([&] { dd::io::load_mask(tmp / "dg.png", &t, 6); });
  CHECK(contains(e6, "unknown"));

  const int bx = 7, by = 3;
  px[(by * w + bx) * 3 + 0] = 10;
  px[(by * w + bx) * 3 + 1] = 20;
  px[(by * w + bx) * 3 + 2] = 30;
  write_png(tmp / "bad.png", w, h, 3, px);
  const std::string e = error_of([&] { dd::io::load_mask(tmp / "bad.png", &t, 7); });
  CHECK(contains(e, tmp / "bad.png"));
  CHECK(contains(e, "x=7, y=3"));
  CHECK(contains(e, "(10,20,30)"));
  CHECK(contains(e, "urban (0,255,255)"));  // the table is listed
  CHECK_FALSE(contains(e, "JPEG"));

  // Gray masks are replicated to RGB before the lookup.
  std::vector<std::uint8_t> bw(w * h);
  for (int i = 0; i < w * h; ++i) bw[i] = (i % 4 == 0) ? 255 : 0;
  write_png(tmp / "bw.png", w, h, 1, bw);
  const ColorTable b = ColorTable::binary();
  const Tensor mb = dd::io::load_mask(tmp / "bw.png", &b, 2);
  for (int i = 0; i < w * h; ++i) CHECK(mb.data()[i] == (i % 4 == 0 ? 1.0f : 0.0f));
  // The same file read as indices hints at the binary table.
  CHECK(contains(error_of([&] { dd::io::load_mask(tmp / "bw.png", nullptr, 2); }), "ColorTable::binary()"));
}

TEST_CASE("image io: JPEG masks decode, and errors say masks should be PNG") {
  TempDir tmp;
  const ColorTable t = ColorTable::deepglobe();
  const int w = 16, h = 16;
  std::vector<std::uint8_t> px(w * h * 3);
  for (int i = 0; i < w * h; ++i)
    for (int k = 0; k < 3; ++k) px[i * 3 + k] = t.colors[((i % w) + (i / w)) % 7][k];  // 1-pixel stripes
  const std::string jpg = tmp / "mask.jpg";
  REQUIRE(stbi_write_jpg(jpg.c_str(), w, h, 3, px.data(), 90) != 0);
  CHECK(dd::io::load_image(jpg).shape() == dd::Shape{1, 3, h, w});
  const std::string e = error_of([&] { dd::io::load_mask(jpg, &t, 7); });
  CHECK(contains(e, jpg));
  CHECK(contains(e, "JPEG"));
  CHECK(contains(e, "PNG"));
}

TEST_CASE("image io: ColorTable::parse accepts r,g,b lists and names, and rejects bad entries") {
  const ColorTable a = ColorTable::parse("0,0,0;255,255,255");
  REQUIRE(a.size() == 2);
  CHECK(a.colors[1] == ColorTable::Color{255, 255, 255});
  CHECK(a.names.empty());
  CHECK(a.name(1) == "class 1");

  const ColorTable b = ColorTable::parse(" water = 0, 0, 255 ; land=#FF8000; ");
  REQUIRE(b.size() == 2);
  CHECK(b.names[0] == "water");
  CHECK(b.names[1] == "land");
  CHECK(b.colors[1] == ColorTable::Color{255, 128, 0});

  CHECK(contains(error_of([] { ColorTable::parse(""); }), "no colours"));
  CHECK(contains(error_of([] { ColorTable::parse("1,2"); }), "2 component"));
  CHECK(contains(error_of([] { ColorTable::parse("1,2,300"); }), "'300'"));
  CHECK(contains(error_of([] { ColorTable::parse("1,x,3"); }), "'x'"));
  CHECK(contains(error_of([] { ColorTable::parse("1,2,3;;4,5,6"); }), "entry 2"));
  CHECK(contains(error_of([] { ColorTable::parse("1,2,3;a=1,2,3"); }), "repeats colour (1,2,3)"));
  CHECK(contains(error_of([] { ColorTable::parse("=1,2,3"); }), "no name"));
  CHECK(contains(error_of([] { ColorTable::parse("#12345"); }), "#rrggbb"));
}

TEST_CASE("image io: argmax, class/colour/overlay PNG writers round trip atomically") {
  TempDir tmp;
  const int K = 3, h = 4, w = 5;
  Tensor logits = Tensor::zeros({1, K, h, w});
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) logits.at(0, (x + 2 * y) % K, y, x) = 1.0f + float(x);
  const Tensor cls = dd::io::argmax_classes(logits);
  REQUIRE(cls.shape() == dd::Shape{1, 1, h, w});
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) CHECK(cls.at(0, 0, y, x) == float((x + 2 * y) % K));

  dd::io::save_class_png(tmp / "c.png", cls);
  const Tensor back = dd::io::load_mask(tmp / "c.png", nullptr, K);
  CHECK(back.to_vector() == cls.to_vector());
  // A 2-D [H, W] map (trailing ones) writes the same image.
  dd::io::save_class_png(tmp / "c2.png", cls.reshape({h, w, 1, 1}));
  CHECK(dd::io::load_mask(tmp / "c2.png", nullptr, K).to_vector() == cls.to_vector());

  const ColorTable t = ColorTable::deepglobe();
  dd::io::save_color_png(tmp / "col.png", cls, t);
  CHECK(dd::io::probe_image(tmp / "col.png").channels == 3);
  CHECK(dd::io::load_mask(tmp / "col.png", &t, 7).to_vector() == cls.to_vector());

  Tensor img = Tensor::full({1, 1, h, w}, 0.5f);
  dd::io::save_overlay_png(tmp / "ov.png", img, cls, t, 0.25f);
  const Tensor ov = dd::io::load_image(tmp / "ov.png");
  REQUIRE(ov.shape() == dd::Shape{1, 3, h, w});
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int k = 0; k < 3; ++k) {
        const float want = 0.75f * 0.5f + 0.25f * t.colors[static_cast<int>(cls.at(0, 0, y, x))][k] / 255.0f;
        CHECK(std::fabs(ov.at(0, k, y, x) - want) <= 0.5f / 255.0f + 1e-6f);
      }
  CHECK(tmp.entries() == 4);  // no leftover .tmp files

  // Overwriting replaces the file.
  dd::io::save_class_png(tmp / "c.png", Tensor::zeros({1, 1, 2, 2}));
  CHECK(dd::io::probe_image(tmp / "c.png").width == 2);

  Tensor bad = cls.clone();
  bad.at(0, 0, 1, 3) = 300.0f;
  const std::string e = error_of([&] { dd::io::save_class_png(tmp / "bad.png", bad); });
  CHECK(contains(e, tmp / "bad.png"));
  CHECK(contains(e, "x=3, y=1"));
  CHECK(contains(error_of([&] { dd::io::save_color_png(tmp / "bad.png", cls, ColorTable::binary()); }), "x=2, y=0"));
  const std::string nodir = tmp / "no/such/dir/out.png";
  CHECK(contains(error_of([&] { dd::io::save_class_png(nodir, cls); }), nodir));
  CHECK(contains(error_of([&] { dd::io::save_class_png(tmp / "x.png", Tensor::zeros({1, 2, h, w})); }), "1x2x4x5"));
  CHECK(contains(error_of([&] { dd::io::save_overlay_png(tmp / "x.png", Tensor::zeros({1, 1, 2, 2}), cls, t); }),
                 "1x1x2x2"));
  CHECK(tmp.entries() == 4);
}

TEST_CASE("image io: streaming PNG writer, 1000x700 gray band by band, read back exactly") {
  TempDir tmp;
  const int w = 1000, h = 700, band = 64;  // 700 = 10 * 64 + 60: a short last band
  const auto value = [](int x, int y) { return static_cast<std::uint8_t>((x * 7 + y * 13 + (x * y) / 97) & 0xFF); };
  std::vector<int> starts;
  dd::io::save_gray_png_rows(
      tmp / "big.png", w, h,
      [&](int row0, int rows, std::uint8_t* buf) {
        starts.push_back(row0);
        CHECK(rows == std::min(band, h - row0));
        for (int r = 0; r < rows; ++r)
          for (int x = 0; x < w; ++x) buf[std::size_t(r) * w + x] = value(x, row0 + r);
      },
      band);
  CHECK(starts.size() == 11);
  CHECK(starts.back() == 640);
  CHECK(tmp.entries() == 1);

  int rw = 0, rh = 0, rn = 0;
  const std::string path = tmp / "big.png";
  unsigned char* px = stbi_load(path.c_str(), &rw, &rh, &rn, 0);
  REQUIRE(px != nullptr);
  CHECK(rw == w);
  CHECK(rh == h);
  CHECK(rn == 1);
  long long mismatches = 0;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) mismatches += px[std::size_t(y) * w + x] != value(x, y);
  stbi_image_free(px);
  CHECK(mismatches == 0);

  // RGB variant, and a band larger than the image.
  dd::io::save_rgb_png_rows(
      tmp / "rgb.png", 3, 2,
      [](int, int rows, std::uint8_t* buf) {
        for (int i = 0; i < rows * 3 * 3; ++i) buf[i] = static_cast<std::uint8_t>(i * 10);
      },
      1000);
  const Tensor c = dd::io::load_image(tmp / "rgb.png");
  REQUIRE(c.shape() == dd::Shape{1, 3, 2, 3});
  CHECK(c.at(0, 2, 1, 2) == 170.0f / 255.0f);  // byte (1*3 + 2)*3 + 2 = 17

  // An exception from fill leaves no file behind; bad arguments name the path.
  CHECK_THROWS_AS(dd::io::save_gray_png_rows(tmp / "throw.png", 10, 10,
                                             [](int, int, std::uint8_t*) { throw std::runtime_error("fill"); }),
                  std::runtime_error);
  CHECK(tmp.entries() == 2);
  CHECK(contains(error_of([&] { dd::io::save_gray_png_rows(tmp / "z.png", 0, 5, [](int, int, std::uint8_t*) {}); }),
                 tmp / "z.png"));
  CHECK(contains(error_of([&] {
                   dd::io::save_gray_png_rows(tmp / "no/dir/z.png", 5, 5, [](int, int, std::uint8_t*) {});
                 }),
                 "does not exist"));
}

TEST_CASE("image io: ISBI 2012 membrane image and label from the shared data") {
  const std::string root = std::string(DD_SHARED_DATA_DIR) + "/isbi2012-membrane";
  const std::string image = root + "/image/0.png", label = root + "/label/0.png";
  INFO("shared data: ", root);
  REQUIRE(fs::exists(image));
  REQUIRE(fs::exists(label));

  const auto info = dd::io::probe_image(image);
  CHECK(info.width == 512);
  CHECK(info.height == 512);
  CHECK(info.channels == 1);
  const Tensor x = dd::io::load_image(image);
  REQUIRE(x.shape() == dd::Shape{1, 1, 512, 512});
  float lo = 1.0f, hi = 0.0f;
  for (float v : x.to_vector()) lo = std::min(lo, v), hi = std::max(hi, v);
  CHECK(lo >= 0.0f);
  CHECK(hi <= 1.0f);
  CHECK(hi > lo);

  const ColorTable b = ColorTable::binary();
  const Tensor m = dd::io::load_mask(label, &b, 2);
  REQUIRE(m.shape() == dd::Shape{1, 1, 512, 512});
  double membrane = 0;
  for (float v : m.to_vector()) membrane += v == 0.0f;
  membrane /= 512.0 * 512.0;
  INFO("membrane fraction ", membrane);
  CHECK(membrane > 0.1);
  CHECK(membrane < 0.4);
}
