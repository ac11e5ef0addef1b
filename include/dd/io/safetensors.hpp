#pragma once
// Reading and writing the safetensors format (https://github.com/huggingface/safetensors):
//
//   [8 bytes: little-endian u64 N][N bytes: UTF-8 JSON header, space-padded][data buffer]
//
// The header is a JSON object mapping tensor name -> {"dtype": "F32", "shape": [..],
// "data_offsets": [begin, end]} (byte offsets into the data buffer) plus an optional
// "__metadata__" object of string -> string. Only F32 tensors are supported. The writer produces
// the same bytes as the reference implementation for F32 tensors given in the same order (compact
// JSON, keys dtype/shape/data_offsets, "__metadata__" first, header padded with spaces to a
// multiple of 8, tensors stored contiguously in file order). The reader validates everything and
// throws dd::Error naming the file and the problem; it accepts a header whose entries are listed in
// any order, as long as their byte ranges tile the data buffer exactly.
//
// save() is atomic: it writes `path + ".tmp-<pid>"`, fsyncs it and renames it over `path`, so
// `path` holds either the old or the complete new file, never a partial one.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "dd/core/error.hpp"
#include "dd/core/tensor.hpp"
#include "dd/io/json.hpp"

namespace dd::safetensors {

static_assert(std::endian::native == std::endian::little,
              "dd::safetensors reads and writes raw little-endian data and needs a little-endian host");
static_assert(std::numeric_limits<float>::is_iec559 && sizeof(float) == 4,
              "dd::safetensors needs IEEE-754 binary32 floats");

// Headers larger than this are rejected as corrupt (same limit as the reference implementation).
inline constexpr std::uint64_t max_header_bytes = 100'000'000;

struct Entry {
  std::string name;
  std::vector<std::int64_t> shape;  // any rank; rank 0 is a scalar (one element)
  std::vector<float> data;          // row-major, product(shape) values
};

struct File {
  std::map<std::string, std::string> metadata;
  std::vector<Entry> tensors;  // in file order

  // The tensor called `name`, or nullptr.
  const Entry* find(const std::string& name) const {
    for (const Entry& e : tensors)
      if (e.name == name) return &e;
    return nullptr;
  }
  // The tensor called `name`; throws dd::Error when there is none.
  const Entry& at(const std::string& name) const {
    const Entry* e = find(name);
    if (!e) fail("dd::safetensors::File: no tensor named \"{}\" (the file has {} tensors)", name, tensors.size());
    return *e;
  }
};

namespace detail {
inline std::string join(const std::vector<std::int64_t>& v, std::string_view sep) {
  std::string out;
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (i) out += sep;
    out += fmt::format("{}", v[i]);
  }
  return out;
}
}  // namespace detail

// "[2, 3, 4]"
inline std::string shape_str(const std::vector<std::int64_t>& shape) {
  std::string out = "[";
  out += detail::join(shape, ", ");
  out += ']';
  return out;
}

// Number of elements of `shape` (1 for rank 0), or -1 if a dimension is negative or the product
// of the dimensions (times 4 bytes) does not fit in int64.
inline std::int64_t checked_numel(const std::vector<std::int64_t>& shape) {
  std::int64_t n = 1;
  for (const std::int64_t d : shape) {
    if (d < 0) return -1;
    if (__builtin_mul_overflow(n, d, &n)) return -1;
  }
  if (n > std::numeric_limits<std::int64_t>::max() / 4) return -1;
  return n;
}

// An entry holding a copy of `t` under the given shape (its element count must match t's).
inline Entry make_entry(std::string name, const Tensor& t, std::vector<std::int64_t> shape) {
  const std::int64_t n = checked_numel(shape);
  DD_CHECK(n == t.numel(), "dd::safetensors::make_entry: shape {} of \"{}\" has {} elements but the tensor ({}) has {}",
           shape_str(shape), name, n, t.shape(), t.numel());
  return Entry{std::move(name), std::move(shape), t.to_vector()};
}
// An entry holding a copy of `t` with shape [N, C, H, W].
inline Entry make_entry(std::string name, const Tensor& t) {
  const Shape s = t.shape();
  return make_entry(std::move(name), t, {s.n, s.c, s.h, s.w});
}

