#pragma once
// Reads one rectangle of an image file without decoding or holding the rest, so that each MPI rank
// of `ddunet predict` loads only its own tile of an input too large for one process.
//
//   image_info(path)                          -> ImageInfo (dd/io/image.hpp) from the header only
//   read_region(path, y0, x0, h, w, channels) -> Image of rows [y0, y0 + h), columns [x0, x0 + w)
//   region_reader_buffer_bytes(info)          -> bound on read_region's working memory
//
// Formats: PNG with bit depth 8 (gray, gray+alpha, RGB, RGBA, palette with optional tRNS alpha), not
// interlaced; binary PNM P5 (gray) / P6 (RGB) with maxval <= 255 (samples returned as stored, like
// stb_image). Anything else fails with a dd::Error that names the file; use load_image_u8 for it.
//
// Memory: PNG rows are one zlib stream of filtered rows, each predicted from the row above, so a
// region cannot be reached without inflating every row before it; read_region inflates the IDAT data
// incrementally and unfilters row by row keeping only the previous row, then stops after the last
// wanted row. Working memory is two rows plus fixed buffers (region_reader_buffer_bytes), time is
// proportional to y0 + h full rows. PNM rows are read with one seek per wanted row.
//
// `channels` has load_image_u8's meaning, so that read_region(path, y0, x0, h, w, c) equals the
// same rectangle of load_image_u8(path, c) byte for byte: 0 = as stored without alpha (1 or 3),
// 1 = gray (BT.601 luma from RGB), 3 = RGB (gray replicated); kStoredChannels keeps every stored
// channel, alpha included (palette PNG: 3, or 4 with tRNS).
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "dd/core/error.hpp"
#include "dd/io/image.hpp"

namespace dd::io {

// read_region's `channels` value that keeps all stored channels (alpha included).
inline constexpr int kStoredChannels = -1;

namespace detail {

inline constexpr std::size_t kRegionInputBytes = std::size_t(1) << 16;  // compressed bytes read at a time
// zlib's inflate allocates its state (~7 KiB) and a 32 KiB window; this is the allowance for both.
inline constexpr std::size_t kRegionZlibBytes = std::size_t(1) << 16;

// Working memory of the last read_region on this thread (heap bytes besides the returned Image,
// zlib's allocations included), so tests can check region_reader_buffer_bytes.
struct RegionReaderStats {
  std::size_t peak_bytes = 0;
  std::size_t live_bytes = 0;
  void add(std::size_t n) {
    live_bytes += n;
    peak_bytes = std::max(peak_bytes, live_bytes);
  }
};
inline RegionReaderStats& region_reader_stats() {
  thread_local RegionReaderStats s;
  return s;
}

// A FILE* that closes itself; every failure names the file.
class RegionFile {
 public:
  RegionFile(const std::string& path, const char* who) : path_(path), who_(who) {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) fail("{}: cannot read '{}': it is a directory", who_, path_);
    f_ = std::fopen(path.c_str(), "rb");
    if (!f_) fail("{}: cannot open '{}': {}", who_, path_, std::strerror(errno));
  }
  RegionFile(const RegionFile&) = delete;
  RegionFile& operator=(const RegionFile&) = delete;
  ~RegionFile() { std::fclose(f_); }

  const std::string& path() const { return path_; }
  const char* who() const { return who_; }

  // Reads up to n bytes; returns how many were read (fewer only at the end of the file).
  std::size_t read_some(void* p, std::size_t n) {
    const std::size_t got = n ? std::fread(p, 1, n, f_) : 0;
    if (got < n && std::ferror(f_)) fail("{}: reading '{}' failed: {}", who_, path_, std::strerror(errno));
    return got;
  }
  // Reads exactly n bytes; a short read is a truncated file, described by `what`.
  void read_exact(void* p, std::size_t n, const char* what) {
    if (read_some(p, n) != n)
      fail("{}: '{}' is truncated: it ends inside {} ({} bytes long)", who_, path_, what, size());
  }
  int getc() { return std::fgetc(f_); }
  void seek(std::int64_t offset) {
    if (fseeko(f_, static_cast<off_t>(offset), SEEK_SET) != 0)
      fail("{}: seeking in '{}' failed: {}", who_, path_, std::strerror(errno));
  }
  void skip(std::int64_t n) {
    if (fseeko(f_, static_cast<off_t>(n), SEEK_CUR) != 0)
      fail("{}: seeking in '{}' failed: {}", who_, path_, std::strerror(errno));
  }
  std::int64_t tell() { return static_cast<std::int64_t>(ftello(f_)); }
  std::int64_t size() const {
    std::error_code ec;
    const auto n = std::filesystem::file_size(path_, ec);
    return ec ? -1 : static_cast<std::int64_t>(n);
  }

