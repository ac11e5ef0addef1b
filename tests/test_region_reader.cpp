// Region reader (dd/io/region_reader.hpp): rectangles of PNG / PNM files read without the rest of the
// image, compared pixel by pixel with stb_image's decode of the whole file.
#include <doctest/doctest.h>

#include <dd/ddunet.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>
#include <zlib.h>

#include "test_files.hpp"
#include "dd/io/image.hpp"
#include "dd/io/png_stream.hpp"
#include "dd/io/region_reader.hpp"

namespace fs = std::filesystem;
using dd::io::Image;
using dd::io::kStoredChannels;

using ddtest::contains;
using ddtest::error_of;

namespace {

struct TempDir : ddtest::TempDir {
  TempDir() : ddtest::TempDir("dd_region_reader") {}
};

std::vector<std::uint8_t> file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}
void put_file(const std::string& path, const std::vector<std::uint8_t>& b) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  REQUIRE(f.good());
}

// Random samples with smooth stretches, so encoders pick varied filters and matches.
std::vector<std::uint8_t> samples(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<std::uint8_t> v(n);
  for (std::size_t i = 0; i < n; ++i)
    v[i] = (i / 61) % 3 == 0 ? static_cast<std::uint8_t>(i * 3 + seed) : static_cast<std::uint8_t>(rng() & 0xFF);
  return v;
}

// A whole-image reference decode: interleaved 8-bit pixels.
struct Ref {
  std::int64_t w = 0, h = 0;
  int c = 0;
  std::vector<std::uint8_t> px;
};
Ref stb_raw(const std::string& path) {  // all stored channels, as read_region(..., kStoredChannels)
  int w = 0, h = 0, n = 0;
  stbi_uc* p = stbi_load(path.c_str(), &w, &h, &n, 0);
  REQUIRE(p != nullptr);
  Ref r{w, h, n, std::vector<std::uint8_t>(p, p + std::size_t(w) * h * n)};
  stbi_image_free(p);
  return r;
}
Ref u8_ref(const std::string& path, int channels) {
  const Image im = dd::io::load_image_u8(path, channels);
  return {im.width, im.height, im.channels,
          std::vector<std::uint8_t>(im.data(), im.data() + im.width * im.height * im.channels)};
}

// Number of samples of `img` that differ from the rectangle of `ref` at (y0, x0).
std::int64_t mismatches(const Image& img, const Ref& ref, std::int64_t y0, std::int64_t x0) {
  if (img.channels != ref.c) return -1;
  std::int64_t bad = 0;
  for (std::int64_t y = 0; y < img.height; ++y)
    for (std::int64_t x = 0; x < img.width; ++x)
      for (int c = 0; c < img.channels; ++c)
        bad += img.at(y, x, c) != ref.px[std::size_t(((y0 + y) * ref.w + x0 + x) * ref.c + c)];
  return bad;
}

// Reads the rectangles of `path` in every channel mode and compares them with stb / load_image_u8.
void check_regions(const std::string& path, const std::vector<std::array<std::int64_t, 4>>& rects) {
  const std::vector<std::pair<int, Ref>> refs = {
      {kStoredChannels, stb_raw(path)}, {0, u8_ref(path, 0)}, {1, u8_ref(path, 1)}, {3, u8_ref(path, 3)}};
  for (const auto& [mode, ref] : refs)
    for (const auto& [y0, x0, h, w] : rects) {
      CAPTURE(path);
      CAPTURE(mode);
      CAPTURE(y0);
      CAPTURE(x0);
      CAPTURE(h);
      CAPTURE(w);
      const Image img = dd::io::read_region(path, y0, x0, h, w, mode);
      REQUIRE(img.height == h);
      REQUIRE(img.width == w);
      CHECK(mismatches(img, ref, y0, x0) == 0);
    }
}

