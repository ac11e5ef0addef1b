#pragma once
// The bottleneck exchange of the DDU-Net, in one process: the last F channels of every clone's
// bottleneck are stitched in image order (C = Y) and passed through the communication network,
// or each clone runs the network on its own maps (C = N). The result replaces those channels.
#include <vector>

#include "dd/decomposition/stitch.hpp"
#include "dd/decomposition/tile_collectives.hpp"
#include "dd/layers/context.hpp"

namespace dd {

enum class Exchange {
  stitched,  // C = Y: one coarse map of all subimages, real communication
  local,     // C = N: the same network on each subimage's own maps, no communication
};

inline const char* exchange_name(Exchange e) { return e == Exchange::stitched ? "Y" : "N"; }

// Channels a communication network exchanges: its input channels (typed or dynamic).
template <class Comm>
std::int64_t comm_channels(const Comm& comm) {
  if constexpr (requires { Comm::in_channels + 0; })
    return Comm::in_channels;
  else
    return comm.in_channels();
}

// bottlenecks: one per clone, in row-major grid order; coarse: the grid at bottleneck resolution.
// po/bo: where the communication network's parameters and buffers start in ctx. With a group, the
// bottlenecks are this rank's clones only: the sent maps of all ranks are gathered, every rank runs
// the communication network on the whole coarse map, and keeps its own clones' part.
template <class Comm>
std::vector<Var> exchange_bottlenecks(Context& ctx, const Comm& comm, const std::vector<Var>& bottlenecks,
                                      const Grid& coarse, Exchange mode, std::size_t po, std::size_t bo,
                                      const TileGroup* group = nullptr) {
  const std::int64_t F = comm_channels(comm);
  if (F == 0) return bottlenecks;
  const std::int64_t C = bottlenecks.at(0).shape().c;
  DD_CHECK(C >= F, "dd::exchange: bottleneck has {} channels, fewer than the {} to communicate", C, F);
  std::vector<Var> kept, sent;
  for (const Var& b : bottlenecks) {
    if (C > F) kept.push_back(slice(b, 1, 0, C - F));
    sent.push_back(C > F ? slice(b, 1, C - F, F) : b);
  }
  // The shapes of every clone's sent maps (for gathering them from the ranks).
  std::vector<Shape> shapes;
  for (std::int64_t k = 0; group && k < coarse.count(); ++k)
    shapes.push_back({sent.at(0).shape().n, F, coarse.heights()[std::size_t(k / coarse.cols())],
                      coarse.widths()[std::size_t(k % coarse.cols())]});
  std::vector<Var> received;
  if (mode == Exchange::stitched && group) {
    const std::vector<Var> all = gather_tiles(sent, shapes, *group);
    received = keep_local(cut(comm.forward(ctx, stitch(all, coarse), po, bo), coarse), *group);
  } else if (mode == Exchange::stitched) {
    received = cut(comm.forward(ctx, stitch(sent, coarse), po, bo), coarse);
  } else if (group) {
    // C = N across ranks: every rank runs the network on every subimage in grid order, so the
    // dropout draws and running statistics are one process's (an ablation, not a fast path).
    std::vector<Var> all_out;
    for (const Var& s : gather_tiles(sent, shapes, *group)) all_out.push_back(comm.forward(ctx, s, po, bo));
    received = keep_local(all_out, *group);
  } else {
    for (const Var& s : sent) received.push_back(comm.forward(ctx, s, po, bo));
  }
  if (C == F) return received;
  std::vector<Var> out;
  for (std::size_t k = 0; k < received.size(); ++k) out.push_back(concat({kept[k], received[k]}, 1));
  return out;
}

// Typed communication networks need no instance.
template <class Comm>
std::vector<Var> exchange_bottlenecks(Context& ctx, const std::vector<Var>& bottlenecks, const Grid& coarse,
                                      Exchange mode, std::size_t po, std::size_t bo) {
  return exchange_bottlenecks(ctx, Comm{}, bottlenecks, coarse, mode, po, bo);
}

}  // namespace dd