 private:
  std::string path_;
  const char* who_;
  std::FILE* f_ = nullptr;
};

inline std::uint32_t be32(const unsigned char* p) {
  return (std::uint32_t(p[0]) << 24) | (std::uint32_t(p[1]) << 16) | (std::uint32_t(p[2]) << 8) | std::uint32_t(p[3]);
}

enum class RegionFormat { png, pnm };

// Everything read_region needs from the header. After read_region_header the file is positioned
// at the pixel data: the first IDAT chunk's data (PNG) or the first sample (PNM).
struct RegionHeader {
  RegionFormat format = RegionFormat::png;
  ImageInfo info;                  // width, height, channels after palette expansion, bits = 8
  int stream_bpp = 0;              // bytes per pixel in the PNG stream (palette: 1 index byte)
  bool palette = false;            // PNG colour type 3
  int palette_size = 0;            // PLTE entries
  std::array<std::uint8_t, 1024> rgba{};  // palette entries as RGBA (alpha from tRNS, else 255)
  std::uint32_t first_idat_bytes = 0;
  std::int64_t data_offset = 0;    // PNM: file offset of the first sample
};

inline void read_png_header(RegionFile& f, RegionHeader& h) {
  const char* who = f.who();
  const std::string& path = f.path();
  unsigned char head[8];
  const auto chunk_header = [&](std::uint32_t& len, char type[5], const char* what) {
    f.read_exact(head, 8, what);
    len = be32(head);
    std::memcpy(type, head + 4, 4);
    type[4] = '\0';
    if (len > 0x7FFFFFFFu) fail("{}: '{}' is corrupt: chunk '{}' claims {} bytes", who, path, type, len);
  };
  std::uint32_t len = 0;
  char type[5];
  chunk_header(len, type, "the IHDR chunk");
  if (std::strcmp(type, "IHDR") != 0 || len != 13)
    fail("{}: '{}' is corrupt: the PNG does not start with a 13-byte IHDR chunk", who, path);
  unsigned char ihdr[13 + 4];
  f.read_exact(ihdr, sizeof ihdr, "the IHDR chunk");
  const std::uint32_t width = be32(ihdr), height = be32(ihdr + 4);
  const int depth = ihdr[8], color = ihdr[9];
  if (width == 0 || height == 0 || width > 0x7FFFFFFFu || height > 0x7FFFFFFFu)
    fail("{}: '{}' is corrupt: invalid PNG size {}x{}", who, path, width, height);
  switch (color) {
    case 0: h.stream_bpp = 1; break;  // gray
    case 2: h.stream_bpp = 3; break;  // RGB
    case 3: h.stream_bpp = 1; h.palette = true; break;  // palette index
    case 4: h.stream_bpp = 2; break;  // gray + alpha
    case 6: h.stream_bpp = 4; break;  // RGBA
    default: fail("{}: '{}' is corrupt: invalid PNG colour type {}", who, path, color);
  }
  h.info.channels = h.palette ? 3 : h.stream_bpp;
  if (depth != 8)
    fail("{}: '{}': PNG bit depth {} is not supported (only 8-bit samples can be read by region; "
         "use load_image_u8)", who, path, depth);
  if (ihdr[10] != 0 || ihdr[11] != 0)
    fail("{}: '{}' is corrupt: unknown PNG compression {} or filter method {}", who, path, ihdr[10], ihdr[11]);
  if (ihdr[12] == 1)
    fail("{}: '{}': Adam7-interlaced PNG is not supported (rows are not stored in order; re-save it "
         "without interlacing or use load_image_u8)", who, path);
  if (ihdr[12] != 0) fail("{}: '{}' is corrupt: unknown PNG interlace method {}", who, path, ihdr[12]);
  h.info.width = static_cast<int>(width);
  h.info.height = static_cast<int>(height);
  h.info.bits = 8;

  // Chunks up to the first IDAT: PLTE and tRNS matter, everything else (CRCs included) is skipped.
  bool have_trns = false;
  std::vector<unsigned char> trns;
  for (;;) {
    chunk_header(len, type, "a chunk header");
    if (std::strcmp(type, "IDAT") == 0) {
      h.first_idat_bytes = len;
      break;
    }
    if (std::strcmp(type, "IEND") == 0) fail("{}: '{}' is corrupt: the PNG has no image data (IDAT)", who, path);
    if (std::strcmp(type, "PLTE") == 0 && h.palette) {
      if (len % 3 != 0 || len == 0 || len > 768)
        fail("{}: '{}' is corrupt: PLTE chunk of {} bytes", who, path, len);
      unsigned char pal[768];
      f.read_exact(pal, len, "the PLTE chunk");
      h.palette_size = static_cast<int>(len / 3);
      for (int i = 0; i < h.palette_size; ++i) {
        for (int c = 0; c < 3; ++c) h.rgba[std::size_t(i) * 4 + c] = pal[i * 3 + c];
        h.rgba[std::size_t(i) * 4 + 3] = 255;
      }
      f.skip(4);
    } else if (std::strcmp(type, "tRNS") == 0 && h.palette) {
      // Only palette alpha is honoured; gray/RGB colour keys are ignored (stb reports them inconsistently).
      trns.resize(len);
      f.read_exact(trns.data(), len, "the tRNS chunk");
      have_trns = true;
      f.skip(4);
    } else {
      f.skip(std::int64_t(len) + 4);
    }
  }
  if (h.palette) {
    if (h.palette_size == 0) fail("{}: '{}' is corrupt: palette PNG without a PLTE chunk", who, path);
    if (have_trns) {
      if (trns.size() > std::size_t(h.palette_size))
        fail("{}: '{}' is corrupt: tRNS has {} entries for a {}-entry palette", who, path, trns.size(), h.palette_size);
      for (std::size_t i = 0; i < trns.size(); ++i) h.rgba[i * 4 + 3] = trns[i];
      h.info.channels = 4;
    }
  }
}

// Next PNM header token (a decimal number), skipping whitespace and '#' comments.
inline std::int64_t pnm_number(RegionFile& f, const char* what, int& after) {
  int c = f.getc();
  for (;;) {
    if (c == '#') {
      while (c != EOF && c != '\n' && c != '\r') c = f.getc();
    } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f') {
      c = f.getc();
    } else {
      break;
    }
  }
  if (c == EOF) fail("{}: '{}' is truncated: it ends inside the PNM header, before the {}", f.who(), f.path(), what);
  if (c < '0' || c > '9')
    fail("{}: '{}' is corrupt: the PNM header has '{}' where the {} should be", f.who(), f.path(), char(c), what);
  std::int64_t v = 0;
  while (c >= '0' && c <= '9') {
    v = v * 10 + (c - '0');
    if (v > 0x7FFFFFFF) fail("{}: '{}': PNM {} is too large", f.who(), f.path(), what);
    c = f.getc();
  }
  after = c;
  return v;
}

