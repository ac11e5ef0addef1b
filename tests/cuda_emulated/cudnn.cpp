// The cuDNN 9 functions the CUDA backend calls (include/dd/backend/cuda, include/dd/kernels/gpu), on
// host memory, for the emulated GPU test suite: "device" pointers are host pointers; a call checks its
// arguments when made and computes in its stream's order (dd::cuda::emulation::enqueue: at once, or
// when the stream is drained), with copies of its descriptors and scaling factors, as cuDNN reads
// them when called. Plain loops in double, each result rounded once when stored; descriptors are
// real structs behind cuDNN's opaque handles, and arguments are checked as cuDNN documents, with the
// statuses it documents, so that a call real cuDNN rejects fails here too. The graph (backend) API
// is not emulated: cudnnBackendCreateDescriptor answers CUDNN_STATUS_NOT_SUPPORTED, and the library
// runs the legacy calls instead (cudnn_graph.hpp).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cudnn.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "emulated_runtime.hpp"

struct cudnnContext {
  cudaStream_t stream = nullptr;  // where the handle's work is enqueued
};
// 4-d tensor [n, c, h, w] with element strides (any layout).
struct cudnnTensorStruct {
  bool set = false;
  cudnnDataType_t type = CUDNN_DATA_FLOAT;
  std::int64_t dim[4] = {}, stride[4] = {};
};
// 4-d filter [k, c, r, s] in KCRS (NCHW) or KRSC (NHWC) memory.
struct cudnnFilterStruct {
  bool set = false;
  cudnnDataType_t type = CUDNN_DATA_FLOAT;
  cudnnTensorFormat_t format = CUDNN_TENSOR_NCHW;
  std::int64_t dim[4] = {};
};
struct cudnnConvolutionStruct {
  bool set = false;
  int pad[2] = {}, stride[2] = {1, 1}, dilation[2] = {1, 1};
  cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
  cudnnDataType_t compute = CUDNN_DATA_FLOAT;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;  // cuDNN's default; only reported back by the searches
};

namespace {

using i64 = std::int64_t;
using std::vector;

// ---------------------------------------------------------------------------------------------
// Errors: cuDNN 9 keeps a message for the last failure per thread, cleared when read.
// ---------------------------------------------------------------------------------------------

thread_local std::string last_error;

[[gnu::format(printf, 3, 4)]] cudnnStatus_t fail(cudnnStatus_t st, const char* fn, const char* fmt, ...) {
  char why[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  last_error = std::string(fn) + ": " + cudnnGetErrorString(st) + ": " + why + " (emulated cuDNN)";
  return st;
}

// ---------------------------------------------------------------------------------------------
// Elements and arrays
// ---------------------------------------------------------------------------------------------

bool valid_type(cudnnDataType_t t) {
  return t >= CUDNN_DATA_FLOAT && t <= CUDNN_DATA_COMPLEX_FP64;
}
// The types the emulation computes with; descriptors accept every type, operations only these.
bool computable(cudnnDataType_t t) {
  return t == CUDNN_DATA_FLOAT || t == CUDNN_DATA_DOUBLE || t == CUDNN_DATA_HALF || t == CUDNN_DATA_BFLOAT16;
}

double load(const void* p, cudnnDataType_t t, i64 i) {
  switch (t) {
    case CUDNN_DATA_DOUBLE:
      return static_cast<const double*>(p)[i];
    case CUDNN_DATA_HALF:
      return __half2float(static_cast<const __half*>(p)[i]);
    case CUDNN_DATA_BFLOAT16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default:
      return static_cast<const float*>(p)[i];
  }
}
// Rounds to nearest even once, straight from double (the host conversions are exact roundings).
void store(void* p, cudnnDataType_t t, i64 i, double v) {
  switch (t) {
    case CUDNN_DATA_DOUBLE:
      static_cast<double*>(p)[i] = v;
      break;
    case CUDNN_DATA_HALF:
      static_cast<__half*>(p)[i] = __double2half(v);
      break;
    case CUDNN_DATA_BFLOAT16:
      static_cast<__nv_bfloat16*>(p)[i] = __double2bfloat16(v);
      break;
    default:
      static_cast<float*>(p)[i] = static_cast<float>(v);
      break;
  }
}
// alpha/beta (host memory): double for double data, float for every other type.
double scaling(const void* p, cudnnDataType_t data) {
  return data == CUDNN_DATA_DOUBLE ? *static_cast<const double*>(p) : double(*static_cast<const float*>(p));
}

// A 4-d array as its logical [d0, d1, d2, d3] (NCHW or KCRS) with element strides.
struct View {
  cudnnDataType_t type;
  i64 d[4], s[4];
  i64 count() const { return d[0] * d[1] * d[2] * d[3]; }
  i64 at(i64 n, i64 c, i64 h, i64 w) const { return n * s[0] + c * s[1] + h * s[2] + w * s[3]; }
  // Calls f(logical index, memory offset) for every element, logical (dense NCHW) order.
  template <class F>
  void each(F f) const {
    i64 i = 0;
    for (i64 n = 0; n < d[0]; ++n)
      for (i64 c = 0; c < d[1]; ++c)
        for (i64 h = 0; h < d[2]; ++h)
          for (i64 w = 0; w < d[3]; ++w) f(i++, at(n, c, h, w));
  }
};
View view(const cudnnTensorStruct& t) {
  return {t.type, {t.dim[0], t.dim[1], t.dim[2], t.dim[3]}, {t.stride[0], t.stride[1], t.stride[2], t.stride[3]}};
}
View view(const cudnnFilterStruct& f) {
  const i64 k = f.dim[0], c = f.dim[1], r = f.dim[2], s = f.dim[3];
  if (f.format == CUDNN_TENSOR_NHWC) return {f.type, {k, c, r, s}, {r * s * c, 1, s * c, c}};  // KRSC
  return {f.type, {k, c, r, s}, {c * r * s, r * s, s, 1}};
}

// The array's values in logical order.
vector<double> gather(const View& v, const void* p) {
  vector<double> out(static_cast<std::size_t>(v.count()));
  v.each([&](i64 i, i64 off) { out[static_cast<std::size_t>(i)] = load(p, v.type, off); });
  return out;
}
// cuDNN's channels-last kernels load 16 bytes at a time: an NHWC operand (or KRSC filter) that is
// not 16-byte aligned faults on the GPU ("misaligned address", seen on an H100), so it fails here.
cudnnStatus_t check_aligned(const char* fn, const View& v, const void* p) {
  const bool channels_last = v.d[1] > 1 && v.s[1] == 1;
  if (channels_last && reinterpret_cast<std::uintptr_t>(p) % 16 != 0)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "channels-last operand at %p is not 16-byte aligned", p);
  return CUDNN_STATUS_SUCCESS;
}

// dst = alpha * result + beta * dst. With beta == 0 dst is not read (cuDNN's rule: it may hold NaN).
void blend(const View& v, void* p, const vector<double>& result, double alpha, double beta) {
  v.each([&](i64 i, i64 off) {
    const double prior = beta != 0.0 ? beta * load(p, v.type, off) : 0.0;
    store(p, v.type, off, alpha * result[static_cast<std::size_t>(i)] + prior);
  });
}
void write(const View& v, void* p, const vector<double>& values) {
  blend(v, p, values, 1.0, 0.0);
}

bool same_dims(const cudnnTensorStruct& a, const cudnnTensorStruct& b) {
  return std::memcmp(a.dim, b.dim, sizeof a.dim) == 0;
}

// ---------------------------------------------------------------------------------------------
// Convolution geometry and checks
// ---------------------------------------------------------------------------------------------

// Output size of one spatial dimension, cuDNN's formula (cudnnGetConvolution2dForwardOutputDim).
i64 out_size(i64 in, i64 pad, i64 filter, i64 dilation, i64 stride) {
  return (in + 2 * pad - ((filter - 1) * dilation + 1)) / stride + 1;
}

// Every product of a convolution y[n,k,p,q] = sum_{c,r,s} x[n,c,p*u-ph+r*dh, q*v-pw+s*dw] * w[k,c,r,s]
// (the filter flipped in CUDNN_CONVOLUTION mode), as indices into dense NCHW / KCRS arrays. The
// three directions run the same products, so backward-data and backward-filter are the exact adjoints.
struct ConvGeometry {
  i64 N, C, H, W, K, R, S, P, Q;
  i64 ph, pw, u, v, dh, dw;
  bool flip;
  ConvGeometry(const cudnnTensorStruct& x, const cudnnFilterStruct& w, const cudnnConvolutionStruct& c,
               const cudnnTensorStruct& y)
      : N(x.dim[0]),
        C(x.dim[1]),
        H(x.dim[2]),
        W(x.dim[3]),
        K(w.dim[0]),
        R(w.dim[2]),
        S(w.dim[3]),
        P(y.dim[2]),
        Q(y.dim[3]),
        ph(c.pad[0]),
        pw(c.pad[1]),
        u(c.stride[0]),
        v(c.stride[1]),
        dh(c.dilation[0]),
        dw(c.dilation[1]),
        flip(c.mode == CUDNN_CONVOLUTION) {}
  template <class F>  // f(x index, w index, y index); the output position innermost, for locality
  void each(F f) const {
    for (i64 n = 0; n < N; ++n)
      for (i64 k = 0; k < K; ++k)
        for (i64 c = 0; c < C; ++c)
          for (i64 r = 0; r < R; ++r)
            for (i64 s = 0; s < S; ++s) {
              const i64 wi = ((k * C + c) * R + (flip ? R - 1 - r : r)) * S + (flip ? S - 1 - s : s);
              for (i64 p = 0; p < P; ++p) {
                const i64 ih = p * u - ph + r * dh;
                if (ih < 0 || ih >= H) continue;
                for (i64 q = 0; q < Q; ++q) {
                  const i64 iw = q * v - pw + s * dw;
                  if (iw < 0 || iw >= W) continue;
                  f(((n * C + c) * H + ih) * W + iw, wi, ((n * K + k) * P + p) * Q + q);
                }
              }
            }
  }
};

// The descriptors of a convolution as cuDNN checks them. y is the output of the forward convolution
// (dy of the backward directions); a y whose spatial size is not the forward output's gives
// `spatial_status` (NOT_SUPPORTED for the forward call, BAD_PARAM for backward-data, as documented).
cudnnStatus_t check_conv(const char* fn, cudnnHandle_t h, const cudnnTensorStruct* x, const cudnnFilterStruct* w,
                         const cudnnConvolutionStruct* c, const cudnnTensorStruct* y,
                         cudnnStatus_t spatial_status = CUDNN_STATUS_BAD_PARAM) {
  if (!h || !x || !w || !c || !y) return fail(CUDNN_STATUS_BAD_PARAM, fn, "null handle or descriptor");
  if (!x->set || !w->set || !c->set || !y->set) return fail(CUDNN_STATUS_BAD_PARAM, fn, "descriptor never set");
  if (x->type != w->type || x->type != y->type)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "x, w, y data types differ (%d, %d, %d)", x->type, w->type, y->type);
  // cuDNN's supported configurations: FLOAT (float compute), TRUE/PSEUDO_HALF (half or float
  // compute), PSEUDO_BFLOAT16 (float compute), DOUBLE (double compute).
  const cudnnDataType_t t = x->type, ct = c->compute;
  const bool config = (t == CUDNN_DATA_FLOAT && ct == CUDNN_DATA_FLOAT) ||
                      (t == CUDNN_DATA_HALF && (ct == CUDNN_DATA_HALF || ct == CUDNN_DATA_FLOAT)) ||
                      (t == CUDNN_DATA_BFLOAT16 && ct == CUDNN_DATA_FLOAT) ||
                      (t == CUDNN_DATA_DOUBLE && ct == CUDNN_DATA_DOUBLE);
  if (!config)
    return fail(CUDNN_STATUS_NOT_SUPPORTED, fn, "data type %d with compute type %d is no supported configuration", t,
                ct);
  if (x->dim[1] != w->dim[1])
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "x has %lld channels, the filter %lld", (long long)x->dim[1],
                (long long)w->dim[1]);
  for (int d = 0; d < 2; ++d)
    if ((w->dim[2 + d] - 1) * c->dilation[d] + 1 > x->dim[2 + d] + 2 * c->pad[d])
      return fail(CUDNN_STATUS_BAD_PARAM, fn, "the (dilated) filter is larger than the padded input");
  if (y->dim[0] != x->dim[0] || y->dim[1] != w->dim[0])
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "y is [%lld, %lld, ...], expected [%lld, %lld, ...]", (long long)y->dim[0],
                (long long)y->dim[1], (long long)x->dim[0], (long long)w->dim[0]);
  const i64 p = out_size(x->dim[2], c->pad[0], w->dim[2], c->dilation[0], c->stride[0]);
  const i64 q = out_size(x->dim[3], c->pad[1], w->dim[3], c->dilation[1], c->stride[1]);
  if (y->dim[2] != p || y->dim[3] != q)
    return fail(spatial_status, fn, "y is %lld x %lld, the convolution gives %lld x %lld", (long long)y->dim[2],
                (long long)y->dim[3], (long long)p, (long long)q);
  return CUDNN_STATUS_SUCCESS;
}

