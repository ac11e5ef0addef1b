#pragma once
// Row-major matrix views over raw float buffers, so kernels can hand strided blocks of NCHW
// tensors straight to Eigen's GEMM without copies.
#include <Eigen/Core>

#include <cstdint>

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

}  // namespace dd::cpu
