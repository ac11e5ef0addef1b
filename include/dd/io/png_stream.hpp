#pragma once
// Band-by-band PNG writer for outputs too large to hold as one buffer (e.g. the class map of a
// 16384 x 16384 image segmented tile by tile). Memory: one band (band * width * channels bytes)
// plus zlib's state and a 256 KiB output buffer, independent of the height.
//
// The file is a plain PNG: signature, IHDR (8-bit gray or RGB, no interlace), IDAT chunks holding
// one zlib stream fed row by row (filter type 0 per row), IEND; chunk CRCs from zlib's crc32.
// Like the other writers it goes through path + ".tmp" and a rename.
//
//   dd::io::save_gray_png_rows("out.png", W, H, [&](int row0, int rows, std::uint8_t* buf) {
//     // fill rows [row0, row0 + rows): buf[(r - row0) * W + x]
//   });
#include <zlib.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "dd/core/error.hpp"

namespace dd::io {

namespace detail {

class PngStreamFile {
 public:
  PngStreamFile(const std::string& path, const char* who) : path_(path), tmp_(path + ".tmp"), who_(who) {
    namespace fs = std::filesystem;
    const fs::path parent = fs::path(path).parent_path();
    std::error_code ec;
    if (!parent.empty() && !fs::is_directory(parent, ec))
      fail("{}: cannot write '{}': directory '{}' does not exist", who_, path_, parent.string());
    f_ = std::fopen(tmp_.c_str(), "wb");
    if (!f_) fail("{}: cannot write '{}': opening '{}' failed: {}", who_, path_, tmp_, std::strerror(errno));
  }
  PngStreamFile(const PngStreamFile&) = delete;
  PngStreamFile& operator=(const PngStreamFile&) = delete;
  ~PngStreamFile() {
    if (f_) {  // not committed: an exception is unwinding
      std::fclose(f_);
      std::error_code ec;
      std::filesystem::remove(tmp_, ec);
    }
  }

  void raw(const void* p, std::size_t n) {
    if (n && std::fwrite(p, 1, n, f_) != n)
      fail("{}: cannot write '{}': writing '{}' failed: {}", who_, path_, tmp_, std::strerror(errno));
  }
  void u32(std::uint32_t v) {
    const unsigned char b[4] = {static_cast<unsigned char>(v >> 24), static_cast<unsigned char>(v >> 16),
                                static_cast<unsigned char>(v >> 8), static_cast<unsigned char>(v)};
    raw(b, 4);
  }
  void chunk(const char type[4], const unsigned char* data, std::size_t n) {
    u32(static_cast<std::uint32_t>(n));
    raw(type, 4);
    raw(data, n);
    uLong crc = crc32(0L, Z_NULL, 0);
    crc = crc32(crc, reinterpret_cast<const Bytef*>(type), 4);
    if (n) crc = crc32(crc, data, static_cast<uInt>(n));
    u32(static_cast<std::uint32_t>(crc));
  }
  // Closes and renames the temporary file onto the destination.
  void commit() {
    std::FILE* f = f_;
    f_ = nullptr;
    const bool ok = std::fflush(f) == 0 && std::fclose(f) == 0;
    std::error_code ec;
    if (!ok) {
      std::filesystem::remove(tmp_, ec);
      fail("{}: cannot write '{}': closing '{}' failed: {}", who_, path_, tmp_, std::strerror(errno));
    }
    std::filesystem::rename(tmp_, path_, ec);
    if (ec) {
      std::error_code ec2;
      std::filesystem::remove(tmp_, ec2);
      fail("{}: cannot write '{}': renaming '{}' failed: {}", who_, path_, tmp_, ec.message());
    }
  }

