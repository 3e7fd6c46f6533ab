// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Umbrella header for C++ (non-CUDA) translation units: the core types, every public entry
/// point and the CPU backend (Eigen). CUDA translation units include <polo/polo.cuh> instead.

#include "polo/core/backend.hpp"
#include "polo/core/config.hpp"
#include "polo/core/error.hpp"
#include "polo/core/layout.hpp"
#include "polo/core/math.hpp"
#include "polo/core/reduce.hpp"
#include "polo/core/view.hpp"

#include "polo/advantages.hpp"
#include "polo/aggregation.hpp"
#include "polo/gae.hpp"
#include "polo/kl.hpp"
#include "polo/kl_controller.hpp"
#include "polo/policy.hpp"
#include "polo/policy_loss.hpp"
#include "polo/value_loss.hpp"
#include "polo/whiten.hpp"

#include "polo/cpu/advantages.hpp"
#include "polo/cpu/eigen_interop.hpp"
#include "polo/cpu/gae.hpp"
#include "polo/cpu/kl.hpp"
#include "polo/cpu/policy_loss.hpp"
#include "polo/cpu/value_loss.hpp"
#include "polo/cpu/whiten.hpp"