// Corners, single pixels, the full image, bands, a column strip and random rectangles of a W x H image.
std::vector<std::array<std::int64_t, 4>> test_rects(std::int64_t W, std::int64_t H, unsigned seed) {
  std::vector<std::array<std::int64_t, 4>> r = {{0, 0, H, W},         {0, 0, 1, 1},          {H - 1, W - 1, 1, 1},
                                                {0, W - 1, 1, 1},      {H - 1, 0, 1, 1},      {H / 2, W / 3, 1, 1},
                                                {H / 3, 0, H / 4, W},  {H - 1, 0, 1, W},      {0, W / 2, H, 3},
                                                {5, 7, H - 10, W - 9}, {0, 0, H / 2, W / 2}, {H / 2, W / 2, H - H / 2, W - W / 2}};
  std::mt19937 rng(seed);
  for (int i = 0; i < 12; ++i) {
    const std::int64_t y0 = rng() % H, x0 = rng() % W;
    r.push_back({y0, x0, 1 + std::int64_t(rng() % (H - y0)), 1 + std::int64_t(rng() % (W - x0))});
  }
  return r;
}

// ---- a minimal PNG encoder, so the tests control filters, chunk splits, palettes and header fields ----
void be32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<std::uint8_t>(v >> s));
}
void chunk(std::vector<std::uint8_t>& out, const char* type, const std::vector<std::uint8_t>& data) {
  be32(out, static_cast<std::uint32_t>(data.size()));
  const std::size_t start = out.size();
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), data.begin(), data.end());
  const uLong crc = crc32(0L, out.data() + start, static_cast<uInt>(out.size() - start));
  be32(out, static_cast<std::uint32_t>(crc));
}

struct PngSpec {
  int w = 0, h = 0;
  int color = 0;  // PNG colour type
  int depth = 8;
  int interlace = 0;
  std::vector<std::uint8_t> plte, trns;
  std::size_t idat_split = 1 << 20;  // bytes per IDAT chunk
  int level = 6;                     // zlib level (0: stored blocks, byte positions known)
  bool text_chunk = false;           // an ancillary chunk before IDAT
};

int png_bpp(const PngSpec& s) {
  const int ch = s.color == 0 ? 1 : s.color == 2 ? 3 : s.color == 3 ? 1 : s.color == 4 ? 2 : 4;
  return ch * s.depth / 8;
}

// Row y uses filter type y % 5 (None, Sub, Up, Average, Paeth).
std::vector<std::uint8_t> encode_png(const PngSpec& s, const std::vector<std::uint8_t>& px) {
  const int bpp = png_bpp(s);
  const std::size_t row = std::size_t(s.w) * bpp;
  REQUIRE(px.size() == row * s.h);
  std::vector<std::uint8_t> raw;
  for (int y = 0; y < s.h; ++y) {
    const int f = y % 5;
    raw.push_back(static_cast<std::uint8_t>(f));
    const std::uint8_t* x = px.data() + y * row;
    const std::uint8_t* b = y ? x - row : nullptr;
    for (std::size_t i = 0; i < row; ++i) {
      const int a = i >= std::size_t(bpp) ? x[i - bpp] : 0, up = b ? b[i] : 0,
                c = b && i >= std::size_t(bpp) ? b[i - bpp] : 0;
      int pred = 0;
      if (f == 1) pred = a;
      if (f == 2) pred = up;
      if (f == 3) pred = (a + up) / 2;
      if (f == 4) {
        const int p = a + up - c, pa = std::abs(p - a), pb = std::abs(p - up), pc = std::abs(p - c);
        pred = pa <= pb && pa <= pc ? a : (pb <= pc ? up : c);
      }
      raw.push_back(static_cast<std::uint8_t>(x[i] - pred));
    }
  }
  std::vector<std::uint8_t> z(compressBound(static_cast<uLong>(raw.size())));
  uLongf zn = static_cast<uLongf>(z.size());
  REQUIRE(compress2(z.data(), &zn, raw.data(), static_cast<uLong>(raw.size()), s.level) == Z_OK);
  z.resize(zn);

  std::vector<std::uint8_t> out = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  std::vector<std::uint8_t> ihdr;
  be32(ihdr, static_cast<std::uint32_t>(s.w));
  be32(ihdr, static_cast<std::uint32_t>(s.h));
  ihdr.insert(ihdr.end(), {static_cast<std::uint8_t>(s.depth), static_cast<std::uint8_t>(s.color), 0, 0,
                           static_cast<std::uint8_t>(s.interlace)});
  chunk(out, "IHDR", ihdr);
  if (s.text_chunk) chunk(out, "tEXt", {'C', 'o', 'm', 'm', 'e', 'n', 't', 0, 'h', 'i'});
  if (!s.plte.empty()) chunk(out, "PLTE", s.plte);
  if (!s.trns.empty()) chunk(out, "tRNS", s.trns);
  for (std::size_t i = 0; i < z.size(); i += s.idat_split)
    chunk(out, "IDAT", std::vector<std::uint8_t>(z.begin() + std::ptrdiff_t(i),
                                                 z.begin() + std::ptrdiff_t(std::min(z.size(), i + s.idat_split))));
  chunk(out, "IEND", {});
  return out;
}