 private:
  std::string path_, tmp_;
  const char* who_;
  std::FILE* f_ = nullptr;
};

struct Deflater {
  z_stream z{};
  bool live = false;
  ~Deflater() {
    if (live) deflateEnd(&z);
  }
};

// channels 1: 8-bit gray (colour type 0); channels 3: 8-bit RGB (colour type 2).
inline void save_png_rows(const char* who, const std::string& path, int width, int height, int channels,
                          const std::function<void(int row0, int rows, std::uint8_t* buffer)>& fill, int band,
                          int level) {
  DD_CHECK(width > 0 && height > 0, "{}: '{}': invalid size {}x{}", who, path, width, height);
  DD_CHECK(band > 0, "{}: '{}': band must be >= 1 row, got {}", who, path, band);
  DD_CHECK(static_cast<bool>(fill), "{}: '{}': no fill function given", who, path);
  DD_CHECK(level >= -1 && level <= 9, "{}: '{}': zlib level must be -1..9, got {}", who, path, level);
  const std::size_t row_bytes = static_cast<std::size_t>(width) * static_cast<std::size_t>(channels);
  DD_CHECK(row_bytes + 1 <= 0xFFFFFFFFu, "{}: '{}': width {} is too large", who, path, width);
  const int rows_per_band = band < height ? band : height;
  std::vector<std::uint8_t> buf(row_bytes * static_cast<std::size_t>(rows_per_band));
  std::vector<unsigned char> out(std::size_t(1) << 18);

  PngStreamFile file(path, who);
  static const unsigned char signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  file.raw(signature, 8);
  unsigned char ihdr[13];
  const auto be32 = [](unsigned char* p, std::uint32_t v) {
    p[0] = static_cast<unsigned char>(v >> 24);
    p[1] = static_cast<unsigned char>(v >> 16);
    p[2] = static_cast<unsigned char>(v >> 8);
    p[3] = static_cast<unsigned char>(v);
  };
  be32(ihdr, static_cast<std::uint32_t>(width));
  be32(ihdr + 4, static_cast<std::uint32_t>(height));
  ihdr[8] = 8;                         // bit depth
  ihdr[9] = channels == 3 ? 2 : 0;     // colour type: RGB or gray
  ihdr[10] = ihdr[11] = ihdr[12] = 0;  // deflate, adaptive filtering, no interlace
  file.chunk("IHDR", ihdr, sizeof ihdr);

  Deflater d;
  if (deflateInit(&d.z, level) != Z_OK) fail("{}: '{}': zlib deflateInit failed", who, path);
  d.live = true;
  d.z.next_out = out.data();
  d.z.avail_out = static_cast<uInt>(out.size());
  // Feeds n bytes (or finishes the stream), writing an IDAT chunk whenever the output buffer fills.
  const auto feed = [&](const unsigned char* p, std::size_t n, int flush) {
    d.z.next_in = const_cast<Bytef*>(p);
    d.z.avail_in = static_cast<uInt>(n);
    for (;;) {
      const int rc = deflate(&d.z, flush);
      if (rc == Z_STREAM_ERROR) fail("{}: '{}': zlib deflate failed", who, path);
      const bool done = flush == Z_FINISH ? rc == Z_STREAM_END : d.z.avail_in == 0;
      if (d.z.avail_out == 0) {
        file.chunk("IDAT", out.data(), out.size());
        d.z.next_out = out.data();
        d.z.avail_out = static_cast<uInt>(out.size());
      }
      if (done) break;
    }
  };

  const unsigned char filter_none = 0;
  for (int row0 = 0; row0 < height; row0 += rows_per_band) {
    const int rows = height - row0 < rows_per_band ? height - row0 : rows_per_band;
    fill(row0, rows, buf.data());
    for (int r = 0; r < rows; ++r) {
      feed(&filter_none, 1, Z_NO_FLUSH);
      feed(buf.data() + static_cast<std::size_t>(r) * row_bytes, row_bytes, Z_NO_FLUSH);
    }
  }
  feed(nullptr, 0, Z_FINISH);
  const std::size_t pending = out.size() - d.z.avail_out;
  if (pending) file.chunk("IDAT", out.data(), pending);
  file.chunk("IEND", nullptr, 0);
  file.commit();
}

}  // namespace detail

// Writes a width x height 8-bit gray PNG band by band. fill(row0, rows, buffer) must write rows
// [row0, row0 + rows) into buffer, row-major with stride `width` bytes; it is called with row0 =
// 0, band, 2*band, ... (the last band may be shorter). `level` is zlib's compression level (-1 = default).
inline void save_gray_png_rows(const std::string& path, int width, int height,
                               const std::function<void(int row0, int rows, std::uint8_t* buffer)>& fill,
                               int band = 256, int level = -1) {
  detail::save_png_rows("dd::io::save_gray_png_rows", path, width, height, 1, fill, band, level);
}

// As save_gray_png_rows, for 8-bit RGB: the buffer holds interleaved RGB, stride 3 * width bytes.
inline void save_rgb_png_rows(const std::string& path, int width, int height,
                              const std::function<void(int row0, int rows, std::uint8_t* buffer)>& fill,
                              int band = 256, int level = -1) {
  detail::save_png_rows("dd::io::save_rgb_png_rows", path, width, height, 3, fill, band, level);
}

}  // namespace dd::io
