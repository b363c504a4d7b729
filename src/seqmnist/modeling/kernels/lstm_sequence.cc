// Whole-sequence LSTM for training on CPU: the forward pass and its gradient as two TensorFlow ops.
//
// Same function and weights as keras.layers.LSTM (gates i, f, c, o; sigmoid gates, tanh cell,
// zero initial state). `reverse` reads time backwards (Keras's go_backwards, the backward half of
// a Bidirectional layer) by walking the time indices the other way: each step's state is stored
// at its own time index, so no sequence is copied or flipped, and h is already in the order
// keras.layers.Bidirectional concatenates. Why a kernel of our own: Keras runs the recurrence as
// ~30 small TensorFlow ops per time step, each costing 15-50 us of scheduling on top of its work
// (bench/README.md).
// Here the batch is cut into one block of rows per worker thread; rows of an LSTM never interact,
// so each thread runs all time steps of its block with no synchronisation, and every matrix
// product is one Eigen GEMM built for this CPU (compiled by fused_lstm.py for the CPU's x86-64 ISA level).
// Over all time steps at once: one GEMM for the input gradient (when asked for), one for both
// weight gradients.
// Block partial sums are added in block order: for a given thread count the result is the same
// on every run.

#include <algorithm>
#include <thread>
#include <vector>

#include <Eigen/Core>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::errors::InvalidArgument;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixMap = Eigen::Map<Matrix>;
using ConstMatrixMap = Eigen::Map<const Matrix>;
// One time step of a block: rows are batch entries, `T * width` floats apart in [B, T, width].
using StepMap = Eigen::Map<Matrix, 0, Eigen::OuterStride<>>;
using ConstStepMap = Eigen::Map<const Matrix, 0, Eigen::OuterStride<>>;
using ArrayMap = Eigen::Map<Eigen::ArrayXf>;
using ConstArrayMap = Eigen::Map<const Eigen::ArrayXf>;

struct Sizes {
  int64_t batch, steps, inputs, units;
  int64_t gates() const { return 4 * units; }
};

// The order one direction reads time in: step 0, 1, ... is time index 0, 1, ... forward and
// T-1, T-2, ... in reverse.
struct TimeOrder {
  int64_t steps;
  bool reverse;
  int64_t operator[](int64_t step) const { return reverse ? steps - 1 - step : step; }
  // From a time index to the one read just before it (the previous state's).
  int64_t previous() const { return reverse ? 1 : -1; }
  // The first time index in memory order that has a previous state (the other end has none).
  int64_t first_with_previous() const { return reverse ? 0 : 1; }
};

// One contiguous block of rows per worker thread (fewer when there are fewer rows).
int RowBlocks(OpKernelContext* ctx, int64_t rows) {
  const int threads = ctx->device()->tensorflow_cpu_worker_threads()->workers->NumThreads();
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(rows, threads)));
}

// Runs fn(begin_row, end_row, block) for each of `blocks` row blocks in parallel, and waits.
// Blocks after the first get threads of their own, started per call (tens of microseconds
// against milliseconds of work), so they run at once whatever TensorFlow's pools are doing.
template <typename Fn>
void ForEachRowBlock(int64_t rows, int blocks, Fn fn) {
  auto run = [&](int block) { fn(rows * block / blocks, rows * (block + 1) / blocks, block); };
  std::vector<std::thread> helpers;
  for (int block = 1; block < blocks; ++block) helpers.emplace_back(run, block);
  run(0);
  for (auto& helper : helpers) helper.join();
}

tensorflow::Status CheckInputs(OpKernelContext* ctx, Sizes* sizes) {
  const Tensor& x = ctx->input(0);
  const Tensor& kernel = ctx->input(1);
  const Tensor& recurrent = ctx->input(2);
  if (x.dims() != 3) return InvalidArgument("x must be [batch, time, features], got ", x.shape().DebugString());
  if (recurrent.dims() != 2 || recurrent.dim_size(1) != 4 * recurrent.dim_size(0)) {
    return InvalidArgument("recurrent_kernel must be [units, 4 * units], got ", recurrent.shape().DebugString());
  }
  *sizes = {x.dim_size(0), x.dim_size(1), x.dim_size(2), recurrent.dim_size(0)};
  if (kernel.shape() != TensorShape({sizes->inputs, sizes->gates()})) {
    return InvalidArgument("kernel must be [features, 4 * units] = [", sizes->inputs, ", ", sizes->gates(),
                           "], got ", kernel.shape().DebugString());
  }
  if (sizes->steps < 1) return InvalidArgument("x has no time steps");
  return tensorflow::OkStatus();
}

