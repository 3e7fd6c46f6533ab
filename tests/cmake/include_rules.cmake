# SPDX-FileCopyrightText: 2026 The polo authors
# SPDX-License-Identifier: Apache-2.0
# Fails if a header under include/ includes a CUDA, Thrust or CUB header, or if a header
# under cuda/ includes Eigen (the compile-alone checks prove the same by construction; this
# names the offending line).
file(GLOB_RECURSE hpp ${ROOT}/include/polo/*.hpp)
file(GLOB_RECURSE cuh ${ROOT}/cuda/polo/*.cuh)
set(bad "")
foreach(f IN LISTS hpp)
  file(STRINGS ${f} lines REGEX "^[ \t]*#[ \t]*include[ \t]*[<\"](cuda|cuda_runtime|cuda_fp16|cuda_bf16|thrust/|cub/|cuda/)")
  foreach(l IN LISTS lines)
    list(APPEND bad "${f}: ${l}")
  endforeach()
endforeach()
foreach(f IN LISTS cuh)
  file(STRINGS ${f} lines REGEX "^[ \t]*#[ \t]*include[ \t]*[<\"](Eigen/|unsupported/Eigen|polo/cpu/|polo/polo.hpp)")
  foreach(l IN LISTS lines)
    list(APPEND bad "${f}: ${l}")
  endforeach()
endforeach()
list(LENGTH hpp nh)
list(LENGTH cuh nc)
if(bad)
  string(REPLACE ";" "\n" bad "${bad}")
  message(FATAL_ERROR "include rule violated:\n${bad}")
endif()
message(STATUS "include rules hold for ${nh} headers in include/ and ${nc} in cuda/")
