#pragma once
// Row-major matrix views over raw float buffers, so kernels can hand strided blocks of NCHW
// tensors to Eigen without copies, and gemm(): one single-threaded Eigen GEMM whose packing
// buffers are thread scratch. Eigen's own product allocates (and, above malloc's trim threshold,
// page-faults) its packing buffers on every call and zero-fills the destination first; the
// kernels call GEMMs per row block from their own threads, so they use gemm() instead.
#include <Eigen/Core>

#include <algorithm>
#include <cstdint>

#include "dd/kernels/cpu/scratch.hpp"

namespace dd::cpu {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixView = Eigen::Map<RowMatrix, Eigen::Unaligned, Eigen::OuterStride<>>;
using ConstMatrixView = Eigen::Map<const RowMatrix, Eigen::Unaligned, Eigen::OuterStride<>>;

// rows x cols block whose consecutive rows lie row_stride floats apart.
inline MatrixView matrix(float* p, std::int64_t rows, std::int64_t cols, std::int64_t row_stride) {
  return MatrixView(p, rows, cols, Eigen::OuterStride<>(row_stride));
}
inline ConstMatrixView matrix(const float* p, std::int64_t rows, std::int64_t cols, std::int64_t row_stride) {
  return ConstMatrixView(p, rows, cols, Eigen::OuterStride<>(row_stride));
}

// A row-major operand: `rows x cols` as stored, used transposed when `t`.
struct GemmOperand {
  const float* p;
  std::int64_t ld;
  bool t = false;
};

namespace detail {

class ScratchBlocking : public Eigen::internal::level3_blocking<float, float> {
 public:
  ScratchBlocking(Eigen::Index rows, Eigen::Index cols, Eigen::Index depth) {
    m_mc = rows;
    m_nc = cols;
    m_kc = depth;
    Eigen::internal::computeProductBlockingSizes<float, float, 1>(m_kc, m_mc, m_nc, Eigen::Index{1});
    m_blockA = thread_scratch(Scratch::gemm_lhs, m_kc * m_mc);
    m_blockB = thread_scratch(Scratch::gemm_rhs, m_kc * m_nc);
  }
};

template <int LhsOrder, int RhsOrder>
void colmajor_gemm(Eigen::Index rows, Eigen::Index cols, Eigen::Index depth, const float* lhs, Eigen::Index ld_lhs,
                   const float* rhs, Eigen::Index ld_rhs, float* res, Eigen::Index ld_res) {
  ScratchBlocking blocking(rows, cols, depth);
  Eigen::internal::general_matrix_matrix_product<Eigen::Index, float, LhsOrder, false, float, RhsOrder, false,
                                                 Eigen::ColMajor, 1>::run(rows, cols, depth, lhs, ld_lhs, rhs, ld_rhs,
                                                                          res, 1, ld_res, 1.0f, blocking, nullptr);
}

}  // namespace detail

// C[m x n] (row-major, row stride ldc) = op(A) * op(B), or += when `accumulate`; op(A) is
// m x k, op(B) is k x n. Single-threaded: callers split the work.
inline void gemm(std::int64_t m, std::int64_t n, std::int64_t k, GemmOperand a, GemmOperand b, float* c,
                 std::int64_t ldc, bool accumulate) {
  if (m <= 0 || n <= 0) return;
  if (!accumulate)
    for (std::int64_t i = 0; i < m; ++i) std::fill_n(c + i * ldc, n, 0.0f);
  if (k <= 0) return;
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: op(B)^T is B read
  // column-major (row-major when B is used transposed), likewise op(A)^T.
  using detail::colmajor_gemm;
  constexpr int col = Eigen::ColMajor, row = Eigen::RowMajor;
  if (!b.t && !a.t)
    colmajor_gemm<col, col>(n, m, k, b.p, b.ld, a.p, a.ld, c, ldc);
  else if (!b.t && a.t)
    colmajor_gemm<col, row>(n, m, k, b.p, b.ld, a.p, a.ld, c, ldc);
  else if (b.t && !a.t)
    colmajor_gemm<row, col>(n, m, k, b.p, b.ld, a.p, a.ld, c, ldc);
  else
    colmajor_gemm<row, row>(n, m, k, b.p, b.ld, a.p, a.ld, c, ldc);
}

}  // namespace dd::cpu