class LstmSequenceOp : public OpKernel {
 public:
  explicit LstmSequenceOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("reverse", &reverse_));
  }

  void Compute(OpKernelContext* ctx) override {
    Sizes n;
    OP_REQUIRES_OK(ctx, CheckInputs(ctx, &n));
    const Tensor& bias = ctx->input(3);
    OP_REQUIRES(ctx, bias.shape() == TensorShape({n.gates()}),
                InvalidArgument("bias must be [4 * units], got ", bias.shape().DebugString()));
    Tensor *h_out, *c_out, *gates_out;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, {n.batch, n.steps, n.units}, &h_out));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, {n.batch, n.steps, n.units}, &c_out));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, {n.batch, n.steps, n.gates()}, &gates_out));
    if (n.batch == 0) return;
    const float* x = ctx->input(0).flat<float>().data();
    ConstMatrixMap kernel(ctx->input(1).flat<float>().data(), n.inputs, n.gates());
    ConstMatrixMap recurrent(ctx->input(2).flat<float>().data(), n.units, n.gates());
    const Eigen::Map<const Eigen::RowVectorXf> b(bias.flat<float>().data(), n.gates());
    float* h = h_out->flat<float>().data();
    float* c = c_out->flat<float>().data();
    float* gates = gates_out->flat<float>().data();
    const int64_t H = n.units, G = n.gates(), T = n.steps;
    const TimeOrder order{T, reverse_};
    const int64_t previous = order.previous();

    ForEachRowBlock(n.batch, RowBlocks(ctx, n.batch), [&](int64_t begin, int64_t end, int) {
      const int64_t rows = end - begin;
      // Input contribution of every step at once: [rows * T, I] x [I, 4H].
      MatrixMap block_gates(gates + begin * T * G, rows * T, G);
      block_gates.noalias() = ConstMatrixMap(x + begin * T * n.inputs, rows * T, n.inputs) * kernel;
      block_gates.rowwise() += b;
      for (int64_t step = 0; step < T; ++step) {
        const int64_t t = order[step];
        float* step_gates = gates + (begin * T + t) * G;
        if (step > 0) {  // + h[previous] x recurrent: [rows, H] x [H, 4H]
          StepMap(step_gates, rows, G, Eigen::OuterStride<>(T * G)).noalias() +=
              ConstStepMap(h + (begin * T + t + previous) * H, rows, H, Eigen::OuterStride<>(T * H)) * recurrent;
        }
        for (int64_t row = 0; row < rows; ++row) {
          const int64_t at = (begin + row) * T + t;
          float* z = gates + at * G;
          ArrayMap gate_i(z, H), gate_f(z + H, H), cell(z + 2 * H, H), gate_o(z + 3 * H, H);
          gate_i = gate_i.logistic();
          gate_f = gate_f.logistic();
          cell = cell.tanh();
          gate_o = gate_o.logistic();
          ArrayMap c_t(c + at * H, H);
          if (step > 0) {
            c_t = gate_f * ConstArrayMap(c + (at + previous) * H, H) + gate_i * cell;
          } else {
            c_t = gate_i * cell;
          }
          ArrayMap(h + at * H, H) = gate_o * c_t.tanh();
        }
      }
    });
  }

 private:
  bool reverse_;  // read time from the last step to the first
};