// The emulated algorithms of a direction (two, so the library's choice among candidates runs), the
// fastest first. All compute the same thing; workspace and determinism are what each reports, the
// determinism cuDNN's own for that enumerant (BWD_*_ALGO_0 are non-deterministic in cuDNN).
struct Algo {
  int algo;
  std::size_t workspace;
  cudnnDeterminism_t determinism;
  float ms;
};
constexpr std::size_t kWorkspace = 256;
constexpr Algo kForward[] = {{CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, kWorkspace, CUDNN_DETERMINISTIC, 0.01f},
                             {CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, 0, CUDNN_DETERMINISTIC, 0.02f}};
constexpr Algo kBackwardData[] = {{CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, kWorkspace, CUDNN_NON_DETERMINISTIC, 0.01f},
                                  {CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, 0, CUDNN_DETERMINISTIC, 0.02f}};
constexpr Algo kBackwardFilter[] = {{CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, kWorkspace, CUDNN_NON_DETERMINISTIC, 0.01f},
                                    {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, 0, CUDNN_DETERMINISTIC, 0.02f}};

const Algo* find_algo(const Algo (&table)[2], int algo) {
  for (const Algo& a : table)
    if (a.algo == algo) return &a;
  return nullptr;
}

// The algorithm's entry: BAD_PARAM for no enumerant of the direction, NOT_SUPPORTED for one not emulated.
cudnnStatus_t check_algo(const char* fn, const Algo (&table)[2], int count, int algo, const Algo** out) {
  if (algo < 0 || algo >= count) return fail(CUDNN_STATUS_BAD_PARAM, fn, "algorithm %d is no enumerant", algo);
  *out = find_algo(table, algo);
  if (!*out) return fail(CUDNN_STATUS_NOT_SUPPORTED, fn, "algorithm %d is not emulated (not in the searches)", algo);
  return CUDNN_STATUS_SUCCESS;
}

// The workspace an execution call gets must hold what the algorithm asked for. The emulation does
// not need it, but writes all of it when it runs, as a kernel might: a short allocation shows in
// the guard bytes, one released before the work ran in the results.
cudnnStatus_t check_workspace(const char* fn, const Algo& a, void* ws, std::size_t bytes) {
  if (a.workspace > 0 && (!ws || bytes < a.workspace))
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "workspace of %zu bytes at %p, algorithm %d needs %zu", bytes, ws, a.algo,
                a.workspace);
  return CUDNN_STATUS_SUCCESS;
}