// Binary PNM with a comment in the header.
void write_pnm(const std::string& path, char kind, int w, int h, int maxval, const std::vector<std::uint8_t>& px) {
  const std::string head = std::string("P") + kind + "\n# written by test_region_reader\n" + std::to_string(w) +
                           " # width\n" + std::to_string(h) + "\n" + std::to_string(maxval) + "\n";
  std::vector<std::uint8_t> b(head.begin(), head.end());
  b.insert(b.end(), px.begin(), px.end());
  put_file(path, b);
}

}  // namespace

TEST_CASE("region reader: PNGs written by stb (gray, gray+alpha, RGB, RGBA) match stb's full decode") {
  TempDir tmp;
  const int w = 37, h = 53;
  for (int comp = 1; comp <= 4; ++comp) {
    const std::string path = tmp / ("stb_" + std::to_string(comp) + ".png");
    const auto px = samples(std::size_t(w) * h * comp, 10u + unsigned(comp));
    REQUIRE(stbi_write_png(path.c_str(), w, h, comp, px.data(), w * comp) != 0);
    const dd::io::ImageInfo info = dd::io::image_info(path);
    CHECK(info.width == w);
    CHECK(info.height == h);
    CHECK(info.channels == comp);
    CHECK(info.bits == 8);
    check_regions(path, test_rects(w, h, 100u + unsigned(comp)));
    // Stored channels are exactly what was written.
    const Image all = dd::io::read_region(path, 0, 0, h, w, kStoredChannels);
    CHECK(std::equal(px.begin(), px.end(), all.data()));
    // Empty rectangles inside the image are allowed.
    const Image none = dd::io::read_region(path, h, 3, 0, 5);
    CHECK(none.height == 0);
    CHECK(none.width == 5);
  }
}

