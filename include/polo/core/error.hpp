// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// polo's one exception hierarchy. Every entry point validates before it writes anything, so
/// a thrown polo::error leaves every output buffer untouched.
///
///     polo::error                 base; catch this to catch everything polo throws
///     ├── polo::shape_error       a view has the wrong extents, stride or memory layout
///     ├── polo::config_error      an option value is out of its domain (eps < 0, G < 1, ...)
///     ├── polo::value_error       the data itself is unusable (offsets not monotonic, a
///     │   │                       group of one under singleton_rule::error, ...)
///     │   └── polo::nonfinite_error   a NaN or infinity where the policy says reject
///     └── polo::cuda_error        a CUDA runtime call failed (CUDA backend only)
///
/// Messages always name the entry point, the argument, what was received and what was
/// expected, e.g. `polo::group_advantages: argument 'advantages' has shape [7]; expected [8]
/// (one entry per score)`.

#include <cstdio>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "polo/core/config.hpp"

namespace polo {

/// Base of every exception polo throws.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A view's extents, strides or layout do not match what the entry point requires.
class shape_error : public error {
 public:
  using error::error;
};

/// An option (a field of a *_config struct) is outside its documented domain.
class config_error : public error {
 public:
  using error::error;
};

/// The values of an input are unusable under the chosen options.
class value_error : public error {
 public:
  using error::error;
};

/// A NaN or infinity was found in an input whose policy is to reject non-finite values.
class nonfinite_error : public value_error {
 public:
  nonfinite_error(const std::string& what, index_t index) : value_error(what), index_(index) {}
  /// Flat position (row-major element index within the argument) of the first bad value.
  [[nodiscard]] index_t index() const noexcept { return index_; }

 private:
  index_t index_;
};

/// A CUDA runtime call failed; `code()` is the cudaError_t value.
class cuda_error : public error {
 public:
  cuda_error(const std::string& what, int code) : error(what), code_(code) {}
  [[nodiscard]] int code() const noexcept { return code_; }

 private:
  int code_;
};

namespace detail {

/// "[a,b,...]" for an error message.
inline std::string shape_str(std::initializer_list<index_t> extents) {
  std::string s = "[";
  bool first = true;
  for (index_t e : extents) {
    if (!first) s += ",";
    s += std::to_string(e);
    first = false;
  }
  return s + "]";
}

/// Shortest round-trippable text of a floating-point value for an error message.
inline std::string value_str(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

[[noreturn]] inline void throw_shape(const char* fn, const char* arg, const std::string& got,
                                     const std::string& expected) {
  throw shape_error(std::string("polo::") + fn + ": argument '" + arg + "' has shape " + got +
                    "; expected " + expected);
}

[[noreturn]] inline void throw_config(const char* fn, const char* option, const std::string& got,
                                      const std::string& expected) {
  throw config_error(std::string("polo::") + fn + ": option '" + option + "' is " + got +
                     "; expected " + expected);
}

[[noreturn]] inline void throw_value(const char* fn, const char* arg, const std::string& what) {
  throw value_error(std::string("polo::") + fn + ": argument '" + arg + "' " + what);
}

[[noreturn]] inline void throw_nonfinite(const char* fn, const char* arg, index_t index,
                                         double value, const std::string& hint) {
  throw nonfinite_error(std::string("polo::") + fn + ": argument '" + arg + "' holds " +
                            value_str(value) + " at index " + std::to_string(index) +
                            "; expected finite values" + (hint.empty() ? "" : " (" + hint + ")"),
                        index);
}

}  // namespace detail
}  // namespace polo