// A heuristics or Find answer: the emulated algorithms first, then the direction's other enumerants
// as CUDNN_STATUS_NOT_SUPPORTED entries, as cuDNN lists the algorithms that do not apply.
template <class Perf, class AlgoEnum>
cudnnStatus_t list_algos(const char* fn, const Algo (&table)[2], int count, const cudnnConvolutionStruct& c,
                         int requested, int* returned, Perf* perf) {
  if (!returned || !perf) return fail(CUDNN_STATUS_BAD_PARAM, fn, "null returnedAlgoCount or perfResults");
  if (requested <= 0) return fail(CUDNN_STATUS_BAD_PARAM, fn, "requestedAlgoCount = %d", requested);
  int n = 0;
  for (const Algo& a : table)
    if (n < requested)
      perf[n++] =
          Perf{static_cast<AlgoEnum>(a.algo), CUDNN_STATUS_SUCCESS, a.ms, a.workspace, a.determinism, c.math, {}};
  for (int algo = 0; algo < count && n < requested; ++algo)
    if (!find_algo(table, algo))
      perf[n++] =
          Perf{static_cast<AlgoEnum>(algo), CUDNN_STATUS_NOT_SUPPORTED, -1.0f, 0, CUDNN_NON_DETERMINISTIC, c.math, {}};
  *returned = n;
  return CUDNN_STATUS_SUCCESS;
}

// ---------------------------------------------------------------------------------------------
// Batch normalization
// ---------------------------------------------------------------------------------------------

bool valid_bn_mode(cudnnBatchNormMode_t m) {
  return m == CUDNN_BATCHNORM_PER_ACTIVATION || m == CUDNN_BATCHNORM_SPATIAL || m == CUDNN_BATCHNORM_SPATIAL_PERSISTENT;
}

// The statistics of x: one per channel (spatial modes) or per (c, h, w) (per-activation), each over
// M elements. param_of(i): the statistic of the element with logical (dense NCHW) index i.
struct BnGeometry {
  i64 C, HW, P, M;
  bool spatial;
  BnGeometry(const cudnnTensorStruct& x, cudnnBatchNormMode_t mode)
      : C(x.dim[1]),
        HW(x.dim[2] * x.dim[3]),
        P(mode == CUDNN_BATCHNORM_PER_ACTIVATION ? C * HW : C),
        M(x.dim[0] * x.dim[1] * HW / P),
        spatial(mode != CUDNN_BATCHNORM_PER_ACTIVATION) {}
  std::size_t param_of(i64 i) const { return static_cast<std::size_t>(spatial ? (i / HW) % C : i % (C * HW)); }
};

// The descriptors of a batch-norm call as cuDNN checks them: x and each of `others` (y, or dy and
// dx) the same dims and type; the parameter descriptor 1xCx1x1 (1xCxHxW per activation), float
// (double for double data); epsilon at least CUDNN_BN_MIN_EPSILON.
cudnnStatus_t check_bn(const char* fn, cudnnHandle_t h, cudnnBatchNormMode_t mode, const cudnnTensorStruct* x,
                       std::initializer_list<const cudnnTensorStruct*> others, const cudnnTensorStruct* param,
                       double epsilon) {
  if (!h) return fail(CUDNN_STATUS_BAD_PARAM, fn, "null handle");
  if (!valid_bn_mode(mode)) return fail(CUDNN_STATUS_BAD_PARAM, fn, "mode %d", mode);
  if (!x || !param || !x->set || !param->set) return fail(CUDNN_STATUS_BAD_PARAM, fn, "null or unset descriptor");
  for (const cudnnTensorStruct* o : others) {
    if (!o || !o->set) return fail(CUDNN_STATUS_BAD_PARAM, fn, "null or unset descriptor");
    if (!same_dims(*x, *o) || o->type != x->type)
      return fail(CUDNN_STATUS_BAD_PARAM, fn, "the data tensors' dims or data types differ");
  }
  if (!computable(x->type)) return fail(CUDNN_STATUS_NOT_SUPPORTED, fn, "data type %d", x->type);
  const bool per_activation = mode == CUDNN_BATCHNORM_PER_ACTIVATION;
  const i64 want[4] = {1, x->dim[1], per_activation ? x->dim[2] : 1, per_activation ? x->dim[3] : 1};
  if (std::memcmp(param->dim, want, sizeof want) != 0)
    return fail(CUDNN_STATUS_BAD_PARAM, fn,
                "parameter tensor is [%lld, %lld, %lld, %lld], expected [%lld, %lld, %lld, %lld]",
                (long long)param->dim[0], (long long)param->dim[1], (long long)param->dim[2], (long long)param->dim[3],
                (long long)want[0], (long long)want[1], (long long)want[2], (long long)want[3]);
  if (param->type != (x->type == CUDNN_DATA_DOUBLE ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT))
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "parameter data type %d for data type %d", param->type, x->type);
  if (!(epsilon >= CUDNN_BN_MIN_EPSILON))
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "epsilon %g is below CUDNN_BN_MIN_EPSILON (%g)", epsilon,
                double(CUDNN_BN_MIN_EPSILON));
  return CUDNN_STATUS_SUCCESS;
}

// Per-statistic mean and biased variance of x.
void batch_stats(const BnGeometry& g, const vector<double>& x, vector<double>& mean, vector<double>& var) {
  mean.assign(static_cast<std::size_t>(g.P), 0.0);
  var.assign(static_cast<std::size_t>(g.P), 0.0);
  for (std::size_t i = 0; i < x.size(); ++i) mean[g.param_of(i64(i))] += x[i];
  for (double& m : mean) m /= double(g.M);
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double d = x[i] - mean[g.param_of(i64(i))];
    var[g.param_of(i64(i))] += d * d;
  }
  for (double& v : var) v /= double(g.M);
}

vector<double> inv_std(const vector<double>& var, double epsilon) {
  vector<double> out(var.size());
  for (std::size_t i = 0; i < var.size(); ++i) out[i] = 1.0 / std::sqrt(var[i] + epsilon);
  return out;
}

// y = gamma * (x - mean) * invstd + beta, blended into y.
void bn_apply(const BnGeometry& g, const cudnnTensorStruct& xd, const cudnnTensorStruct& yd, void* y,
              const vector<double>& xv, const vector<double>& gamma, const vector<double>& beta,
              const vector<double>& mean, const vector<double>& invstd, double alpha, double blend_beta) {
  vector<double> out(xv.size());
  for (std::size_t i = 0; i < xv.size(); ++i) {
    const std::size_t p = g.param_of(i64(i));
    out[i] = gamma[p] * (xv[i] - mean[p]) * invstd[p] + beta[p];
  }
  blend(view(yd), y, out, alpha, blend_beta);
}

// The graph API's calls on a descriptor: none can exist (cudnnBackendCreateDescriptor makes none).
cudnnStatus_t not_a_descriptor(const char* fn, const void* d) {
  return d ? fail(CUDNN_STATUS_BAD_PARAM, fn, "%p is no backend descriptor (the graph API is not emulated)", d)
           : fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, fn, "null descriptor");
}

// The workspace an algorithm needs for a problem, checked as the execution call checks it.
cudnnStatus_t workspace_size(const char* fn, cudnnHandle_t h, const cudnnTensorStruct* x, const cudnnFilterStruct* w,
                             const cudnnConvolutionStruct* c, const cudnnTensorStruct* y, const Algo (&table)[2],
                             int count, int algo, size_t* bytes,
                             cudnnStatus_t spatial_status = CUDNN_STATUS_BAD_PARAM) {
  if (!bytes) return fail(CUDNN_STATUS_BAD_PARAM, fn, "null sizeInBytes");
  if (cudnnStatus_t st = check_conv(fn, h, x, w, c, y, spatial_status)) return st;
  const Algo* a = nullptr;
  if (cudnnStatus_t st = check_algo(fn, table, count, algo, &a)) return st;
  *bytes = a->workspace;
  return CUDNN_STATUS_SUCCESS;
}

