#pragma once
// The two collective steps of a distributed bottleneck exchange (C = Y), as autograd ops:
//   gather_tiles: every rank gets all K tiles the clones send. Its own tiles pass through as the
//     same Vars; the others arrive as constants: their gradients are computed redundantly by the
//     communication network on every rank, so each owner gets its own tiles' gradient locally.
//   keep_local: every rank keeps its own tiles of the communication network's output. In backward
//     the ranks all-gather these tiles' gradients, so each rank can run the communication
//     network's backward on the whole map (and gets the same parameter gradient as one process).
// Both run on every rank in the same order, so the collectives match.
#include <vector>

#include "dd/decomposition/distribution.hpp"
#include "dd/decomposition/grid.hpp"
#include "dd/ops/recording.hpp"

namespace dd {

// The clones of one rank in a grid of K, and the tile shapes.
struct TileGroup {
  Distribution* dist = nullptr;
  std::vector<std::int64_t> local;  // global clone indices owned by this rank, ascending
  std::int64_t K = 0;
};

namespace detail {
// Packs tensors (any device) into one host buffer.
inline std::vector<float> pack(const std::vector<Tensor>& ts) {
  std::vector<float> buf;
  for (const Tensor& t : ts) {
    const std::vector<float> v = t.to_vector();
    buf.insert(buf.end(), v.begin(), v.end());
  }
  return buf;
}
// Unpacks the all-gathered buffer into K tensors of the given shapes on device d (clones are owned
// in contiguous blocks, so rank order is clone order).
inline std::vector<Tensor> unpack(const std::vector<float>& all, const std::vector<Shape>& shapes, Device d) {
  std::vector<Tensor> out;
  std::size_t at = 0;
  for (const Shape& s : shapes) {
    const auto n = static_cast<std::size_t>(s.numel());
    DD_CHECK(at + n <= all.size(), "dd::exchange: the ranks sent {} values, fewer than the grid's tiles need", all.size());
    out.push_back(Tensor::from(s, std::vector<float>(all.begin() + std::ptrdiff_t(at), all.begin() + std::ptrdiff_t(at + n))).to(d));
    at += n;
  }
  DD_CHECK(at == all.size(), "dd::exchange: the ranks sent {} values, the grid's tiles hold {}", all.size(), at);
  return out;
}
}  // namespace detail

// local: this rank's tiles (in local order); shapes: all K tiles' shapes. Returns all K tiles.
inline std::vector<Var> gather_tiles(const std::vector<Var>& local, const std::vector<Shape>& shapes,
                                     const TileGroup& group) {
  DD_CHECK(local.size() == group.local.size(), "dd::gather_tiles: {} tiles for {} local clones", local.size(),
           group.local.size());
  std::vector<Tensor> values;
  for (const Var& v : local) values.push_back(v.value());
  const std::vector<float> mine = detail::pack(values);
  std::vector<std::int64_t> counts;
  const std::vector<float> all = group.dist->all_gather(mine.data(), std::int64_t(mine.size()), counts);
  const Device d = local.empty() ? Device::cpu : local[0].value().device();
  std::vector<Tensor> tiles = detail::unpack(all, shapes, d);
  std::vector<Var> out;
  for (std::int64_t k = 0, i = 0; k < group.K; ++k) {
    const bool own = i < std::int64_t(group.local.size()) && group.local[std::size_t(i)] == k;
    out.push_back(own ? local[std::size_t(i++)] : Var(std::move(tiles[std::size_t(k)])));
  }
  return out;
}

// all: the K tiles of the communication network's output (identical on every rank). Returns this
// rank's tiles; their gradients are all-gathered in backward and given to all K tiles.
inline std::vector<Var> keep_local(const std::vector<Var>& all, const TileGroup& group) {
  DD_CHECK(std::int64_t(all.size()) == group.K, "dd::keep_local: {} tiles for a grid of {}", all.size(), group.K);
  bool rec = false;
  for (const Var& v : all) rec = rec || detail::should_record({&v});
  std::vector<Var> out;
  for (const std::int64_t k : group.local) out.emplace_back(all[std::size_t(k)].value(), rec);
  if (rec)
    Tape::current().record([all, out, group] {
      std::vector<Tensor> grads;  // a tile without a gradient sends zeros: every rank sends its full share
      for (const Var& v : out) grads.push_back(v.grad().defined() ? v.grad() : Tensor::zeros(v.shape(), v.value().device()));
      const std::vector<float> mine = detail::pack(grads);
      std::vector<std::int64_t> counts;
      const std::vector<float> gathered = group.dist->all_gather(mine.data(), std::int64_t(mine.size()), counts);
      std::vector<Shape> shapes;
      for (const Var& v : all) shapes.push_back(v.shape());
      std::vector<Tensor> g = detail::unpack(gathered, shapes, all[0].value().device());
      for (std::size_t k = 0; k < all.size(); ++k)
        if (all[k].requires_grad()) all[k].accumulate_grad(std::move(g[k]));
    });
  return out;
}

}  // namespace dd
