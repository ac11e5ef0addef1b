#pragma once
// Minimal JSON (RFC 8259) reader/writer: a strict recursive-descent parser that reports the byte
// offset of the first problem, and a compact writer. Objects keep their members in document order
// and reject duplicate keys; numbers are int64 when written without fraction/exponent and in range,
// double otherwise; strings must be valid UTF-8 and \uXXXX escapes (incl. surrogate pairs) are
// decoded to UTF-8.
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <variant>
#include <vector>

#include <fmt/format.h>

#include "dd/core/error.hpp"

namespace dd::json {

struct Value;
using Array = std::vector<Value>;
using Member = std::pair<std::string, Value>;
using Object = std::vector<Member>;  // document order, unique keys

struct Value {
  std::variant<std::nullptr_t, bool, std::int64_t, double, std::string, Array, Object> v{nullptr};

  Value() = default;
  Value(std::nullptr_t) {}
  Value(bool b) : v(b) {}
  Value(std::int64_t i) : v(i) {}
  Value(int i) : v(std::int64_t{i}) {}
  Value(double d) : v(d) {}
  Value(std::string s) : v(std::move(s)) {}
  Value(const char* s) : v(std::string(s)) {}
  Value(Array a) : v(std::move(a)) {}
  Value(Object o) : v(std::move(o)) {}

  bool is_null() const { return std::holds_alternative<std::nullptr_t>(v); }
  bool is_bool() const { return std::holds_alternative<bool>(v); }
  bool is_int() const { return std::holds_alternative<std::int64_t>(v); }
  bool is_double() const { return std::holds_alternative<double>(v); }
  bool is_number() const { return is_int() || is_double(); }
  bool is_string() const { return std::holds_alternative<std::string>(v); }
  bool is_array() const { return std::holds_alternative<Array>(v); }
  bool is_object() const { return std::holds_alternative<Object>(v); }

  bool as_bool() const { return std::get<bool>(v); }
  std::int64_t as_int() const { return std::get<std::int64_t>(v); }
  double as_double() const { return is_int() ? static_cast<double>(as_int()) : std::get<double>(v); }
  const std::string& as_string() const { return std::get<std::string>(v); }
  const Array& as_array() const { return std::get<Array>(v); }
  const Object& as_object() const { return std::get<Object>(v); }

  // Member lookup in an object; nullptr when absent or when this is not an object.
  const Value* find(std::string_view key) const {
    if (!is_object()) return nullptr;
    for (const auto& [k, val] : as_object())
      if (k == key) return &val;
    return nullptr;
  }

  // "null", "boolean", "integer", "number", "string", "array" or "object" (for error messages).
  const char* type_name() const {
    static constexpr const char* names[] = {"null", "boolean", "integer", "number", "string", "array", "object"};
    return names[v.index()];
  }
};

// A parse failure; `offset` is the byte offset (from the start of the parsed text) of the problem.
struct ParseError : Error {
  std::size_t offset;
  std::string reason;
  ParseError(std::size_t off, std::string why)
      : Error(fmt::format("{} at byte {}", why, off)), offset(off), reason(std::move(why)) {}
};

// True when `s` is well-formed UTF-8 (no overlong forms, no surrogates, at most U+10FFFF).
inline bool is_valid_utf8(std::string_view s) {
  std::size_t i = 0;
  const std::size_t n = s.size();
  while (i < n) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len;
    std::uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1Fu;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      cp = c & 0x0Fu;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07u;
    } else {
      return false;
    }
    if (n - i < len) return false;
    for (std::size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0u) != 0x80u) return false;
      cp = (cp << 6) | (cc & 0x3Fu);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += len;
  }
  return true;
}

namespace detail {

inline void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

inline std::string describe_byte(char ch) {
  const auto c = static_cast<unsigned char>(ch);
  if (c >= 0x20 && c < 0x7F) return fmt::format("'{}'", ch);
  return fmt::format("byte 0x{:02X}", c);
}

class Parser {
 public:
  static constexpr int max_depth = 256;

  explicit Parser(std::string_view text) : s_(text) {}

  Value parse_document() {
    skip_ws();
    Value v = parse_value(0);
    skip_ws();
    if (pos_ != s_.size()) error(fmt::format("unexpected {} after the JSON value", describe_byte(s_[pos_])));
    return v;
  }

 private:
  [[noreturn]] void error(std::string why) const { throw ParseError(pos_, std::move(why)); }
  [[noreturn]] void error_at(std::size_t at, std::string why) const { throw ParseError(at, std::move(why)); }

  bool at_end() const { return pos_ >= s_.size(); }
  char peek() const { return s_[pos_]; }

  void skip_ws() {
    while (!at_end()) {
      const char c = peek();
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
        ++pos_;
      else
        break;
    }
  }

  void expect(char c, const char* what) {
    if (at_end()) error(fmt::format("unexpected end of input, expected {}", what));
    if (peek() != c) error(fmt::format("expected {} but found {}", what, describe_byte(peek())));
    ++pos_;
  }