// The three convolution directions: the same checks, then the products of ConvGeometry summed into
// the operand the direction writes (y forward, x backward-data, w backward-filter) from the other two,
// blended into `out` with alpha and beta. x, w, y are the forward convolution's operands.
enum class Operand { x, w, y };
template <Operand O>
cudnnStatus_t convolve(const char* fn, cudnnHandle_t h, const void* alpha, const void* beta, const Algo (&table)[2],
                       int count, int algo, void* workspace, std::size_t workspace_bytes, const cudnnTensorStruct* x,
                       const void* xp, const cudnnFilterStruct* w, const void* wp, const cudnnConvolutionStruct* c,
                       const cudnnTensorStruct* y, const void* yp, void* out,
                       cudnnStatus_t spatial_status = CUDNN_STATUS_BAD_PARAM) {
  if (!alpha || !beta || !xp || !wp || !yp) return fail(CUDNN_STATUS_BAD_PARAM, fn, "null data or scaling pointer");
  if (cudnnStatus_t st = check_conv(fn, h, x, w, c, y, spatial_status)) return st;
  const Algo* a = nullptr;
  if (cudnnStatus_t st = check_algo(fn, table, count, algo, &a)) return st;
  if (cudnnStatus_t st = check_workspace(fn, *a, workspace, workspace_bytes)) return st;
  const std::size_t scribble = a->workspace;
  const View vx = view(*x), vw = view(*w), vy = view(*y);
  for (auto [v, p] : {std::pair{vx, xp}, {vw, wp}, {vy, yp}})
    if (cudnnStatus_t st = check_aligned(fn, v, p)) return st;
  const double sa = scaling(alpha, x->type), sb = scaling(beta, x->type);
  dd::cuda::emulation::enqueue(h->stream, [=, xd = *x, wd = *w, cd = *c, yd = *y] {
    if (scribble > 0) std::memset(workspace, 0x5A, scribble);
    const auto input = [](Operand o, const View& v, const void* p) { return O == o ? vector<double>() : gather(v, p); };
    const vector<double> X = input(Operand::x, vx, xp), W = input(Operand::w, vw, wp), Y = input(Operand::y, vy, yp);
    const View& vo = O == Operand::x ? vx : O == Operand::w ? vw : vy;
    vector<double> sum(static_cast<std::size_t>(vo.count()), 0.0);
    const auto at = [](i64 i) { return static_cast<std::size_t>(i); };
    ConvGeometry(xd, wd, cd, yd).each([&](i64 xi, i64 wi, i64 yi) {
      if constexpr (O == Operand::y)
        sum[at(yi)] += X[at(xi)] * W[at(wi)];
      else if constexpr (O == Operand::x)
        sum[at(xi)] += Y[at(yi)] * W[at(wi)];
      else
        sum[at(wi)] += Y[at(yi)] * X[at(xi)];
    });
    blend(vo, out, sum, sa, sb);
  });
  return CUDNN_STATUS_SUCCESS;
}

}  // namespace

// =============================================================================================
// The cuDNN API
// =============================================================================================

extern "C" {

size_t cudnnGetVersion(void) {
  return CUDNN_VERSION;
}

const char* cudnnGetErrorString(cudnnStatus_t status) {
  switch (status) {
#define DD_NAME(s) \
  case s:          \
    return #s;
    DD_NAME(CUDNN_STATUS_SUCCESS)
    DD_NAME(CUDNN_STATUS_NOT_INITIALIZED)
    DD_NAME(CUDNN_STATUS_SUBLIBRARY_VERSION_MISMATCH)
    DD_NAME(CUDNN_STATUS_SERIALIZATION_VERSION_MISMATCH)
    DD_NAME(CUDNN_STATUS_DEPRECATED)
    DD_NAME(CUDNN_STATUS_LICENSE_ERROR)
    DD_NAME(CUDNN_STATUS_RUNTIME_IN_PROGRESS)
    DD_NAME(CUDNN_STATUS_RUNTIME_FP_OVERFLOW)
    DD_NAME(CUDNN_STATUS_SUBLIBRARY_LOADING_FAILED)
    DD_NAME(CUDNN_STATUS_BAD_PARAM)
    DD_NAME(CUDNN_STATUS_BAD_PARAM_NULL_POINTER)
    DD_NAME(CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER)
    DD_NAME(CUDNN_STATUS_BAD_PARAM_NOT_FINALIZED)
    DD_NAME(CUDNN_STATUS_BAD_PARAM_OUT_OF_BOUND)
    DD_NAME(CUDNN_STATUS_BAD_PARAM_SIZE_INSUFFICIENT)
    DD_NAME(CUDNN_STATUS_BAD_PARAM_STREAM_MISMATCH)
    DD_NAME(CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH)
    DD_NAME(CUDNN_STATUS_BAD_PARAM_DUPLICATED_ENTRIES)
    DD_NAME(CUDNN_STATUS_BAD_PARAM_ATTRIBUTE_TYPE)
    DD_NAME(CUDNN_STATUS_BAD_PARAM_CUDA_GRAPH_MISMATCH)
    DD_NAME(CUDNN_STATUS_BAD_PARAM_DESCRIPTOR_TYPE)
    DD_NAME(CUDNN_STATUS_NOT_SUPPORTED)
    DD_NAME(CUDNN_STATUS_NOT_SUPPORTED_GRAPH_PATTERN)
    DD_NAME(CUDNN_STATUS_NOT_SUPPORTED_SHAPE)
    DD_NAME(CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE)
    DD_NAME(CUDNN_STATUS_NOT_SUPPORTED_LAYOUT)
    DD_NAME(CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDA_DRIVER)
    DD_NAME(CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDART)
    DD_NAME(CUDNN_STATUS_NOT_SUPPORTED_ARCH_MISMATCH)
    DD_NAME(CUDNN_STATUS_NOT_SUPPORTED_RUNTIME_PREREQUISITE_MISSING)
    DD_NAME(CUDNN_STATUS_NOT_SUPPORTED_SUBLIBRARY_UNAVAILABLE)
    DD_NAME(CUDNN_STATUS_NOT_SUPPORTED_SHARED_MEMORY_INSUFFICIENT)
    DD_NAME(CUDNN_STATUS_NOT_SUPPORTED_PADDING)
    DD_NAME(CUDNN_STATUS_NOT_SUPPORTED_BAD_LAUNCH_PARAM)
    DD_NAME(CUDNN_STATUS_NOT_SUPPORTED_CUDA_GRAPH_NATIVE_API)
    DD_NAME(CUDNN_STATUS_NOT_SUPPORTED_INVALID_DYNAMIC_SHAPE)
    DD_NAME(CUDNN_STATUS_INTERNAL_ERROR)
    DD_NAME(CUDNN_STATUS_INTERNAL_ERROR_COMPILATION_FAILED)
    DD_NAME(CUDNN_STATUS_INTERNAL_ERROR_UNEXPECTED_VALUE)
    DD_NAME(CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED)
    DD_NAME(CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED)
    DD_NAME(CUDNN_STATUS_INTERNAL_ERROR_BAD_LAUNCH_PARAM)
    DD_NAME(CUDNN_STATUS_INTERNAL_ERROR_TEXTURE_CREATION_FAILED)
    DD_NAME(CUDNN_STATUS_EXECUTION_FAILED)
    DD_NAME(CUDNN_STATUS_EXECUTION_FAILED_CUDA_DRIVER)
    DD_NAME(CUDNN_STATUS_EXECUTION_FAILED_CUBLAS)
    DD_NAME(CUDNN_STATUS_EXECUTION_FAILED_CUDART)
    DD_NAME(CUDNN_STATUS_EXECUTION_FAILED_CURAND)
#undef DD_NAME
    case static_cast<cudnnStatus_t>(2001):
      return "CUDNN_STATUS_INVALID_VALUE";  // deprecated enumerant
  }
  return "CUDNN_UNKNOWN_STATUS";
}

// Copies the thread's last error message (truncated to max_size - 1) and clears it.
void cudnnGetLastErrorString(char* message, size_t max_size) {
  if (!message || max_size == 0) return;
  const std::size_t n = std::min(last_error.size(), max_size - 1);
  std::memcpy(message, last_error.data(), n);
  message[n] = '\0';
  last_error.clear();
}

// --- handle -----------------------------------------------------------------------------------

cudnnStatus_t cudnnCreate(cudnnHandle_t* handle) {
  if (!handle) return fail(CUDNN_STATUS_BAD_PARAM, "cudnnCreate", "null handle pointer");
  *handle = new cudnnContext();
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroy(cudnnHandle_t handle) {
  if (!handle) return fail(CUDNN_STATUS_BAD_PARAM, "cudnnDestroy", "null handle");
  delete handle;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetStream(cudnnHandle_t handle, cudaStream_t stream) {
  if (!handle) return fail(CUDNN_STATUS_BAD_PARAM, "cudnnSetStream", "null handle");
  handle->stream = stream;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetStream(cudnnHandle_t handle, cudaStream_t* stream) {
  if (!handle || !stream) return fail(CUDNN_STATUS_BAD_PARAM, "cudnnGetStream", "null handle or stream pointer");
  *stream = handle->stream;
  return CUDNN_STATUS_SUCCESS;
}

// --- tensor, filter and convolution descriptors ------------------------------------------------

cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t* d) {
  if (!d) return fail(CUDNN_STATUS_BAD_PARAM, "cudnnCreateTensorDescriptor", "null pointer");
  *d = new cudnnTensorStruct();
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t d) {
  delete d;  // null: nothing to do
  return CUDNN_STATUS_SUCCESS;
}

// Strided 4-d tensor. Dims and strides must be positive (cuDNN rejects empty tensors); at most
// 2^31 - 1 elements (the legacy API's int indexing).
cudnnStatus_t cudnnSetTensor4dDescriptorEx(cudnnTensorDescriptor_t d, cudnnDataType_t type, int n, int c, int h, int w,
                                           int ns, int cs, int hs, int ws) {
  const char* fn = "cudnnSetTensor4dDescriptorEx";
  if (!d) return fail(CUDNN_STATUS_BAD_PARAM, fn, "null descriptor");
  if (!valid_type(type)) return fail(CUDNN_STATUS_BAD_PARAM, fn, "data type %d", type);
  if (n <= 0 || c <= 0 || h <= 0 || w <= 0)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "dims [%d, %d, %d, %d] must be positive", n, c, h, w);
  if (ns <= 0 || cs <= 0 || hs <= 0 || ws <= 0)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "strides [%d, %d, %d, %d] must be positive", ns, cs, hs, ws);
  if (i64(n) * c * h * w > std::numeric_limits<int>::max())
    return fail(CUDNN_STATUS_NOT_SUPPORTED, fn, "[%d, %d, %d, %d] is over 2^31 - 1 elements", n, c, h, w);
  *d = cudnnTensorStruct{true, type, {n, c, h, w}, {ns, cs, hs, ws}};
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t d, cudnnTensorFormat_t format, cudnnDataType_t type,
                                         int n, int c, int h, int w) {
  const char* fn = "cudnnSetTensor4dDescriptor";
  if (!d) return fail(CUDNN_STATUS_BAD_PARAM, fn, "null descriptor");
  if (format == CUDNN_TENSOR_NCHW_VECT_C)
    return fail(CUDNN_STATUS_NOT_SUPPORTED, fn, "CUDNN_TENSOR_NCHW_VECT_C is not emulated");
  if (format != CUDNN_TENSOR_NCHW && format != CUDNN_TENSOR_NHWC)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "format %d", format);
  if (n <= 0 || c <= 0 || h <= 0 || w <= 0)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "dims [%d, %d, %d, %d] must be positive", n, c, h, w);
  // Packed strides (computed in int64: the Ex setter rejects what does not fit).
  const i64 ns = i64(c) * h * w;
  if (format == CUDNN_TENSOR_NCHW) {
    if (ns > std::numeric_limits<int>::max())
      return fail(CUDNN_STATUS_NOT_SUPPORTED, fn, "[%d, %d, %d, %d] is over 2^31 - 1 elements", n, c, h, w);
    return cudnnSetTensor4dDescriptorEx(d, type, n, c, h, w, int(ns), h * w, w, 1);
  }
  if (ns > std::numeric_limits<int>::max())
    return fail(CUDNN_STATUS_NOT_SUPPORTED, fn, "[%d, %d, %d, %d] is over 2^31 - 1 elements", n, c, h, w);
  return cudnnSetTensor4dDescriptorEx(d, type, n, c, h, w, int(ns), 1, w * c, c);
}

cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t* d) {
  if (!d) return fail(CUDNN_STATUS_BAD_PARAM, "cudnnCreateFilterDescriptor", "null pointer");
  *d = new cudnnFilterStruct();
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t d, cudnnDataType_t type, cudnnTensorFormat_t format,
                                         int k, int c, int h, int w) {
  const char* fn = "cudnnSetFilter4dDescriptor";
  if (!d) return fail(CUDNN_STATUS_BAD_PARAM, fn, "null descriptor");
  if (!valid_type(type)) return fail(CUDNN_STATUS_BAD_PARAM, fn, "data type %d", type);
  if (format == CUDNN_TENSOR_NCHW_VECT_C)
    return fail(CUDNN_STATUS_NOT_SUPPORTED, fn, "CUDNN_TENSOR_NCHW_VECT_C is not emulated");
  if (format != CUDNN_TENSOR_NCHW && format != CUDNN_TENSOR_NHWC)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "format %d", format);
  if (k <= 0 || c <= 0 || h <= 0 || w <= 0)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "dims [%d, %d, %d, %d] must be positive", k, c, h, w);
  if (i64(k) * c * h * w > std::numeric_limits<int>::max())
    return fail(CUDNN_STATUS_NOT_SUPPORTED, fn, "[%d, %d, %d, %d] is over 2^31 - 1 elements", k, c, h, w);
  *d = cudnnFilterStruct{true, type, format, {k, c, h, w}};
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t* d) {
  if (!d) return fail(CUDNN_STATUS_BAD_PARAM, "cudnnCreateConvolutionDescriptor", "null pointer");
  *d = new cudnnConvolutionStruct();
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t d, int pad_h, int pad_w, int u, int v,
                                              int dilation_h, int dilation_w, cudnnConvolutionMode_t mode,
                                              cudnnDataType_t compute) {
  const char* fn = "cudnnSetConvolution2dDescriptor";
  if (!d) return fail(CUDNN_STATUS_BAD_PARAM, fn, "null descriptor");
  if (pad_h < 0 || pad_w < 0) return fail(CUDNN_STATUS_BAD_PARAM, fn, "negative padding %d, %d", pad_h, pad_w);
  if (u <= 0 || v <= 0) return fail(CUDNN_STATUS_BAD_PARAM, fn, "stride %d, %d must be positive", u, v);
  if (dilation_h <= 0 || dilation_w <= 0)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "dilation %d, %d must be positive", dilation_h, dilation_w);
  if (mode != CUDNN_CONVOLUTION && mode != CUDNN_CROSS_CORRELATION)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "mode %d", mode);
  if (!valid_type(compute)) return fail(CUDNN_STATUS_BAD_PARAM, fn, "compute type %d", compute);
  d->set = true;
  d->pad[0] = pad_h, d->pad[1] = pad_w, d->stride[0] = u, d->stride[1] = v;
  d->dilation[0] = dilation_h, d->dilation[1] = dilation_w;
  d->mode = mode, d->compute = compute;  // the math type stays as set
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t d, cudnnMathType_t math) {
  if (!d) return fail(CUDNN_STATUS_BAD_PARAM, "cudnnSetConvolutionMathType", "null descriptor");
  if (math != CUDNN_DEFAULT_MATH && math != CUDNN_TENSOR_OP_MATH && math != CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION &&
      math != CUDNN_FMA_MATH)
    return fail(CUDNN_STATUS_BAD_PARAM, "cudnnSetConvolutionMathType", "math type %d", math);
  d->math = math;
  return CUDNN_STATUS_SUCCESS;
}

// --- algorithm searches and workspaces ---------------------------------------------------------
// The searches take the problem's descriptors and check them as the execution calls do.