class LstmSequenceGradOp : public OpKernel {
 public:
  explicit LstmSequenceGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("input_gradient", &input_gradient_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("reverse", &reverse_));
  }

  void Compute(OpKernelContext* ctx) override {
    Sizes n;
    OP_REQUIRES_OK(ctx, CheckInputs(ctx, &n));
    const int64_t H = n.units, G = n.gates(), T = n.steps, I = n.inputs;
    const TimeOrder order{T, reverse_};
    const int64_t previous = order.previous();
    for (int index : {3, 4, 6}) {
      OP_REQUIRES(ctx, ctx->input(index).shape() == TensorShape({n.batch, T, H}),
                  InvalidArgument("input ", index, " must be [batch, time, units]"));
    }
    OP_REQUIRES(ctx, ctx->input(5).shape() == TensorShape({n.batch, T, G}),
                InvalidArgument("gates must be [batch, time, 4 * units]"));
    const float* x = ctx->input(0).flat<float>().data();
    ConstMatrixMap kernel(ctx->input(1).flat<float>().data(), I, G);
    ConstMatrixMap recurrent(ctx->input(2).flat<float>().data(), H, G);
    const float* h = ctx->input(3).flat<float>().data();
    const float* c = ctx->input(4).flat<float>().data();
    const float* gates = ctx->input(5).flat<float>().data();
    const float* dh_out = ctx->input(6).flat<float>().data();

    Tensor *dx_out, *dkernel_out, *drecurrent_out, *dbias_out;
    const TensorShape dx_shape = input_gradient_ ? ctx->input(0).shape() : TensorShape({0, 0, 0});
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, dx_shape, &dx_out));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, {I, G}, &dkernel_out));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, {H, G}, &drecurrent_out));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, {G}, &dbias_out));
    float* dx = dx_out->flat<float>().data();
    MatrixMap dkernel(dkernel_out->flat<float>().data(), I, G);
    MatrixMap drecurrent(drecurrent_out->flat<float>().data(), H, G);
    Eigen::Map<Eigen::RowVectorXf> dbias(dbias_out->flat<float>().data(), G);
    dkernel.setZero();
    drecurrent.setZero();
    dbias.setZero();
    if (n.batch == 0) return;

    // d loss / d pre-activation gates. Every element is written below, so the buffer is not
    // zeroed first (a std::vector would memset 15 MB per step on one thread).
    Tensor dgates_buffer;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, {n.batch, T, G}, &dgates_buffer));
    float* dgates = dgates_buffer.flat<float>().data();
    const int blocks = RowBlocks(ctx, n.batch);
    std::vector<Matrix> block_dweights(blocks);  // [d kernel; d recurrent_kernel] per block
    std::vector<Eigen::RowVectorXf> block_dbias(blocks);
    ForEachRowBlock(n.batch, blocks, [&](int64_t begin, int64_t end, int block) {
      const int64_t rows = end - begin;
      Eigen::ArrayXXf dh_next = Eigen::ArrayXXf::Zero(H, rows);  // column per row: contiguous
      Eigen::ArrayXXf dc_next = Eigen::ArrayXXf::Zero(H, rows);
      Eigen::ArrayXf tanh_c(H), dh_t(H), dc(H);
      Matrix dh_recurrent(rows, H);
      for (int64_t step = T - 1; step >= 0; --step) {
        const int64_t t = order[step];
        for (int64_t row = 0; row < rows; ++row) {
          const int64_t at = (begin + row) * T + t;
          const float* z = gates + at * G;
          ConstArrayMap gate_i(z, H), gate_f(z + H, H), cell(z + 2 * H, H), gate_o(z + 3 * H, H);
          tanh_c = ConstArrayMap(c + at * H, H).tanh();
          dh_t = ConstArrayMap(dh_out + at * H, H) + dh_next.col(row);
          dc = dc_next.col(row) + dh_t * gate_o * (1.0f - tanh_c.square());
          float* dz = dgates + at * G;
          ArrayMap(dz, H) = dc * cell * gate_i * (1.0f - gate_i);
          if (step > 0) {
            ArrayMap(dz + H, H) = dc * ConstArrayMap(c + (at + previous) * H, H) * gate_f * (1.0f - gate_f);
          } else {
            ArrayMap(dz + H, H).setZero();
          }
          ArrayMap(dz + 2 * H, H) = dc * gate_i * (1.0f - cell.square());
          ArrayMap(dz + 3 * H, H) = dh_t * tanh_c * gate_o * (1.0f - gate_o);
          dc_next.col(row) = dc * gate_f;
        }
        if (step > 0) {  // d h[previous] = d gates[t] x recurrent^T: [rows, 4H] x [4H, H]
          dh_recurrent.noalias() =
              ConstStepMap(dgates + (begin * T + t) * G, rows, G, Eigen::OuterStride<>(T * G)) *
              recurrent.transpose();
          dh_next = dh_recurrent.transpose().array();
        }
      }
      // Over all steps of the block at once.
      ConstMatrixMap block_dz(dgates + begin * T * G, rows * T, G);
      if (input_gradient_) {
        MatrixMap(dx + begin * T * I, rows * T, I).noalias() = block_dz * kernel.transpose();
      }
      // Row (b, t) holds [x[b, t], h[b, previous t]] (0 for the first step read): both weight
      // gradients in one product.
      Matrix inputs = Matrix::Zero(rows * T, I + H);
      inputs.leftCols(I) = ConstMatrixMap(x + begin * T * I, rows * T, I);
      const int64_t first = order.first_with_previous();
      for (int64_t row = 0; row < rows; ++row) {
        inputs.block(row * T + first, I, T - 1, H) =
            ConstMatrixMap(h + ((begin + row) * T + first + previous) * H, T - 1, H);
      }
      block_dweights[block].noalias() = inputs.transpose() * block_dz;
      block_dbias[block] = block_dz.colwise().sum();
    });
    for (int block = 0; block < blocks; ++block) {
      dkernel += block_dweights[block].topRows(I);
      drecurrent += block_dweights[block].bottomRows(H);
      dbias += block_dbias[block];
    }
  }

 private:
  bool input_gradient_;  // false when x is data: its gradient is never used
  bool reverse_;         // as the forward op's
};