  Value parse_value(int depth) {
    if (at_end()) error("unexpected end of input, expected a value");
    switch (peek()) {
      case '{': return parse_object(depth + 1);
      case '[': return parse_array(depth + 1);
      case '"': return Value(parse_string());
      case 't': return parse_literal("true", Value(true));
      case 'f': return parse_literal("false", Value(false));
      case 'n': return parse_literal("null", Value(nullptr));
      default:
        if (peek() == '-' || (peek() >= '0' && peek() <= '9')) return parse_number();
        error(fmt::format("unexpected {}, expected a value", describe_byte(peek())));
    }
  }

  Value parse_literal(std::string_view word, Value v) {
    if (s_.substr(pos_, word.size()) != word) error(fmt::format("invalid literal, expected '{}'", word));
    pos_ += word.size();
    return v;
  }

  Value parse_object(int depth) {
    if (depth > max_depth) error(fmt::format("nesting deeper than {} levels", max_depth));
    ++pos_;  // '{'
    Object obj;
    std::set<std::string, std::less<>> keys;
    skip_ws();
    if (!at_end() && peek() == '}') {
      ++pos_;
      return Value(std::move(obj));
    }
    for (;;) {
      skip_ws();
      if (at_end()) error("unexpected end of input inside an object, expected a key");
      if (peek() != '"') error(fmt::format("expected a string key but found {}", describe_byte(peek())));
      const std::size_t key_at = pos_;
      std::string key = parse_string();
      if (!keys.insert(key).second) error_at(key_at, fmt::format("duplicate object key \"{}\"", key));
      skip_ws();
      expect(':', "':' after an object key");
      skip_ws();
      Value val = parse_value(depth);
      obj.emplace_back(std::move(key), std::move(val));
      skip_ws();
      if (at_end()) error("unexpected end of input inside an object, expected ',' or '}'");
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() == '}') {
        ++pos_;
        return Value(std::move(obj));
      }
      error(fmt::format("expected ',' or '}}' in an object but found {}", describe_byte(peek())));
    }
  }

  Value parse_array(int depth) {
    if (depth > max_depth) error(fmt::format("nesting deeper than {} levels", max_depth));
    ++pos_;  // '['
    Array arr;
    skip_ws();
    if (!at_end() && peek() == ']') {
      ++pos_;
      return Value(std::move(arr));
    }
    for (;;) {
      skip_ws();
      arr.push_back(parse_value(depth));
      skip_ws();
      if (at_end()) error("unexpected end of input inside an array, expected ',' or ']'");
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() == ']') {
        ++pos_;
        return Value(std::move(arr));
      }
      error(fmt::format("expected ',' or ']' in an array but found {}", describe_byte(peek())));
    }
  }

  std::uint32_t parse_hex4() {
    if (s_.size() - pos_ < 4) error("unexpected end of input in a \\u escape");
    std::uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = s_[pos_];
      std::uint32_t d;
      if (c >= '0' && c <= '9')
        d = static_cast<std::uint32_t>(c - '0');
      else if (c >= 'a' && c <= 'f')
        d = static_cast<std::uint32_t>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F')
        d = static_cast<std::uint32_t>(c - 'A' + 10);
      else
        error(fmt::format("invalid hex digit {} in a \\u escape", describe_byte(c)));
      v = (v << 4) | d;
      ++pos_;
    }
    return v;
  }

  std::string parse_string() {
    ++pos_;  // opening quote
    std::string out;
    for (;;) {
      if (at_end()) error("unterminated string");
      const char c = peek();
      const auto uc = static_cast<unsigned char>(c);
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (c == '\\') {
        const std::size_t esc_at = pos_;
        ++pos_;
        if (at_end()) error("unterminated escape sequence");
        const char e = peek();
        ++pos_;
        switch (e) {
          case '"': out += '"'; break;
          case '\\': out += '\\'; break;
          case '/': out += '/'; break;
          case 'b': out += '\b'; break;
          case 'f': out += '\f'; break;
          case 'n': out += '\n'; break;
          case 'r': out += '\r'; break;
          case 't': out += '\t'; break;
          case 'u': {
            std::uint32_t cp = parse_hex4();
            if (cp >= 0xDC00 && cp <= 0xDFFF) error_at(esc_at, "lone low surrogate in a \\u escape");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
              if (s_.size() - pos_ < 2 || s_[pos_] != '\\' || s_[pos_ + 1] != 'u')
                error_at(esc_at, "high surrogate in a \\u escape is not followed by a low surrogate");
              pos_ += 2;
              const std::uint32_t lo = parse_hex4();
              if (lo < 0xDC00 || lo > 0xDFFF)
                error_at(esc_at, "high surrogate in a \\u escape is not followed by a low surrogate");
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            append_utf8(out, cp);
            break;
          }
          default: error_at(esc_at, fmt::format("invalid escape sequence '\\{}'", e));
        }
        continue;
      }
      if (uc < 0x20) error(fmt::format("unescaped control character 0x{:02X} in a string", uc));
      if (uc < 0x80) {
        out += c;
        ++pos_;
        continue;
      }
      // Multi-byte UTF-8 sequence: validate and copy.
      std::size_t len = uc >= 0xF0 ? 4 : uc >= 0xE0 ? 3 : 2;
      if (len > s_.size() - pos_ || !is_valid_utf8(s_.substr(pos_, len)))
        error("invalid UTF-8 in a string");
      out.append(s_.substr(pos_, len));
      pos_ += len;
    }
  }

  Value parse_number() {
    const std::size_t start = pos_;
    bool integral = true;
    if (peek() == '-') ++pos_;
    if (at_end()) error("unexpected end of input in a number");
    if (peek() == '0') {
      ++pos_;
    } else if (peek() >= '1' && peek() <= '9') {
      while (!at_end() && peek() >= '0' && peek() <= '9') ++pos_;
    } else {
      error("invalid number: expected a digit");
    }
    if (!at_end() && peek() == '.') {
      integral = false;
      ++pos_;
      if (at_end() || peek() < '0' || peek() > '9') error("invalid number: expected a digit after '.'");
      while (!at_end() && peek() >= '0' && peek() <= '9') ++pos_;
    }
    if (!at_end() && (peek() == 'e' || peek() == 'E')) {
      integral = false;
      ++pos_;
      if (!at_end() && (peek() == '+' || peek() == '-')) ++pos_;
      if (at_end() || peek() < '0' || peek() > '9') error("invalid number: expected a digit in the exponent");
      while (!at_end() && peek() >= '0' && peek() <= '9') ++pos_;
    }
    const char* first = s_.data() + start;
    const char* last = s_.data() + pos_;
    if (integral) {
      std::int64_t i = 0;
      const auto r = std::from_chars(first, last, i);
      if (r.ec == std::errc() && r.ptr == last) return Value(i);
      // Out of int64 range: fall back to double.
    }
    double d = 0.0;
    const auto r = std::from_chars(first, last, d);
    if (r.ec == std::errc::result_out_of_range) {
      // Underflow (a negative exponent, or |x| < 1 with too many leading zeros) rounds to zero;
      // overflow is an error.
      const std::string_view text(first, static_cast<std::size_t>(last - first));
      const bool negative = text.front() == '-';
      const std::size_t e = text.find_first_of("eE");
      const bool tiny = (e != std::string_view::npos && e + 1 < text.size() && text[e + 1] == '-') ||
                        text.substr(negative ? 1 : 0, 2) == "0.";
      if (!tiny) error_at(start, "number out of range");
      return Value(negative ? -0.0 : 0.0);
    }
    if (r.ec != std::errc() || r.ptr != last) error_at(start, "invalid number");
    return Value(d);
  }

  std::string_view s_;
  std::size_t pos_ = 0;
};

}  // namespace detail