cudnnStatus_t cudnnGetConvolutionForwardAlgorithmMaxCount(cudnnHandle_t h, int* count) {
  if (!h || !count) return fail(CUDNN_STATUS_BAD_PARAM, "cudnnGetConvolutionForwardAlgorithmMaxCount", "null argument");
  *count = CUDNN_CONVOLUTION_FWD_ALGO_COUNT;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithmMaxCount(cudnnHandle_t h, int* count) {
  if (!h || !count)
    return fail(CUDNN_STATUS_BAD_PARAM, "cudnnGetConvolutionBackwardDataAlgorithmMaxCount", "null argument");
  *count = CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(cudnnHandle_t h, int* count) {
  if (!h || !count)
    return fail(CUDNN_STATUS_BAD_PARAM, "cudnnGetConvolutionBackwardFilterAlgorithmMaxCount", "null argument");
  *count = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(cudnnHandle_t h, const cudnnTensorDescriptor_t x,
                                                     const cudnnFilterDescriptor_t w,
                                                     const cudnnConvolutionDescriptor_t c,
                                                     const cudnnTensorDescriptor_t y, const int requested,
                                                     int* returned, cudnnConvolutionFwdAlgoPerf_t* perf) {
  const char* fn = "cudnnGetConvolutionForwardAlgorithm_v7";
  if (cudnnStatus_t st = check_conv(fn, h, x, w, c, y, CUDNN_STATUS_NOT_SUPPORTED)) return st;
  return list_algos<cudnnConvolutionFwdAlgoPerf_t, cudnnConvolutionFwdAlgo_t>(
      fn, kForward, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, *c, requested, returned, perf);
}
// cuDNN 9's Find runs each algorithm on buffers it allocates; the emulation's algorithms cost the
// same, so it answers the list with the nominal times, fastest first.
cudnnStatus_t cudnnFindConvolutionForwardAlgorithm(cudnnHandle_t h, const cudnnTensorDescriptor_t x,
                                                   const cudnnFilterDescriptor_t w,
                                                   const cudnnConvolutionDescriptor_t c,
                                                   const cudnnTensorDescriptor_t y, const int requested, int* returned,
                                                   cudnnConvolutionFwdAlgoPerf_t* perf) {
  const char* fn = "cudnnFindConvolutionForwardAlgorithm";
  if (cudnnStatus_t st = check_conv(fn, h, x, w, c, y, CUDNN_STATUS_NOT_SUPPORTED)) return st;
  return list_algos<cudnnConvolutionFwdAlgoPerf_t, cudnnConvolutionFwdAlgo_t>(
      fn, kForward, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, *c, requested, returned, perf);
}
cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(cudnnHandle_t h, const cudnnTensorDescriptor_t x,
                                                      const cudnnFilterDescriptor_t w,
                                                      const cudnnConvolutionDescriptor_t c,
                                                      const cudnnTensorDescriptor_t y, cudnnConvolutionFwdAlgo_t algo,
                                                      size_t* bytes) {
  return workspace_size("cudnnGetConvolutionForwardWorkspaceSize", h, x, w, c, y, kForward,
                        CUDNN_CONVOLUTION_FWD_ALGO_COUNT, algo, bytes, CUDNN_STATUS_NOT_SUPPORTED);
}

cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithm_v7(cudnnHandle_t h, const cudnnFilterDescriptor_t w,
                                                          const cudnnTensorDescriptor_t dy,
                                                          const cudnnConvolutionDescriptor_t c,
                                                          const cudnnTensorDescriptor_t dx, const int requested,
                                                          int* returned, cudnnConvolutionBwdDataAlgoPerf_t* perf) {
  const char* fn = "cudnnGetConvolutionBackwardDataAlgorithm_v7";
  if (cudnnStatus_t st = check_conv(fn, h, dx, w, c, dy)) return st;
  return list_algos<cudnnConvolutionBwdDataAlgoPerf_t, cudnnConvolutionBwdDataAlgo_t>(
      fn, kBackwardData, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, *c, requested, returned, perf);
}
cudnnStatus_t cudnnFindConvolutionBackwardDataAlgorithm(cudnnHandle_t h, const cudnnFilterDescriptor_t w,
                                                        const cudnnTensorDescriptor_t dy,
                                                        const cudnnConvolutionDescriptor_t c,
                                                        const cudnnTensorDescriptor_t dx, const int requested,
                                                        int* returned, cudnnConvolutionBwdDataAlgoPerf_t* perf) {
  const char* fn = "cudnnFindConvolutionBackwardDataAlgorithm";
  if (cudnnStatus_t st = check_conv(fn, h, dx, w, c, dy)) return st;
  return list_algos<cudnnConvolutionBwdDataAlgoPerf_t, cudnnConvolutionBwdDataAlgo_t>(
      fn, kBackwardData, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, *c, requested, returned, perf);
}
cudnnStatus_t cudnnGetConvolutionBackwardDataWorkspaceSize(cudnnHandle_t h, const cudnnFilterDescriptor_t w,
                                                           const cudnnTensorDescriptor_t dy,
                                                           const cudnnConvolutionDescriptor_t c,
                                                           const cudnnTensorDescriptor_t dx,
                                                           cudnnConvolutionBwdDataAlgo_t algo, size_t* bytes) {
  return workspace_size("cudnnGetConvolutionBackwardDataWorkspaceSize", h, dx, w, c, dy, kBackwardData,
                        CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, algo, bytes);
}

cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithm_v7(cudnnHandle_t h, const cudnnTensorDescriptor_t x,
                                                            const cudnnTensorDescriptor_t dy,
                                                            const cudnnConvolutionDescriptor_t c,
                                                            const cudnnFilterDescriptor_t dw, const int requested,
                                                            int* returned, cudnnConvolutionBwdFilterAlgoPerf_t* perf) {
  const char* fn = "cudnnGetConvolutionBackwardFilterAlgorithm_v7";
  if (cudnnStatus_t st = check_conv(fn, h, x, dw, c, dy)) return st;
  return list_algos<cudnnConvolutionBwdFilterAlgoPerf_t, cudnnConvolutionBwdFilterAlgo_t>(
      fn, kBackwardFilter, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, *c, requested, returned, perf);
}
cudnnStatus_t cudnnFindConvolutionBackwardFilterAlgorithm(cudnnHandle_t h, const cudnnTensorDescriptor_t x,
                                                          const cudnnTensorDescriptor_t dy,
                                                          const cudnnConvolutionDescriptor_t c,
                                                          const cudnnFilterDescriptor_t dw, const int requested,
                                                          int* returned, cudnnConvolutionBwdFilterAlgoPerf_t* perf) {
  const char* fn = "cudnnFindConvolutionBackwardFilterAlgorithm";
  if (cudnnStatus_t st = check_conv(fn, h, x, dw, c, dy)) return st;
  return list_algos<cudnnConvolutionBwdFilterAlgoPerf_t, cudnnConvolutionBwdFilterAlgo_t>(
      fn, kBackwardFilter, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, *c, requested, returned, perf);
}
cudnnStatus_t cudnnGetConvolutionBackwardFilterWorkspaceSize(cudnnHandle_t h, const cudnnTensorDescriptor_t x,
                                                             const cudnnTensorDescriptor_t dy,
                                                             const cudnnConvolutionDescriptor_t c,
                                                             const cudnnFilterDescriptor_t dw,
                                                             cudnnConvolutionBwdFilterAlgo_t algo, size_t* bytes) {
  return workspace_size("cudnnGetConvolutionBackwardFilterWorkspaceSize", h, x, dw, c, dy, kBackwardFilter,
                        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, algo, bytes);
}

// --- convolutions -----------------------------------------------------------------------------

// y = alpha * conv(x, w) + beta * y
cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t h, const void* alpha, const cudnnTensorDescriptor_t xDesc,
                                      const void* x, const cudnnFilterDescriptor_t wDesc, const void* w,
                                      const cudnnConvolutionDescriptor_t convDesc, cudnnConvolutionFwdAlgo_t algo,
                                      void* workSpace, size_t workSpaceSizeInBytes, const void* beta,
                                      const cudnnTensorDescriptor_t yDesc, void* y) {
  return convolve<Operand::y>("cudnnConvolutionForward", h, alpha, beta, kForward, CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
                              algo, workSpace, workSpaceSizeInBytes, xDesc, x, wDesc, w, convDesc, yDesc, y, y,
                              CUDNN_STATUS_NOT_SUPPORTED);
}

// dx = alpha * conv_T(dy, w) + beta * dx: the adjoint of the forward convolution of dx's shape.
cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t h, const void* alpha, const cudnnFilterDescriptor_t wDesc,
                                           const void* w, const cudnnTensorDescriptor_t dyDesc, const void* dy,
                                           const cudnnConvolutionDescriptor_t convDesc,
                                           cudnnConvolutionBwdDataAlgo_t algo, void* workSpace,
                                           size_t workSpaceSizeInBytes, const void* beta,
                                           const cudnnTensorDescriptor_t dxDesc, void* dx) {
  return convolve<Operand::x>("cudnnConvolutionBackwardData", h, alpha, beta, kBackwardData,
                              CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, algo, workSpace, workSpaceSizeInBytes, dxDesc, dx,
                              wDesc, w, convDesc, dyDesc, dy, dx);
}

// dw = alpha * sum over the products of dy * x + beta * dw
cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t h, const void* alpha, const cudnnTensorDescriptor_t xDesc,
                                             const void* x, const cudnnTensorDescriptor_t dyDesc, const void* dy,
                                             const cudnnConvolutionDescriptor_t convDesc,
                                             cudnnConvolutionBwdFilterAlgo_t algo, void* workSpace,
                                             size_t workSpaceSizeInBytes, const void* beta,
                                             const cudnnFilterDescriptor_t dwDesc, void* dw) {
  return convolve<Operand::w>("cudnnConvolutionBackwardFilter", h, alpha, beta, kBackwardFilter,
                              CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, algo, workSpace, workSpaceSizeInBytes, xDesc, x,
                              dwDesc, dw, convDesc, dyDesc, dy, dw);
}