inline void read_pnm_header(RegionFile& f, RegionHeader& h, char kind) {
  const char* who = f.who();
  const std::string& path = f.path();
  h.format = RegionFormat::pnm;
  h.info.channels = kind == '5' ? 1 : 3;
  h.info.bits = 8;
  int after = 0;
  const std::int64_t width = pnm_number(f, "width", after);
  const std::int64_t height = pnm_number(f, "height", after);
  const std::int64_t maxval = pnm_number(f, "maxval", after);
  if (width == 0 || height == 0) fail("{}: '{}' is corrupt: PNM size {}x{}", who, path, width, height);
  if (maxval == 0 || maxval > 255)
    fail("{}: '{}': PNM maxval {} is not supported (only 8-bit samples, maxval <= 255; use load_image_u8)", who,
         path, maxval);
  // Exactly one whitespace byte separates maxval from the samples.
  if (after != ' ' && after != '\t' && after != '\n' && after != '\r' && after != '\v' && after != '\f')
    fail("{}: '{}' is {}: no whitespace after the PNM maxval", who, path, after == EOF ? "truncated" : "corrupt");
  h.info.width = static_cast<int>(width);
  h.info.height = static_cast<int>(height);
  h.data_offset = f.tell();
  const std::int64_t need = width * height * h.info.channels;
  const std::int64_t have = f.size() - h.data_offset;
  if (have < need)
    fail("{}: '{}' is truncated: {}x{} P{} needs {} bytes of samples after the header, the file has {}", who, path,
         width, height, kind, need, std::max<std::int64_t>(have, 0));
}