TEST_CASE("region reader: every filter type, palette with and without tRNS, tiny IDAT chunks") {
  TempDir tmp;
  const int w = 37, h = 53;
  std::vector<std::uint8_t> plte;
  for (int i = 0; i < 200; ++i)
    plte.insert(plte.end(), {static_cast<std::uint8_t>(i * 7), static_cast<std::uint8_t>(255 - i),
                             static_cast<std::uint8_t>(i * i)});
  std::vector<std::uint8_t> trns;
  for (int i = 0; i < 150; ++i) trns.push_back(static_cast<std::uint8_t>(i * 5 + 3));  // entries >= 150: opaque

  struct Case {
    const char* name;
    int color;
    bool palette, alpha;
    int channels;
  };
  for (const Case& k : {Case{"gray", 0, false, false, 1}, Case{"rgb", 2, false, false, 3},
                        Case{"palette", 3, true, false, 3}, Case{"palette_trns", 3, true, true, 4},
                        Case{"gray_alpha", 4, false, false, 2}, Case{"rgba", 6, false, false, 4}})
    for (std::size_t split : {std::size_t(7), std::size_t(1) << 20}) {
      PngSpec s;
      s.w = w, s.h = h, s.color = k.color, s.idat_split = split, s.text_chunk = true;
      if (k.palette) s.plte = plte;
      if (k.alpha) s.trns = trns;
      auto px = samples(std::size_t(w) * h * png_bpp(s), 7);
      if (k.palette)
        for (auto& v : px) v = static_cast<std::uint8_t>(v % 200);
      const std::string path = tmp / (std::string(k.name) + "_" + std::to_string(split) + ".png");
      put_file(path, encode_png(s, px));
      CAPTURE(path);
      const dd::io::ImageInfo info = dd::io::image_info(path);
      CHECK(info.width == w);
      CHECK(info.height == h);
      CHECK(info.channels == k.channels);
      check_regions(path, test_rects(w, h, 5));
    }

  // A palette index beyond PLTE is corrupt data, reported with its position.
  PngSpec s;
  s.w = 4, s.h = 3, s.color = 3, s.plte = {1, 2, 3, 4, 5, 6};
  std::vector<std::uint8_t> px(12, 1);
  px[6] = 9;  // (x=2, y=1)
  const std::string bad = tmp / "bad_index.png";
  put_file(bad, encode_png(s, px));
  CHECK(dd::io::read_region(bad, 0, 0, 1, 4).channels == 3);
  const std::string e = error_of([&] { dd::io::read_region(bad, 0, 0, 3, 4); });
  CHECK(contains(e, bad));
  CHECK(contains(e, "palette index 9 at (x=2, y=1)"));
}

TEST_CASE("region reader: band-streamed PNGs (png_stream) and binary PNM P5/P6") {
  TempDir tmp;
  const int w = 37, h = 53;
  const auto gray = samples(std::size_t(w) * h, 3), rgb = samples(std::size_t(w) * h * 3, 4);
  const std::string gpng = tmp / "stream_gray.png", cpng = tmp / "stream_rgb.png";
  dd::io::save_gray_png_rows(gpng, w, h, [&](int r0, int rows, std::uint8_t* b) {
    std::memcpy(b, gray.data() + std::size_t(r0) * w, std::size_t(rows) * w);
  }, 10);
  dd::io::save_rgb_png_rows(cpng, w, h, [&](int r0, int rows, std::uint8_t* b) {
    std::memcpy(b, rgb.data() + std::size_t(r0) * w * 3, std::size_t(rows) * w * 3);
  }, 10);
  check_regions(gpng, test_rects(w, h, 8));
  check_regions(cpng, test_rects(w, h, 9));

  const std::string p5 = tmp / "gray.pgm", p6 = tmp / "rgb.ppm";
  write_pnm(p5, '5', w, h, 255, gray);
  write_pnm(p6, '6', w, h, 255, rgb);
  const auto i5 = dd::io::image_info(p5), i6 = dd::io::image_info(p6);
  CHECK((i5.width == w && i5.height == h && i5.channels == 1));
  CHECK((i6.width == w && i6.height == h && i6.channels == 3));
  check_regions(p5, test_rects(w, h, 10));
  check_regions(p6, test_rects(w, h, 11));
  CHECK(std::equal(rgb.begin(), rgb.end(), dd::io::read_region(p6, 0, 0, h, w).data()));

  // maxval < 255: samples are returned as stored (as stb_image does).
  std::vector<std::uint8_t> small(std::size_t(w) * h);
  for (std::size_t i = 0; i < small.size(); ++i) small[i] = static_cast<std::uint8_t>(i % 16);
  const std::string p15 = tmp / "max15.pgm";
  write_pnm(p15, '5', w, h, 15, small);
  check_regions(p15, {{0, 0, h, w}, {3, 4, 5, 6}});
  CHECK(dd::io::read_region(p15, 0, 5, 1, 1).at(0, 0, 0) == 5);

  // Unsupported PNM variants and truncated samples.
  const std::string p3 = tmp / "ascii.ppm";
  put_file(p3, {'P', '3', '\n', '1', ' ', '1', '\n', '2', '5', '5', '\n', '1', ' ', '2', ' ', '3', '\n'});
  CHECK(contains(error_of([&] { dd::io::image_info(p3); }), "P3 is not supported"));
  const std::string p16 = tmp / "deep.pgm";
  write_pnm(p16, '5', 2, 2, 65535, std::vector<std::uint8_t>(8, 0));
  const std::string e16 = error_of([&] { dd::io::read_region(p16, 0, 0, 1, 1); });
  CHECK(contains(e16, p16));
  CHECK(contains(e16, "maxval 65535"));
  auto bytes = file_bytes(p6);
  bytes.resize(bytes.size() - 10);
  const std::string cut = tmp / "cut.ppm";
  put_file(cut, bytes);
  for (const auto& e : {error_of([&] { dd::io::image_info(cut); }), error_of([&] { dd::io::read_region(cut, 0, 0, 1, 1); })}) {
    CHECK(contains(e, cut));
    CHECK(contains(e, "truncated"));
    CHECK(contains(e, std::to_string(w * h * 3) + " bytes"));
  }
  const std::string cut_head = tmp / "cut_head.ppm";
  put_file(cut_head, {'P', '6', '\n', '#', ' ', 'x', '\n', '3', '7'});
  CHECK(contains(error_of([&] { dd::io::image_info(cut_head); }), "truncated"));
}