// A new tensor of shape `s` holding e's values (element counts must match).
inline Tensor to_tensor(const Entry& e, Shape s) {
  DD_CHECK(static_cast<std::int64_t>(e.data.size()) == checked_numel(e.shape),
           "dd::safetensors::to_tensor: \"{}\" has {} values for shape {}", e.name, e.data.size(), shape_str(e.shape));
  DD_CHECK(s.n >= 0 && s.c >= 0 && s.h >= 0 && s.w >= 0 && s.numel() == static_cast<std::int64_t>(e.data.size()),
           "dd::safetensors::to_tensor: \"{}\" of shape {} ({} elements) does not fit the tensor shape {}", e.name,
           shape_str(e.shape), e.data.size(), s);
  return Tensor::from(s, e.data);
}
// A new tensor from an entry of rank <= 4, padding the shape with trailing ones as the library
// does for vectors ([C] -> {C,1,1,1}, [a,b] -> {a,b,1,1}, [] -> {1,1,1,1}).
inline Tensor to_tensor(const Entry& e) {
  DD_CHECK(e.shape.size() <= 4, "dd::safetensors::to_tensor: \"{}\" has rank {} (shape {}); dd::Tensor holds at most 4",
           e.name, e.shape.size(), shape_str(e.shape));
  std::int64_t d[4] = {1, 1, 1, 1};
  for (std::size_t i = 0; i < e.shape.size(); ++i) d[i] = e.shape[i];
  return to_tensor(e, Shape{d[0], d[1], d[2], d[3]});
}

