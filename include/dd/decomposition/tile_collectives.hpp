#pragma once
// The two collective steps of a distributed bottleneck exchange (C = Y), as autograd ops:
//   gather_tiles: every rank gets all K tiles the clones send. Its own tiles pass through as the
//     same Vars; the others arrive as constants: their gradients are computed redundantly by the
//     communication network on every rank, so each owner gets its own tiles' gradient locally.
//   keep_local: every rank keeps its own tiles of the communication network's output. In backward
//     the ranks all-gather these tiles' gradients, so each rank can run the communication
//     network's backward on the whole map (and gets the same parameter gradient as one process).
// Both run on every rank in the same order, so the collectives match.
#include <algorithm>
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

// The element type the ranks' tiles travel in: theirs when they all agree (half activations travel
// half), else f32. Every rank must pick the same, or the bytes would be read in another layout: a
// host all-reduce of (tiles held ? 1 : 0, the type's code, its square) over the ranks that hold
// tiles; their codes agree iff count * sum of squares == sum^2, which every rank checks on the same
// sums (so all stop or none), before any tile moves. A rank without tiles takes the others' type.
inline DType exchange_dtype(const std::vector<Tensor>& mine, Distribution& dist) {
  DType t = mine.empty() ? DType::f32 : mine[0].dtype();
  for (const Tensor& m : mine) t = common_dtype(t, m.dtype());
  const double code = static_cast<double>(t), held = mine.empty() ? 0.0 : 1.0;
  double sums[3] = {held, held * code, held * code * code};
  dist.all_reduce_sum(sums, 3);
  DD_CHECK(sums[0] * sums[2] == sums[1] * sums[1],
           "dd::exchange: the ranks' tiles have different element types ({} here); run every rank with the same "
           "precision settings",
           mine.empty() ? "none" : dtype_name(t));
  return sums[0] > 0 ? static_cast<DType>(static_cast<int>(sums[1] / sums[0])) : DType::f32;
}

// The K tiles of all ranks from this rank's `mine`, through the distribution's direct collectives
// (on the tensors' device): each rank packs its tiles into a buffer of the largest rank's size
// (every rank knows every tile's shape, so every rank's count), one all-gather, and the tiles are
// views of the gathered buffer. The collective moves floats; half tiles travel as their bytes,
// each rank's share padded to whole floats (an all-gather copies, it never computes).
inline std::vector<Tensor> gather_direct(const std::vector<Tensor>& mine, const std::vector<Shape>& shapes,
                                         Distribution& dist, Device d) {
  const auto K = static_cast<std::int64_t>(shapes.size());
  const int P = dist.size();
  const DType t = exchange_dtype(mine, dist);
  const auto per_float = static_cast<std::int64_t>(4 / dtype_size(t));  // elements per float: 1 or 2
  std::vector<std::int64_t> counts(static_cast<std::size_t>(P), 0);
  for (int r = 0; r < P; ++r)
    for (std::int64_t k = dist.first_clone(r, K); k < dist.first_clone(r + 1, K); ++k)
      counts[std::size_t(r)] += shapes[std::size_t(k)].numel();
  std::int64_t most = *std::max_element(counts.begin(), counts.end());
  most = (most + per_float - 1) / per_float * per_float;
  const Tensor send = Tensor::zeros({1, 1, 1, most}, d, MemoryFormat::nchw, t);  // the padding travels as zeros
  std::int64_t at = 0;
  for (const Tensor& m : mine) {
    DD_CHECK(at + m.numel() <= most, "dd::exchange: this rank's tiles hold more values than its clones' shapes");
    send.slice(3, at, m.numel()).reshape(m.shape()).copy_from(m);
    at += m.numel();
  }
  const Tensor all = Tensor::empty({1, 1, 1, std::int64_t(P) * most}, d, MemoryFormat::nchw, t);
  dist.all_gather_direct(static_cast<const float*>(send.raw()), most / per_float, static_cast<float*>(all.raw()));
  std::vector<Tensor> out;
  for (int r = 0; r < P; ++r) {
    std::int64_t off = std::int64_t(r) * most;
    for (std::int64_t k = dist.first_clone(r, K); k < dist.first_clone(r + 1, K); ++k) {
      const Shape s = shapes[std::size_t(k)];
      out.push_back(all.slice(3, off, s.numel()).reshape(s));
      off += s.numel();
    }
  }
  return out;
}

// All K tiles from this rank's, through host buffers or, when the distribution has them, its direct
// collectives.
inline std::vector<Tensor> gather_all(const std::vector<Tensor>& mine, const std::vector<Shape>& shapes,
                                      Distribution& dist, Device d) {
  if (dist.direct_collectives()) return gather_direct(mine, shapes, dist, d);
  const std::vector<float> packed = pack(mine);
  std::vector<std::int64_t> counts;
  return unpack(dist.all_gather(packed.data(), std::int64_t(packed.size()), counts), shapes, d);
}
}  // namespace detail

// local: this rank's tiles (in local order); shapes: all K tiles' shapes. Returns all K tiles.
inline std::vector<Var> gather_tiles(const std::vector<Var>& local, const std::vector<Shape>& shapes,
                                     const TileGroup& group) {
  DD_CHECK(local.size() == group.local.size(), "dd::gather_tiles: {} tiles for {} local clones", local.size(),
           group.local.size());
  std::vector<Tensor> values;
  for (const Var& v : local) values.push_back(v.value());
  const Device d = local.empty() ? Device::cpu : local[0].value().device();
  std::vector<Tensor> tiles = detail::gather_all(values, shapes, *group.dist, d);
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
      for (const Var& v : out)  // (in the value's type: the ranks' tiles must agree on it)
        grads.push_back(v.grad().defined() ? v.grad()
                                           : Tensor::zeros(v.shape(), v.value().device(), v.value().format(),
                                                           v.value().dtype()));
      std::vector<Shape> shapes;
      for (const Var& v : all) shapes.push_back(v.shape());
      std::vector<Tensor> g = detail::gather_all(grads, shapes, *group.dist, all[0].value().device());
      for (std::size_t k = 0; k < all.size(); ++k)
        if (all[k].requires_grad()) all[k].accumulate_grad(std::move(g[k]));
    });
  return out;
}

}  // namespace dd