// db[0, k, 0, 0] = alpha * sum over n, h, w of dy[n, k, h, w] + beta * db
cudnnStatus_t cudnnConvolutionBackwardBias(cudnnHandle_t h, const void* alpha, const cudnnTensorDescriptor_t dyDesc,
                                           const void* dy, const void* beta, const cudnnTensorDescriptor_t dbDesc,
                                           void* db) {
  const char* fn = "cudnnConvolutionBackwardBias";
  if (!h || !alpha || !beta || !dy || !db || !dyDesc || !dbDesc)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "null handle, descriptor or pointer");
  if (!dyDesc->set || !dbDesc->set) return fail(CUDNN_STATUS_BAD_PARAM, fn, "descriptor never set");
  if (dbDesc->dim[0] != 1 || dbDesc->dim[2] != 1 || dbDesc->dim[3] != 1 || dbDesc->dim[1] != dyDesc->dim[1])
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "db must be [1, %lld, 1, 1]", (long long)dyDesc->dim[1]);
  if (dbDesc->type != dyDesc->type) return fail(CUDNN_STATUS_BAD_PARAM, fn, "dy and db data types differ");
  if (!computable(dyDesc->type)) return fail(CUDNN_STATUS_NOT_SUPPORTED, fn, "data type %d", dyDesc->type);
  const View v = view(*dyDesc), vb = view(*dbDesc);
  const double a = scaling(alpha, dyDesc->type), b = scaling(beta, dyDesc->type);
  dd::cuda::emulation::enqueue(h->stream, [=] {
    const vector<double> DY = gather(v, dy);
    vector<double> DB(static_cast<std::size_t>(v.d[1]), 0.0);
    for (std::size_t i = 0; i < DY.size(); ++i)
      DB[static_cast<std::size_t>((i64(i) / (v.d[2] * v.d[3])) % v.d[1])] += DY[i];
    blend(vb, db, DB, a, b);
  });
  return CUDNN_STATUS_SUCCESS;
}

// C = alpha * A + beta * C, each dim of A C's or 1 (broadcast).
cudnnStatus_t cudnnAddTensor(cudnnHandle_t h, const void* alpha, const cudnnTensorDescriptor_t aDesc, const void* A,
                             const void* beta, const cudnnTensorDescriptor_t cDesc, void* C) {
  const char* fn = "cudnnAddTensor";
  if (!h || !alpha || !beta || !A || !C || !aDesc || !cDesc)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "null handle, descriptor or pointer");
  if (!aDesc->set || !cDesc->set) return fail(CUDNN_STATUS_BAD_PARAM, fn, "descriptor never set");
  for (int d = 0; d < 4; ++d)
    if (aDesc->dim[d] != 1 && aDesc->dim[d] != cDesc->dim[d])
      return fail(CUDNN_STATUS_BAD_PARAM, fn, "dim %d of A is %lld, C's %lld (must be equal or 1)", d,
                  (long long)aDesc->dim[d], (long long)cDesc->dim[d]);
  if (aDesc->type != cDesc->type) return fail(CUDNN_STATUS_BAD_PARAM, fn, "A and C data types differ");
  if (!computable(cDesc->type)) return fail(CUDNN_STATUS_NOT_SUPPORTED, fn, "data type %d", cDesc->type);
  const View a = view(*aDesc), c = view(*cDesc);
  const double sa = scaling(alpha, cDesc->type), sb = scaling(beta, cDesc->type);
  dd::cuda::emulation::enqueue(h->stream, [=] {
    vector<double> values(static_cast<std::size_t>(c.count()));
    i64 i = 0;
    for (i64 n = 0; n < c.d[0]; ++n)
      for (i64 ch = 0; ch < c.d[1]; ++ch)
        for (i64 y = 0; y < c.d[2]; ++y)
          for (i64 x = 0; x < c.d[3]; ++x)  // a broadcast dim (size 1) reads index 0
            values[static_cast<std::size_t>(i++)] =
                load(A, a.type, a.at(a.d[0] > 1 ? n : 0, a.d[1] > 1 ? ch : 0, a.d[2] > 1 ? y : 0, a.d[3] > 1 ? x : 0));
    blend(c, C, values, sa, sb);
  });
  return CUDNN_STATUS_SUCCESS;
}

// --- batch normalization ----------------------------------------------------------------------

// The parameter descriptor: 1xCx1x1 (spatial) or 1xCxHxW (per activation), packed, float (double
// for double data).
cudnnStatus_t cudnnDeriveBNTensorDescriptor(cudnnTensorDescriptor_t derived, const cudnnTensorDescriptor_t x,
                                            cudnnBatchNormMode_t mode) {
  const char* fn = "cudnnDeriveBNTensorDescriptor";
  if (!derived || !x || !x->set) return fail(CUDNN_STATUS_BAD_PARAM, fn, "null or unset descriptor");
  if (!valid_bn_mode(mode)) return fail(CUDNN_STATUS_BAD_PARAM, fn, "mode %d", mode);
  const cudnnDataType_t t = x->type == CUDNN_DATA_DOUBLE ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT;
  const bool per_activation = mode == CUDNN_BATCHNORM_PER_ACTIVATION;
  return cudnnSetTensor4dDescriptor(derived, CUDNN_TENSOR_NCHW, t, 1, int(x->dim[1]),
                                    per_activation ? int(x->dim[2]) : 1, per_activation ? int(x->dim[3]) : 1);
}

// Batch statistics (biased variance) normalise x; saveMean/saveInvVariance get the mean and
// 1/sqrt(var + eps); the running statistics move by f towards the mean and the UNBIASED variance.
cudnnStatus_t cudnnBatchNormalizationForwardTraining(cudnnHandle_t h, cudnnBatchNormMode_t mode, const void* alpha,
                                                     const void* beta, const cudnnTensorDescriptor_t xDesc,
                                                     const void* x, const cudnnTensorDescriptor_t yDesc, void* y,
                                                     const cudnnTensorDescriptor_t pDesc, const void* bnScale,
                                                     const void* bnBias, double factor, void* runningMean,
                                                     void* runningVariance, double epsilon, void* saveMean,
                                                     void* saveInvVariance) {
  const char* fn = "cudnnBatchNormalizationForwardTraining";
  if (!alpha || !beta || !x || !y || !bnScale || !bnBias)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "null data, parameter or scaling pointer");
  if (!saveMean != !saveInvVariance)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "exactly one of the saved statistics is null");
  if (!runningMean != !runningVariance)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "exactly one of the running statistics is null");
  if (cudnnStatus_t st = check_bn(fn, h, mode, xDesc, {yDesc}, pDesc, epsilon)) return st;
  const double a = scaling(alpha, xDesc->type), b = scaling(beta, xDesc->type);
  dd::cuda::emulation::enqueue(h->stream, [=, xd = *xDesc, yd = *yDesc, pd = *pDesc] {
    const BnGeometry g(xd, mode);
    const View pv = view(pd);
    const vector<double> X = gather(view(xd), x), gamma = gather(pv, bnScale), bias = gather(pv, bnBias);
    vector<double> mean, var;
    batch_stats(g, X, mean, var);
    const vector<double> invstd = inv_std(var, epsilon);
    bn_apply(g, xd, yd, y, X, gamma, bias, mean, invstd, a, b);
    if (saveMean) write(pv, saveMean, mean), write(pv, saveInvVariance, invstd);
    if (runningMean) {
      // running = (1 - f) running + f batch; with f = 1 (cuDNN: "MUST use factor=1 in the very first
      // call") the old values are not read, so uninitialised memory does not leak in.
      const double unbias = g.M > 1 ? double(g.M) / double(g.M - 1) : 1.0;  // M = 1: the biased 0 (assumed)
      vector<double> unbiased = var;
      for (double& v : unbiased) v *= unbias;
      blend(pv, runningMean, mean, factor, 1.0 - factor);
      blend(pv, runningVariance, unbiased, factor, 1.0 - factor);
    }
  });
  return CUDNN_STATUS_SUCCESS;
}

