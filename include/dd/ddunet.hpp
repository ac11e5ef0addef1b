#pragma once
// ddunet: the umbrella header.
#include "dd/core/error.hpp"
#include "dd/core/memory.hpp"
#include "dd/core/parallel.hpp"
#include "dd/core/rng.hpp"
#include "dd/core/shape.hpp"
#include "dd/core/tensor.hpp"

#include "dd/autograd/tape.hpp"
#include "dd/autograd/var.hpp"

#include "dd/ops/batch_norm.hpp"
#include "dd/ops/concat.hpp"
#include "dd/ops/conv2d.hpp"
#include "dd/ops/dropout.hpp"
#include "dd/ops/loss.hpp"
#include "dd/ops/max_pool.hpp"
#include "dd/ops/relu.hpp"
#include "dd/ops/upconv.hpp"

#include "dd/layers/activation.hpp"
#include "dd/layers/batchnorm.hpp"
#include "dd/layers/conv.hpp"
#include "dd/layers/dropout.hpp"
#include "dd/layers/layer.hpp"
#include "dd/layers/pooling.hpp"
#include "dd/layers/seq.hpp"
#include "dd/layers/skip.hpp"
#include "dd/layers/upconv.hpp"

#include "dd/models/blocks.hpp"
#include "dd/models/model.hpp"
#include "dd/models/unet.hpp"