TEST_CASE("region reader: truncated files, broken zlib streams and unsupported PNGs are dd::Errors") {
  TempDir tmp;
  const int w = 37, h = 53;
  const std::string path = tmp / "whole.png";
  const auto px = samples(std::size_t(w) * h * 3, 21);
  REQUIRE(stbi_write_png(path.c_str(), w, h, 3, px.data(), w * 3) != 0);
  const auto bytes = file_bytes(path);
  const std::size_t n = bytes.size();
  // Every cut before the last row's compressed data: in the signature, IHDR, chunk headers, IDAT.
  for (std::size_t keep : {std::size_t(0), std::size_t(5), std::size_t(8), std::size_t(12), std::size_t(20),
                           std::size_t(33), std::size_t(37), std::size_t(41), std::size_t(60), n / 4, n / 2,
                           3 * n / 4}) {
    CAPTURE(keep);
    const std::string cut = tmp / ("cut_" + std::to_string(keep) + ".png");
    put_file(cut, std::vector<std::uint8_t>(bytes.begin(), bytes.begin() + std::ptrdiff_t(keep)));
    const std::string e = error_of([&] { dd::io::read_region(cut, 0, 0, h, w); });
    CHECK(contains(e, cut));
    CHECK((contains(e, "truncated") || contains(e, "empty")));
  }
  // The reader stops after the last wanted row, so a cut at the end still gives the top rows.
  {
    const std::string cut = tmp / "cut_tail.png";
    put_file(cut, std::vector<std::uint8_t>(bytes.begin(), bytes.begin() + std::ptrdiff_t(3 * n / 4)));
    CHECK(mismatches(dd::io::read_region(cut, 0, 0, 2, w, kStoredChannels), stb_raw(path), 0, 0) == 0);
  }
  // Stored (level 0) deflate blocks: cutting only the last sample of the last row is detected too.
  {
    PngSpec s;
    s.w = w, s.h = h, s.color = 2, s.level = 0;
    auto raw = encode_png(s, px);
    const std::size_t tail = 12 /* IEND */ + 4 /* IDAT CRC */ + 4 /* adler32 */;
    const std::string cut = tmp / "stored_cut.png";
    put_file(cut, std::vector<std::uint8_t>(raw.begin(), raw.end() - std::ptrdiff_t(tail + 1)));
    const std::string e = error_of([&] { dd::io::read_region(cut, h - 1, w - 1, 1, 1); });
    CHECK(contains(e, "truncated"));
    CHECK(contains(e, "row 52 of 53"));
    // Broken stored-block lengths (LEN != ~NLEN) and a broken zlib header.
    const std::size_t idat_data = 8 + 25 + 8;  // signature, IHDR chunk, IDAT length + type
    auto broken = raw;
    broken[idat_data + 2 + 1] ^= 0x55;  // first stored block's LEN
    const std::string bp = tmp / "broken_block.png";
    put_file(bp, broken);
    const std::string eb = error_of([&] { dd::io::read_region(bp, 0, 0, 1, 1); });
    CHECK(contains(eb, bp));
    CHECK(contains(eb, "broken zlib stream"));
    broken = raw;
    broken[idat_data] ^= 0x0F;  // zlib CMF byte
    put_file(bp, broken);
    CHECK(contains(error_of([&] { dd::io::read_region(bp, 0, 0, 1, 1); }), "broken zlib stream"));
  }
  // A compressed stream that ends too early (valid zlib, too few rows).
  {
    PngSpec s;
    s.w = w, s.h = h, s.color = 2;
    PngSpec shorter = s;
    shorter.h = h - 1;
    auto raw = encode_png(shorter, std::vector<std::uint8_t>(px.begin(), px.end() - w * 3));
    raw[16 + 7] = static_cast<std::uint8_t>(h);  // IHDR height (CRC now wrong: CRCs are not checked)
    const std::string sp = tmp / "short_stream.png";
    put_file(sp, raw);
    CHECK(mismatches(dd::io::read_region(sp, 0, 0, h - 1, w, kStoredChannels), stb_raw(path), 0, 0) == 0);
    const std::string e = error_of([&] { dd::io::read_region(sp, h - 1, 0, 1, w); });
    CHECK(contains(e, "ends in row 52 of 53"));
  }
  // Unsupported or foreign files.
  {
    PngSpec s;
    s.w = 4, s.h = 4, s.color = 0, s.depth = 16;
    const std::string deep = tmp / "deep.png";
    put_file(deep, encode_png(s, std::vector<std::uint8_t>(32, 7)));
    const std::string e = error_of([&] { dd::io::image_info(deep); });
    CHECK(contains(e, deep));
    CHECK(contains(e, "bit depth 16"));
    CHECK(contains(error_of([&] { dd::io::read_region(deep, 0, 0, 1, 1); }), "bit depth 16"));
    s.depth = 8;
    s.interlace = 1;
    const std::string inter = tmp / "adam7.png";
    put_file(inter, encode_png(s, std::vector<std::uint8_t>(16, 7)));
    CHECK(contains(error_of([&] { dd::io::read_region(inter, 0, 0, 1, 1); }), "Adam7"));
  }
  const std::string jpg = tmp / "photo.jpg";
  REQUIRE(stbi_write_jpg(jpg.c_str(), w, h, 3, px.data(), 90) != 0);
  const std::string ej = error_of([&] { dd::io::image_info(jpg); });
  CHECK(contains(ej, jpg));
  CHECK(contains(ej, "not a PNG or binary PNM"));
  CHECK(contains(error_of([&] { dd::io::read_region(tmp / "missing.png", 0, 0, 1, 1); }), "cannot open"));
  CHECK(contains(error_of([&] { dd::io::image_info(tmp.dir.string()); }), "is a directory"));
  CHECK(contains(error_of([&] { dd::io::read_region(path, 0, 0, 1, 1, 2); }), "channels must be"));
}