// y = gamma * (x - mean) / sqrt(var + eps) + beta with the given statistics.
cudnnStatus_t cudnnBatchNormalizationForwardInference(cudnnHandle_t h, cudnnBatchNormMode_t mode, const void* alpha,
                                                      const void* beta, const cudnnTensorDescriptor_t xDesc,
                                                      const void* x, const cudnnTensorDescriptor_t yDesc, void* y,
                                                      const cudnnTensorDescriptor_t pDesc, const void* bnScale,
                                                      const void* bnBias, const void* estimatedMean,
                                                      const void* estimatedVariance, double epsilon) {
  const char* fn = "cudnnBatchNormalizationForwardInference";
  if (!alpha || !beta || !x || !y || !bnScale || !bnBias || !estimatedMean || !estimatedVariance)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "null data, parameter, statistics or scaling pointer");
  if (cudnnStatus_t st = check_bn(fn, h, mode, xDesc, {yDesc}, pDesc, epsilon)) return st;
  const double a = scaling(alpha, xDesc->type), b = scaling(beta, xDesc->type);
  dd::cuda::emulation::enqueue(h->stream, [=, xd = *xDesc, yd = *yDesc, pd = *pDesc] {
    const BnGeometry g(xd, mode);
    const View pv = view(pd);
    const vector<double> X = gather(view(xd), x), gamma = gather(pv, bnScale), bias = gather(pv, bnBias);
    bn_apply(g, xd, yd, y, X, gamma, bias, gather(pv, estimatedMean), inv_std(gather(pv, estimatedVariance), epsilon),
             a, b);
  });
  return CUDNN_STATUS_SUCCESS;
}

// The training-mode backward (the statistics depend on x), with the saved mean and 1/sqrt(var+eps)
// or, when both are null, the batch's recomputed with epsilon:
//   dbeta = sum dy, dgamma = sum dy * xhat, dx = gamma * invstd * (dy - dbeta / M - xhat * dgamma / M)
// dx blends with alphaDataDiff/betaDataDiff, dgamma and dbeta with alphaParamDiff/betaParamDiff.
cudnnStatus_t cudnnBatchNormalizationBackward(cudnnHandle_t h, cudnnBatchNormMode_t mode, const void* alphaDataDiff,
                                              const void* betaDataDiff, const void* alphaParamDiff,
                                              const void* betaParamDiff, const cudnnTensorDescriptor_t xDesc,
                                              const void* x, const cudnnTensorDescriptor_t dyDesc, const void* dy,
                                              const cudnnTensorDescriptor_t dxDesc, void* dx,
                                              const cudnnTensorDescriptor_t pDesc, const void* bnScale,
                                              void* dBnScaleResult, void* dBnBiasResult, double epsilon,
                                              const void* savedMean, const void* savedInvVariance) {
  const char* fn = "cudnnBatchNormalizationBackward";
  if (!alphaDataDiff || !betaDataDiff || !alphaParamDiff || !betaParamDiff || !x || !dy || !dx || !bnScale ||
      !dBnScaleResult || !dBnBiasResult)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "null data, parameter, result or scaling pointer");
  if (!savedMean != !savedInvVariance)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "exactly one of the saved statistics is null");
  if (cudnnStatus_t st = check_bn(fn, h, mode, xDesc, {dyDesc, dxDesc}, pDesc, epsilon)) return st;
  const cudnnDataType_t t = xDesc->type;
  const double ad = scaling(alphaDataDiff, t), bd = scaling(betaDataDiff, t), ap = scaling(alphaParamDiff, t),
               bp = scaling(betaParamDiff, t);
  dd::cuda::emulation::enqueue(h->stream, [=, xd = *xDesc, dyd = *dyDesc, dxd = *dxDesc, pd = *pDesc] {
    const BnGeometry g(xd, mode);
    const View pv = view(pd);
    const vector<double> X = gather(view(xd), x), DY = gather(view(dyd), dy), gamma = gather(pv, bnScale);
    vector<double> mean, invstd;
    if (savedMean) {
      mean = gather(pv, savedMean), invstd = gather(pv, savedInvVariance);
    } else {
      vector<double> var;
      batch_stats(g, X, mean, var);
      invstd = inv_std(var, epsilon);
    }
    vector<double> dgamma(static_cast<std::size_t>(g.P), 0.0), dbeta(static_cast<std::size_t>(g.P), 0.0);
    for (std::size_t i = 0; i < X.size(); ++i) {
      const std::size_t p = g.param_of(i64(i));
      dbeta[p] += DY[i];
      dgamma[p] += DY[i] * (X[i] - mean[p]) * invstd[p];
    }
    vector<double> DX(X.size());
    const double M = double(g.M);
    for (std::size_t i = 0; i < X.size(); ++i) {
      const std::size_t p = g.param_of(i64(i));
      const double xhat = (X[i] - mean[p]) * invstd[p];
      DX[i] = gamma[p] * invstd[p] * (DY[i] - dbeta[p] / M - xhat * dgamma[p] / M);
    }
    blend(view(dxd), dx, DX, ad, bd);
    blend(pv, dBnScaleResult, dgamma, ap, bp);
    blend(pv, dBnBiasResult, dbeta, ap, bp);
  });
  return CUDNN_STATUS_SUCCESS;
}

// --- graph (backend) API: not emulated ----------------------------------------------------------
// No descriptor can be created, so every other call gets a handle that is not a descriptor.

cudnnStatus_t cudnnBackendCreateDescriptor(cudnnBackendDescriptorType_t type, cudnnBackendDescriptor_t* descriptor) {
  if (!descriptor) return fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, "cudnnBackendCreateDescriptor", "null pointer");
  *descriptor = nullptr;
  return fail(CUDNN_STATUS_NOT_SUPPORTED, "cudnnBackendCreateDescriptor",
              "the graph API is not emulated (descriptor type %d)", type);
}
cudnnStatus_t cudnnBackendDestroyDescriptor(cudnnBackendDescriptor_t d) {
  return not_a_descriptor("cudnnBackendDestroyDescriptor", d);
}
cudnnStatus_t cudnnBackendFinalize(cudnnBackendDescriptor_t d) {
  return not_a_descriptor("cudnnBackendFinalize", d);
}
cudnnStatus_t cudnnBackendSetAttribute(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t,
                                       cudnnBackendAttributeType_t, int64_t, const void*) {
  return not_a_descriptor("cudnnBackendSetAttribute", d);
}
cudnnStatus_t cudnnBackendGetAttribute(cudnnBackendDescriptor_t const d, cudnnBackendAttributeName_t,
                                       cudnnBackendAttributeType_t, int64_t, int64_t*, void*) {
  return not_a_descriptor("cudnnBackendGetAttribute", d);
}
cudnnStatus_t cudnnBackendExecute(cudnnHandle_t h, cudnnBackendDescriptor_t plan, cudnnBackendDescriptor_t) {
  if (!h) return fail(CUDNN_STATUS_BAD_PARAM, "cudnnBackendExecute", "null handle");
  return not_a_descriptor("cudnnBackendExecute", plan);
}

}  // extern "C"