namespace detail {

// Checks that `f` can be written (unique valid names, shapes matching data, UTF-8 strings).
inline void check_writable(const File& f, std::string_view where) {
  std::set<std::string_view> names;
  for (const Entry& e : f.tensors) {
    DD_CHECK(json::is_valid_utf8(e.name), "dd::safetensors::save '{}': tensor name \"{}\" is not valid UTF-8", where,
             e.name);
    DD_CHECK(e.name != "__metadata__", "dd::safetensors::save '{}': \"__metadata__\" cannot be a tensor name", where);
    DD_CHECK(names.insert(e.name).second, "dd::safetensors::save '{}': duplicate tensor name \"{}\"", where, e.name);
    const std::int64_t n = checked_numel(e.shape);
    DD_CHECK(n >= 0, "dd::safetensors::save '{}': tensor \"{}\" has an invalid shape {}", where, e.name,
             shape_str(e.shape));
    DD_CHECK(n == static_cast<std::int64_t>(e.data.size()),
             "dd::safetensors::save '{}': tensor \"{}\" has {} values but shape {} needs {}", where, e.name,
             e.data.size(), shape_str(e.shape), n);
  }
  for (const auto& [k, v] : f.metadata) {
    DD_CHECK(json::is_valid_utf8(k), "dd::safetensors::save '{}': metadata key \"{}\" is not valid UTF-8", where, k);
    DD_CHECK(json::is_valid_utf8(v), "dd::safetensors::save '{}': metadata value for \"{}\" is not valid UTF-8", where,
             k);
  }
}

// The JSON header, padded with spaces to a multiple of 8 bytes. Call check_writable first.
inline std::string header_json(const File& f) {
  std::string h = "{";
  bool first = true;
  if (!f.metadata.empty()) {
    h += "\"__metadata__\":{";
    bool first_kv = true;
    for (const auto& [k, v] : f.metadata) {
      if (!first_kv) h += ',';
      first_kv = false;
      json::append_quoted(h, k);
      h += ':';
      json::append_quoted(h, v);
    }
    h += '}';
    first = false;
  }
  std::int64_t offset = 0;
  for (const Entry& e : f.tensors) {
    if (!first) h += ',';
    first = false;
    json::append_quoted(h, e.name);
    const std::int64_t bytes = static_cast<std::int64_t>(e.data.size()) * 4;
    h += fmt::format(R"(:{{"dtype":"F32","shape":[{}],"data_offsets":[{},{}]}})", detail::join(e.shape, ","), offset,
                     offset + bytes);
    offset += bytes;
  }
  h += '}';
  h.append((8 - h.size() % 8) % 8, ' ');
  return h;
}

inline std::string le_u64(std::uint64_t v) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>((v >> (8 * i)) & 0xFF);
  return out;
}
inline std::uint64_t read_le_u64(const char* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

// Validated header: the entries (shapes, no data yet) in header order, and their byte ranges in
// the data buffer sorted by position (they tile [0, buffer size) exactly).
struct Layout {
  File file;
  struct Range {
    std::size_t index;  // into file.tensors
    std::uint64_t begin, end;
  };
  std::vector<Range> ranges;
};

// Checks the 8-byte length prefix against the file size; returns the header length N.
inline std::uint64_t check_header_length(std::uint64_t n, std::uint64_t file_size, std::string_view origin) {
  if (n > max_header_bytes)
    fail("dd::safetensors: '{}': header length {} is absurdly large (limit {} bytes); not a safetensors file?", origin,
         n, max_header_bytes);
  if (n > file_size - 8)
    fail("dd::safetensors: '{}': header length {} is larger than the file allows: only {} bytes follow the 8-byte "
         "length prefix (file truncated, or not a safetensors file?)",
         origin, n, file_size - 8);
  return n;
}

// Parses and validates the header JSON against the data buffer size.
inline Layout parse_header(std::string_view header, std::uint64_t buffer_size, std::uint64_t file_size,
                           std::string_view origin) {
  json::Value root;
  try {
    root = json::parse(header);
  } catch (const json::ParseError& e) {
    const bool dup = e.reason.rfind("duplicate", 0) == 0;
    fail("dd::safetensors: '{}': invalid JSON in the header at header byte {} (file byte {}): {}{}", origin, e.offset,
         e.offset + 8, e.reason, dup ? " (tensor names and entry fields must be unique)" : "");
  }
  if (!root.is_object())
    fail("dd::safetensors: '{}': the header is a JSON {}, not an object", origin, root.type_name());

  Layout out;
  for (const auto& [key, val] : root.as_object()) {
    if (key == "__metadata__") {
      if (val.is_null()) continue;
      if (!val.is_object())
        fail("dd::safetensors: '{}': \"__metadata__\" is a JSON {}, not an object of strings", origin, val.type_name());
      for (const auto& [mk, mv] : val.as_object()) {
        if (!mv.is_string())
          fail("dd::safetensors: '{}': metadata value for key \"{}\" is a JSON {}, not a string", origin, mk,
               mv.type_name());
        out.file.metadata.emplace(mk, mv.as_string());
      }
      continue;
    }
    if (!val.is_object())
      fail("dd::safetensors: '{}': entry for tensor \"{}\" is a JSON {}, not an object", origin, key, val.type_name());
    const json::Value* dtype = val.find("dtype");
    const json::Value* shape = val.find("shape");
    const json::Value* offsets = val.find("data_offsets");
    const std::pair<const char*, const json::Value*> fields[] = {
        {"dtype", dtype}, {"shape", shape}, {"data_offsets", offsets}};
    for (const auto& [field, ptr] : fields)
      if (!ptr) fail("dd::safetensors: '{}': tensor \"{}\" is missing \"{}\"", origin, key, field);
    if (!dtype->is_string())
      fail("dd::safetensors: '{}': tensor \"{}\" has a dtype that is a JSON {}, not a string", origin, key,
           dtype->type_name());
    if (dtype->as_string() != "F32")
      fail("dd::safetensors: '{}': tensor \"{}\" has unsupported dtype \"{}\" (only F32 is supported)", origin, key,
           dtype->as_string());

    Entry e;
    e.name = key;
    if (!shape->is_array())
      fail("dd::safetensors: '{}': tensor \"{}\": \"shape\" is a JSON {}, not an array", origin, key,
           shape->type_name());
    for (const json::Value& d : shape->as_array()) {
      if (!d.is_int() || d.as_int() < 0)
        fail("dd::safetensors: '{}': tensor \"{}\": \"shape\" must hold non-negative integers, found {}", origin, key,
             json::dump(d));
      e.shape.push_back(d.as_int());
    }
    const std::int64_t numel = checked_numel(e.shape);
    if (numel < 0)
      fail("dd::safetensors: '{}': tensor \"{}\": shape {} has too many elements", origin, key, shape_str(e.shape));

    if (!offsets->is_array() || offsets->as_array().size() != 2 ||
        !std::all_of(offsets->as_array().begin(), offsets->as_array().end(),
                     [](const json::Value& v) { return v.is_int() && v.as_int() >= 0; }))
      fail("dd::safetensors: '{}': tensor \"{}\": \"data_offsets\" must be two non-negative integers [begin, end], "
           "found {}",
           origin, key, json::dump(*offsets));
    const auto begin = static_cast<std::uint64_t>(offsets->as_array()[0].as_int());
    const auto end = static_cast<std::uint64_t>(offsets->as_array()[1].as_int());
    if (begin > end)
      fail("dd::safetensors: '{}': tensor \"{}\": data_offsets [{}, {}] are reversed (begin > end)", origin, key,
           begin, end);
    const auto need = static_cast<std::uint64_t>(numel) * 4;
    if (end - begin != need)
      fail("dd::safetensors: '{}': tensor \"{}\": data_offsets [{}, {}] span {} bytes but shape {} of F32 needs {} "
           "bytes",
           origin, key, begin, end, end - begin, shape_str(e.shape), need);
    out.ranges.push_back({out.file.tensors.size(), begin, end});
    out.file.tensors.push_back(std::move(e));
  }

  // The ranges must tile [0, buffer_size) exactly.
  std::stable_sort(out.ranges.begin(), out.ranges.end(), [](const Layout::Range& a, const Layout::Range& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t data_end = 0;
  const Layout::Range* last = nullptr;
  for (const Layout::Range& r : out.ranges) {
    if (r.end > data_end) {
      data_end = r.end;
      last = &r;
    }
  }
  if (data_end > buffer_size)
    fail("dd::safetensors: '{}': truncated file or data_offsets out of range: tensor \"{}\" ends at data byte {} but "
         "the data buffer holds only {} bytes (expected file size {} bytes, actual {} bytes)",
         origin, out.file.tensors[last->index].name, data_end, buffer_size, file_size - buffer_size + data_end,
         file_size);
  std::uint64_t expect = 0;
  const Layout::Range* prev = nullptr;
  for (const Layout::Range& r : out.ranges) {
    const std::string& name = out.file.tensors[r.index].name;
    if (r.begin < expect)
      fail("dd::safetensors: '{}': tensors \"{}\" (data_offsets [{}, {}]) and \"{}\" (data_offsets [{}, {}]) overlap",
           origin, out.file.tensors[prev->index].name, prev->begin, prev->end, name, r.begin, r.end);
    if (r.begin > expect)
      fail("dd::safetensors: '{}': gap of {} unused bytes before tensor \"{}\" (data_offsets [{}, {}]); tensor data "
           "must be contiguous",
           origin, r.begin - expect, name, r.begin, r.end);
    expect = r.end;
    prev = &r;
  }
  if (buffer_size != data_end)
    fail("dd::safetensors: '{}': {} trailing bytes after the last tensor: the data buffer holds {} bytes but the "
         "tensors end at {} (expected file size {} bytes, actual {} bytes)",
         origin, buffer_size - data_end, buffer_size, data_end, file_size - buffer_size + data_end, file_size);
  return out;
}

// RAII file descriptor.
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  // Closes now; returns 0 or the errno of a failed close.
  int close_now() {
    const int f = fd;
    fd = -1;
    return (f >= 0 && ::close(f) != 0) ? errno : 0;
  }
};

// Reads up to n bytes (fewer only at end of file). Returns the count, or -errno on error.
inline std::int64_t read_full(int fd, char* buf, std::uint64_t n) {
  std::uint64_t done = 0;
  while (done < n) {
    const std::size_t chunk = static_cast<std::size_t>(std::min<std::uint64_t>(n - done, 1u << 30));
    const ssize_t r = ::read(fd, buf + done, chunk);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -static_cast<std::int64_t>(errno);
    }
    if (r == 0) break;
    done += static_cast<std::uint64_t>(r);
  }
  return static_cast<std::int64_t>(done);
}

// Writes all n bytes. Returns 0 or the errno of the failure.
inline int write_full(int fd, const char* buf, std::uint64_t n) {
  std::uint64_t done = 0;
  while (done < n) {
    const std::size_t chunk = static_cast<std::size_t>(std::min<std::uint64_t>(n - done, 1u << 30));
    const ssize_t r = ::write(fd, buf + done, chunk);
    if (r < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (r == 0) return EIO;
    done += static_cast<std::uint64_t>(r);
  }
  return 0;
}

inline std::string parent_dir(const std::string& path) {
  const std::size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace detail

// The complete file as bytes.
inline std::string to_bytes(const File& f) {
  detail::check_writable(f, "<memory>");
  const std::string header = detail::header_json(f);
  DD_CHECK(header.size() <= max_header_bytes, "dd::safetensors: header of {} bytes exceeds the {} byte limit",
           header.size(), max_header_bytes);
  std::string out = detail::le_u64(header.size()) + header;
  for (const Entry& e : f.tensors)
    out.append(reinterpret_cast<const char*>(e.data.data()), e.data.size() * sizeof(float));
  return out;
}

// Parses a complete file held in memory; `origin` names it in error messages.
inline File from_bytes(std::string_view bytes, std::string_view origin = "<memory>") {
  const std::uint64_t size = bytes.size();
  if (size < 8)
    fail("dd::safetensors: '{}' is too short: {} bytes, but a safetensors file starts with an 8-byte header length",
         origin, size);
  const std::uint64_t n = detail::check_header_length(detail::read_le_u64(bytes.data()), size, origin);
  detail::Layout layout = detail::parse_header(bytes.substr(8, n), size - 8 - n, size, origin);
  const char* buffer = bytes.data() + 8 + n;
  for (const auto& r : layout.ranges) {
    Entry& e = layout.file.tensors[r.index];
    e.data.resize((r.end - r.begin) / 4);
    if (r.end > r.begin) std::memcpy(e.data.data(), buffer + r.begin, r.end - r.begin);
  }
  return std::move(layout.file);
}

// Writes `f` to `path` atomically (temporary file + fsync + rename). Throws dd::Error naming the
// path and the OS error on failure; the temporary file is removed and `path` is left as it was.
inline void save(const std::string& path, const File& f) {
  detail::check_writable(f, path);
  const std::string header = detail::header_json(f);
  DD_CHECK(header.size() <= max_header_bytes, "dd::safetensors::save '{}': header of {} bytes exceeds the {} byte limit",
           path, header.size(), max_header_bytes);
  const std::string tmp = fmt::format("{}.tmp-{}", path, static_cast<long>(::getpid()));

  detail::Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666));
  if (fd.fd < 0) {
    const int err = errno;
    fail("dd::safetensors::save: cannot create the temporary file '{}' for '{}': {}", tmp, path, std::strerror(err));
  }
  auto abandon = [&](const char* what, int err) {
    fd.close_now();
    ::unlink(tmp.c_str());
    fail("dd::safetensors::save: {} '{}' (temporary file for '{}') failed: {}", what, tmp, path, std::strerror(err));
  };
  const std::string prefix = detail::le_u64(header.size());
  if (int err = detail::write_full(fd.fd, prefix.data(), prefix.size())) abandon("writing", err);
  if (int err = detail::write_full(fd.fd, header.data(), header.size())) abandon("writing", err);
  for (const Entry& e : f.tensors)
    if (int err = detail::write_full(fd.fd, reinterpret_cast<const char*>(e.data.data()), e.data.size() * sizeof(float)))
      abandon("writing", err);
  if (::fsync(fd.fd) != 0) abandon("flushing", errno);
  if (int err = fd.close_now()) {
    ::unlink(tmp.c_str());
    fail("dd::safetensors::save: closing '{}' (temporary file for '{}') failed: {}", tmp, path, std::strerror(err));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    fail("dd::safetensors::save: cannot rename '{}' to '{}': {}", tmp, path, std::strerror(err));
  }
  // Best effort: make the rename itself durable.
  const int dfd = ::open(detail::parent_dir(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

// Reads and validates the file at `path`. Throws dd::Error naming the file and the problem.
inline File load(const std::string& path) {
  detail::Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.fd < 0) {
    const int err = errno;
    fail("dd::safetensors::load: cannot open '{}': {}", path, std::strerror(err));
  }
  struct stat st {};
  if (::fstat(fd.fd, &st) != 0) {
    const int err = errno;
    fail("dd::safetensors::load: cannot stat '{}': {}", path, std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) fail("dd::safetensors::load: '{}' is not a regular file", path);
  const auto size = static_cast<std::uint64_t>(st.st_size);
  auto read_or_fail = [&](char* buf, std::uint64_t n, std::string_view what) {
    const std::int64_t got = detail::read_full(fd.fd, buf, n);
    if (got < 0)
      fail("dd::safetensors::load: reading {} of '{}' failed: {}", what, path,
           std::strerror(static_cast<int>(-got)));
    if (static_cast<std::uint64_t>(got) != n)
      fail("dd::safetensors::load: '{}' is truncated: it ended while reading {} ({} of {} bytes read)", path, what,
           got, n);
  };
  if (size < 8)
    fail("dd::safetensors: '{}' is too short: {} bytes, but a safetensors file starts with an 8-byte header length",
         path, size);
  char prefix[8];
  read_or_fail(prefix, 8, "the header length");
  const std::uint64_t n = detail::check_header_length(detail::read_le_u64(prefix), size, path);
  std::string header(n, '\0');
  read_or_fail(header.data(), n, "the header");
  detail::Layout layout = detail::parse_header(header, size - 8 - n, size, path);
  for (const auto& r : layout.ranges) {  // sorted and contiguous: sequential reads
    Entry& e = layout.file.tensors[r.index];
    e.data.resize((r.end - r.begin) / 4);
    read_or_fail(reinterpret_cast<char*>(e.data.data()), r.end - r.begin, fmt::format("tensor \"{}\"", e.name));
  }
  return std::move(layout.file);
}

}  // namespace dd::safetensors
