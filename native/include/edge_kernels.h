/* The public API of the edge kernels: include this one header. */
#ifndef EDGE_KERNELS_H
#define EDGE_KERNELS_H

#include "edge/common.h"
#include "edge/gemm.h"
#include "edge/conv.h"
#include "edge/ops.h"
#include "edge/plan.h"
#include "edge/decoder.h"

#endif /* EDGE_KERNELS_H */