inline void read_region_header(RegionFile& f, RegionHeader& h) {
  static const unsigned char png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  unsigned char sig[8] = {};
  const std::size_t got = f.read_some(sig, 8);
  if (got >= 2 && sig[0] == 'P' && (sig[1] == '5' || sig[1] == '6')) {
    f.seek(2);
    return read_pnm_header(f, h, static_cast<char>(sig[1]));
  }
  if (got >= 2 && sig[0] == 'P' && sig[1] >= '1' && sig[1] <= '7')
    fail("{}: '{}': PNM type P{} is not supported (only binary P5 gray / P6 RGB)", f.who(), f.path(),
         static_cast<char>(sig[1]));
  if (got == 0) fail("{}: '{}' is empty", f.who(), f.path());
  if (got < 8 && std::memcmp(sig, png_sig, got) == 0)
    fail("{}: '{}' is truncated: it ends inside the PNG signature", f.who(), f.path());
  if (got < 8 || std::memcmp(sig, png_sig, 8) != 0) {
    std::string hex;
    for (std::size_t i = 0; i < got; ++i) hex += fmt::format("{}{:02x}", i ? " " : "", sig[i]);
    fail("{}: '{}' is not a PNG or binary PNM (P5/P6) file (it starts with bytes {}); other formats need "
         "load_image_u8", f.who(), f.path(), hex);
  }
  read_png_header(f, h);
}

// The concatenated data of the consecutive IDAT chunks, read in pieces. Reads only what inflate
// asks for, so a file cut after the wanted rows still yields them.
class IdatReader {
 public:
  IdatReader(RegionFile& f, std::uint32_t first) : f_(f), left_(first) {}
  // Up to n bytes; 0 once the IDAT chunks are over or the file ends.
  std::size_t read(unsigned char* p, std::size_t n) {
    while (left_ == 0) {
      if (over_) return 0;
      unsigned char head[12];  // CRC of the previous chunk + next chunk header
      if (f_.read_some(head, 12) != 12 || std::memcmp(head + 8, "IDAT", 4) != 0) {
        over_ = true;
        return 0;
      }
      left_ = be32(head + 4);
      if (left_ > 0x7FFFFFFFu) fail("{}: '{}' is corrupt: IDAT chunk claims {} bytes", f_.who(), f_.path(), left_);
    }
    const std::size_t got = f_.read_some(p, std::min<std::size_t>(n, left_));
    if (got == 0) {
      cut_in_chunk_ = true;
      over_ = true;
      left_ = 0;
    }
    left_ -= static_cast<std::uint32_t>(got);
    return got;
  }
  bool cut_in_chunk() const { return cut_in_chunk_; }

 private:
  RegionFile& f_;
  std::uint32_t left_;
  bool over_ = false, cut_in_chunk_ = false;
};

// zlib allocations counted in RegionReaderStats (size kept in front of each block).
inline voidpf region_zalloc(voidpf, uInt items, uInt size) {
  const std::size_t n = std::size_t(items) * size;
  auto* p = static_cast<unsigned char*>(std::malloc(n + 16));
  if (!p) return Z_NULL;
  std::memcpy(p, &n, sizeof n);
  region_reader_stats().add(n);
  return p + 16;
}
inline void region_zfree(voidpf, voidpf q) {
  if (!q) return;
  auto* p = static_cast<unsigned char*>(q) - 16;
  std::size_t n = 0;
  std::memcpy(&n, p, sizeof n);
  region_reader_stats().live_bytes -= n;
  std::free(p);
}

struct Inflater {
  z_stream z{};
  bool live = false;
  ~Inflater() {
    if (live) inflateEnd(&z);
  }
};

// Reverses a PNG row filter in place (row[0] is the filter type, prior the unfiltered row above).
inline void unfilter_png_row(unsigned char* row, const unsigned char* prior, std::size_t bytes, int bpp, const char* who,
                             const std::string& path, std::int64_t y) {
  unsigned char* x = row + 1;
  const unsigned char* b = prior + 1;
  const std::size_t s = static_cast<std::size_t>(bpp);
  switch (row[0]) {
    case 0: break;
    case 1:
      for (std::size_t i = s; i < bytes; ++i) x[i] = static_cast<unsigned char>(x[i] + x[i - s]);
      break;
    case 2:
      for (std::size_t i = 0; i < bytes; ++i) x[i] = static_cast<unsigned char>(x[i] + b[i]);
      break;
    case 3:
      for (std::size_t i = 0; i < bytes; ++i) {
        const unsigned a = i >= s ? x[i - s] : 0u;
        x[i] = static_cast<unsigned char>(x[i] + ((a + b[i]) >> 1));
      }
      break;
    case 4:
      for (std::size_t i = 0; i < bytes; ++i) {
        const int a = i >= s ? x[i - s] : 0, up = b[i], c = i >= s ? b[i - s] : 0;
        const int p = a + up - c, pa = std::abs(p - a), pb = std::abs(p - up), pc = std::abs(p - c);
        const int pred = pa <= pb && pa <= pc ? a : (pb <= pc ? up : c);
        x[i] = static_cast<unsigned char>(x[i] + pred);
      }
      break;
    default: fail("{}: '{}' is corrupt: invalid PNG filter type {} in row {}", who, path, row[0], y);
  }
}