tensorflow::Status SequenceShape(InferenceContext* ctx) {
  ShapeHandle x, recurrent;
  TF_RETURN_IF_ERROR(ctx->WithRank(ctx->input(0), 3, &x));
  TF_RETURN_IF_ERROR(ctx->WithRank(ctx->input(2), 2, &recurrent));
  DimensionHandle units = ctx->Dim(recurrent, 0), gates;
  TF_RETURN_IF_ERROR(ctx->Multiply(units, 4, &gates));
  ShapeHandle states = ctx->MakeShape({ctx->Dim(x, 0), ctx->Dim(x, 1), units});
  ctx->set_output(0, states);
  ctx->set_output(1, states);
  ctx->set_output(2, ctx->MakeShape({ctx->Dim(x, 0), ctx->Dim(x, 1), gates}));
  return tensorflow::OkStatus();
}

tensorflow::Status GradShape(InferenceContext* ctx) {
  bool input_gradient;
  TF_RETURN_IF_ERROR(ctx->GetAttr("input_gradient", &input_gradient));
  ctx->set_output(0, input_gradient ? ctx->input(0) : ctx->MakeShape({0, 0, 0}));
  ctx->set_output(1, ctx->input(1));
  ctx->set_output(2, ctx->input(2));
  ShapeHandle recurrent;
  TF_RETURN_IF_ERROR(ctx->WithRank(ctx->input(2), 2, &recurrent));
  ctx->set_output(3, ctx->Vector(ctx->Dim(recurrent, 1)));
  return tensorflow::OkStatus();
}

}  // namespace

REGISTER_OP("SeqmnistLstmSequence")
    .Input("x: float")                 // [batch, time, features]
    .Input("kernel: float")            // [features, 4 * units]
    .Input("recurrent_kernel: float")  // [units, 4 * units]
    .Input("bias: float")              // [4 * units]
    .Output("h: float")                // [batch, time, units]
    .Output("c: float")                // [batch, time, units]
    .Output("gates: float")            // [batch, time, 4 * units], after their activations
    .Attr("input_gradient: bool = true")  // passed on to the gradient op
    .Attr("reverse: bool = false")        // read time from the last step to the first
    .SetShapeFn(SequenceShape);

REGISTER_OP("SeqmnistLstmSequenceGrad")
    .Input("x: float")
    .Input("kernel: float")
    .Input("recurrent_kernel: float")
    .Input("h: float")
    .Input("c: float")
    .Input("gates: float")
    .Input("dh: float")  // d loss / d h, [batch, time, units]
    .Output("dx: float")
    .Output("dkernel: float")
    .Output("drecurrent_kernel: float")
    .Output("dbias: float")
    .Attr("input_gradient: bool = true")  // false: dx is empty, [0, 0, 0]
    .Attr("reverse: bool = false")        // as the forward op's
    .SetShapeFn(GradShape);

REGISTER_KERNEL_BUILDER(Name("SeqmnistLstmSequence").Device(tensorflow::DEVICE_CPU), LstmSequenceOp);
REGISTER_KERNEL_BUILDER(Name("SeqmnistLstmSequenceGrad").Device(tensorflow::DEVICE_CPU), LstmSequenceGradOp);
