// Runs rnnlab's CUDA C kernels (src/cuda/kernels.cu) on the CPU, one OS thread per CUDA
// thread and one block at a time, so that their indexing, bounds and __syncthreads are
// tested on machines without a GPU (crates/cells/tests/cuda.rs). Not fast; exact CUDA
// semantics for what the kernels use: grid and block indices, static shared memory,
// barriers, and the float math functions.
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstring>
#include <thread>
#include <utility>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
inline std::barrier<>* block_barrier = nullptr;

inline void __syncthreads() { block_barrier->arrive_and_wait(); }

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
// One block runs at a time, so a function's static array is its block's shared memory.
#define __shared__ static
using std::max;
using std::min;