// Parses a complete JSON document (surrounding whitespace allowed). Throws ParseError.
inline Value parse(std::string_view text) { return detail::Parser(text).parse_document(); }

// Appends `s` as a JSON string literal. Non-ASCII UTF-8 is copied as is; `"`, `\` and control
// characters are escaped. Throws dd::Error if `s` is not valid UTF-8.
inline void append_quoted(std::string& out, std::string_view s) {
  DD_CHECK(is_valid_utf8(s), "dd::json: string is not valid UTF-8: \"{}\"", s);
  out += '"';
  for (const char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20)
          out += fmt::format("\\u{:04x}", static_cast<unsigned>(static_cast<unsigned char>(c)));
        else
          out += c;
    }
  }
  out += '"';
}

inline std::string quote(std::string_view s) {
  std::string out;
  append_quoted(out, s);
  return out;
}

// Compact serialization (no whitespace). Non-finite doubles cannot be written and throw dd::Error.
inline void dump_to(std::string& out, const Value& v) {
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::nullptr_t>) {
          out += "null";
        } else if constexpr (std::is_same_v<T, bool>) {
          out += x ? "true" : "false";
        } else if constexpr (std::is_same_v<T, std::int64_t>) {
          out += fmt::format("{}", x);
        } else if constexpr (std::is_same_v<T, double>) {
          DD_CHECK(std::isfinite(x), "dd::json: cannot write the non-finite number {}", x);
          std::string num = fmt::format("{}", x);
          // Keep doubles recognisable as such on re-reading ("1" would come back as an integer).
          if (num.find_first_of(".eE") == std::string::npos) num += ".0";
          out += num;
        } else if constexpr (std::is_same_v<T, std::string>) {
          append_quoted(out, x);
        } else if constexpr (std::is_same_v<T, Array>) {
          out += '[';
          for (std::size_t i = 0; i < x.size(); ++i) {
            if (i) out += ',';
            dump_to(out, x[i]);
          }
          out += ']';
        } else {
          out += '{';
          for (std::size_t i = 0; i < x.size(); ++i) {
            if (i) out += ',';
            append_quoted(out, x[i].first);
            out += ':';
            dump_to(out, x[i].second);
          }
          out += '}';
        }
      },
      v.v);
}

inline std::string dump(const Value& v) {
  std::string out;
  dump_to(out, v);
  return out;
}

}  // namespace dd::json