// Converts `count` pixels of `in_c` stored channels to load_image_u8's `channels` layout.
inline void convert_pixels(const std::uint8_t* in, int in_c, std::uint8_t* out, int out_c, int channels,
                           std::int64_t count) {
  if (channels == kStoredChannels || in_c == out_c) {
    std::memcpy(out, in, static_cast<std::size_t>(count * in_c));
    return;
  }
  const bool gray_in = in_c <= 2;
  for (std::int64_t i = 0; i < count; ++i, in += in_c, out += out_c) {
    if (gray_in) {
      for (int c = 0; c < out_c; ++c) out[c] = in[0];
    } else if (out_c == 3) {
      for (int c = 0; c < 3; ++c) out[c] = in[c];
    } else {  // same expression as load_image_u8, so the bytes match it exactly
      const double v = 0.299 * in[0] + 0.587 * in[1] + 0.114 * in[2];
      out[0] = static_cast<std::uint8_t>(std::lround(std::min(255.0, v * 255.0 / 255.0)));
    }
  }
}

inline int region_out_channels(int stored, int channels) {
  if (channels == kStoredChannels) return stored;
  if (channels == 0) return stored <= 2 ? 1 : 3;
  return channels;
}

}  // namespace detail

// Width, height and stored channels (palette PNG: 3, or 4 with tRNS; bits: 8) from the header only.
// Fails for every file read_region cannot read, so a rank learns it before reading pixels.
inline ImageInfo image_info(const std::string& path) {
  detail::RegionFile f(path, "dd::io::image_info");
  detail::RegionHeader h;
  detail::read_region_header(f, h);
  return h.info;
}

// Upper bound on read_region's working memory in bytes, besides the returned Image: for PNG two rows
// of the stream plus a 64 KiB input buffer and 64 KiB for zlib; for PNM one row of the region.
inline std::size_t region_reader_buffer_bytes(const ImageInfo& info) {
  const std::size_t row = static_cast<std::size_t>(info.width) * static_cast<std::size_t>(std::max(info.channels, 1));
  return 2 * (row + 1) + detail::kRegionInputBytes + detail::kRegionZlibBytes;
}

