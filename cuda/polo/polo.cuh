// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Umbrella header for CUDA translation units (.cu, compiled by nvcc): the core types, every
/// public entry point, and the CUDA backend (`polo::cuda`). Never includes Eigen or the CPU
/// backend; a program that uses both backends includes <polo/polo.hpp> from its .cpp files and
/// this header from its .cu files. See docs/cuda.md for the stream, workspace and error
/// contract.

#include "polo/core/backend.hpp"
#include "polo/core/config.hpp"
#include "polo/core/error.hpp"
#include "polo/core/layout.hpp"
#include "polo/core/math.hpp"
#include "polo/core/reduce.hpp"
#include "polo/core/view.hpp"

#include "polo/detail/launch.cuh"
#include "polo/detail/status.cuh"
#include "polo/detail/workspace.cuh"

// One line per primitive: its CUDA backend (which includes its public header).
#include "polo/advantages.cuh"
#include "polo/whiten.cuh"
#include "polo/gae.cuh"
#include "polo/policy_loss.cuh"
#include "polo/value_loss.cuh"
#include "polo/kl.cuh"