TEST_CASE("region reader: a region outside the image names the image size and the region") {
  TempDir tmp;
  const std::string path = tmp / "img.png";
  const auto px = samples(37 * 53, 1);
  REQUIRE(stbi_write_png(path.c_str(), 37, 53, 1, px.data(), 37) != 0);
  const std::string e = error_of([&] { dd::io::read_region(path, 50, 30, 4, 8); });
  CHECK(contains(e, path));
  CHECK(contains(e, "37x53 image"));
  CHECK(contains(e, "8x4 pixels at (x=30, y=50)"));
  CHECK(contains(e, "rows [50, 54), columns [30, 38)"));
  CHECK(contains(error_of([&] { dd::io::read_region(path, -1, 0, 1, 1); }), "outside the 37x53 image"));
  CHECK(contains(error_of([&] { dd::io::read_region(path, 0, 37, 1, 1); }), "outside the 37x53 image"));
  CHECK(contains(error_of([&] { dd::io::read_region(path, 0, 0, 54, 1); }), "outside the 37x53 image"));
  CHECK(contains(error_of([&] { dd::io::read_region(path, 0, 0, 1, -1); }), "outside the 37x53 image"));
  CHECK(contains(error_of([&] { dd::io::read_region(path, 0, 0, std::int64_t(1) << 62, 1); }), "outside"));
  const std::string pgm = tmp / "img.pgm";
  write_pnm(pgm, '5', 37, 53, 255, px);
  CHECK(contains(error_of([&] { dd::io::read_region(pgm, 53, 0, 1, 1); }), "outside the 37x53 image"));
}