// Pixels of rows [y0, y0 + h) and columns [x0, x0 + w) as an Image with load_image_u8's layout
// (see the top of this header for `channels`). An empty region (h or w 0) inside the image is allowed.
inline Image read_region(const std::string& path, std::int64_t y0, std::int64_t x0, std::int64_t h, std::int64_t w,
                         int channels = 0) {
  constexpr const char* who = "dd::io::read_region";
  DD_CHECK(channels == kStoredChannels || channels == 0 || channels == 1 || channels == 3,
           "{}: '{}': channels must be 0 (as stored), 1 (gray), 3 (RGB) or kStoredChannels, got {}", who, path,
           channels);
  auto& stats = detail::region_reader_stats();
  stats = {};
  detail::RegionFile f(path, who);
  detail::RegionHeader hd;
  detail::read_region_header(f, hd);
  const std::int64_t W = hd.info.width, H = hd.info.height;
  if (y0 < 0 || x0 < 0 || h < 0 || w < 0 || y0 > H || x0 > W || h > H - y0 || w > W - x0)
    fail("{}: '{}': region of {}x{} pixels at (x={}, y={}) (rows [{}, {}), columns [{}, {})) is outside the "
         "{}x{} image (width x height)", who, path, w, h, x0, y0, y0, y0 + h, x0, x0 + w, W, H);

  const int in_c = hd.info.channels;
  const int out_c = detail::region_out_channels(in_c, channels);
  Image img;
  img.width = w;
  img.height = h;
  img.channels = out_c;
  img.pixels = std::shared_ptr<std::uint8_t>(new std::uint8_t[static_cast<std::size_t>(std::max<std::int64_t>(
                                                 w * h * out_c, 1))],
                                             std::default_delete<std::uint8_t[]>());
  if (h == 0 || w == 0) return img;
  std::uint8_t* out = img.pixels.get();
  const std::size_t out_row = static_cast<std::size_t>(w * out_c);

  if (hd.format == detail::RegionFormat::pnm) {
    // One seek per row; a conversion buffer of one region row only when the layout changes.
    std::vector<std::uint8_t> row;
    if (out_c != in_c) {
      row.resize(static_cast<std::size_t>(w * in_c));
      stats.add(row.size());
    }
    for (std::int64_t y = 0; y < h; ++y) {
      f.seek(hd.data_offset + ((y0 + y) * W + x0) * in_c);
      std::uint8_t* dst = out + static_cast<std::size_t>(y) * out_row;
      std::uint8_t* buf = row.empty() ? dst : row.data();
      f.read_exact(buf, static_cast<std::size_t>(w * in_c), "the PNM samples");
      if (!row.empty()) detail::convert_pixels(buf, in_c, dst, out_c, channels, w);
    }
    return img;
  }

  // PNG: inflate row by row into `cur`, unfilter against `prev`, keep the wanted columns.
  const std::size_t row_bytes = static_cast<std::size_t>(W) * static_cast<std::size_t>(hd.stream_bpp);
  DD_CHECK(row_bytes < 0xFFFFFFFFu, "{}: '{}': rows of {} bytes are too long to inflate", who, path, row_bytes);
  std::vector<unsigned char> cur(row_bytes + 1), prev(row_bytes + 1, 0), in(detail::kRegionInputBytes);
  stats.add(cur.size() + prev.size() + in.size());
  // Palette indices are expanded into `expanded` (one region row of RGB/RGBA) before conversion.
  std::vector<std::uint8_t> expanded;
  if (hd.palette) {
    expanded.resize(static_cast<std::size_t>(w * in_c));
    stats.add(expanded.size());
  }
  detail::IdatReader idat(f, hd.first_idat_bytes);
  detail::Inflater inf;
  inf.z.zalloc = detail::region_zalloc;
  inf.z.zfree = detail::region_zfree;
  if (inflateInit(&inf.z) != Z_OK) fail("{}: '{}': zlib inflateInit failed", who, path);
  inf.live = true;
  bool stream_end = false;
  for (std::int64_t y = 0; y < y0 + h; ++y) {
    inf.z.next_out = cur.data();
    inf.z.avail_out = static_cast<uInt>(cur.size());
    while (inf.z.avail_out > 0) {
      if (stream_end)
        fail("{}: '{}' is corrupt: its image data ends in row {} of {} (the zlib stream is complete but short)", who,
             path, y, H);
      if (inf.z.avail_in == 0) {
        const std::size_t n = idat.read(in.data(), in.size());
        if (n == 0)
          fail("{}: '{}' is truncated: its image data ends in row {} of {} ({}; the file has {} bytes)", who, path,
               y, H, idat.cut_in_chunk() ? "the file ends inside an IDAT chunk" : "no further IDAT chunk", f.size());
        inf.z.next_in = in.data();
        inf.z.avail_in = static_cast<uInt>(n);
      }
      const int rc = inflate(&inf.z, Z_NO_FLUSH);
      if (rc == Z_STREAM_END) {
        stream_end = true;
      } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
        fail("{}: '{}' is corrupt: broken zlib stream in row {} of {}: {}", who, path, y, H,
             inf.z.msg ? inf.z.msg : zError(rc));
      }
    }
    detail::unfilter_png_row(cur.data(), prev.data(), row_bytes, hd.stream_bpp, who, path, y);
    if (y >= y0) {
      const unsigned char* px = cur.data() + 1 + static_cast<std::size_t>(x0) * std::size_t(hd.stream_bpp);
      if (hd.palette) {
        for (std::int64_t x = 0; x < w; ++x) {
          const int k = px[x];
          if (k >= hd.palette_size)
            fail("{}: '{}' is corrupt: palette index {} at (x={}, y={}) outside the {}-entry PLTE", who, path, k,
                 x0 + x, y, hd.palette_size);
          std::memcpy(expanded.data() + x * in_c, hd.rgba.data() + std::size_t(k) * 4, std::size_t(in_c));
        }
        px = expanded.data();
      }
      detail::convert_pixels(px, in_c, out + static_cast<std::size_t>(y - y0) * out_row, out_c, channels, w);
    }
    std::swap(cur, prev);
  }
  return img;
}

}  // namespace dd::io