TEST_CASE("region reader: 3000x2000 RGB PNG, 1-row bands and a tile use O(width) working memory") {
  TempDir tmp;
  const int W = 3000, H = 2000;
  const std::string path = tmp / "big.png";
  const auto value = [](int y, int x, int c) {
    return static_cast<std::uint8_t>((x * 7 + y * 3 + c * 50 + (x * y) % 13 + ((x ^ y) & 16)) & 0xFF);
  };
  dd::io::save_rgb_png_rows(path, W, H, [&](int r0, int rows, std::uint8_t* b) {
    for (int r = 0; r < rows; ++r)
      for (int x = 0; x < W; ++x)
        for (int c = 0; c < 3; ++c) b[(std::size_t(r) * W + x) * 3 + c] = value(r0 + r, x, c);
  }, 64, 1);
  const dd::io::ImageInfo info = dd::io::image_info(path);
  REQUIRE(info.width == W);
  REQUIRE(info.height == H);
  REQUIRE(info.channels == 3);
  const Ref ref = stb_raw(path);
  const std::size_t bound = dd::io::region_reader_buffer_bytes(info);
  const std::size_t whole = std::size_t(W) * H * 3;
  CHECK(bound < whole / 50);

  for (const auto& [y0, x0, h, w] : std::vector<std::array<std::int64_t, 4>>{
           {H - 1, 0, 1, W}, {H / 2, 0, 1, W}, {0, 0, 1, W}, {1234, 1500, 256, 256}, {H - 1, W - 1, 1, 1}}) {
    CAPTURE(y0);
    CAPTURE(x0);
    const auto t0 = std::chrono::steady_clock::now();
    const Image img = dd::io::read_region(path, y0, x0, h, w, kStoredChannels);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    const std::size_t peak = dd::io::detail::region_reader_stats().peak_bytes;
    CHECK(mismatches(img, ref, y0, x0) == 0);
    CHECK(peak > std::size_t(2) * W * 3);  // the two stream rows (and zlib) were counted
    CHECK(peak <= bound);
    MESSAGE("read_region " << h << "x" << w << " at (y=" << y0 << ", x=" << x0 << ") of the " << W << "x" << H
                           << " RGB PNG: working memory " << peak << " bytes (bound " << bound
                           << ", whole image " << whole << "), " << ms << " ms");
  }
  // Gray conversion matches load_image_u8 exactly on a band.
  const Image gray = dd::io::read_region(path, 999, 0, 2, W, 1);
  const Ref gref = u8_ref(path, 1);
  CHECK(mismatches(gray, gref, 999, 0) == 0);
}
