// The CUDA emulator's entry point (see emulator.h and `Gpu::emulated`): built with
// `c++ -std=c++20 -shared -fPIC -include emulator.h emulator.cpp` beside kernels.cu.
#include "kernels.cu"

template <class... A, std::size_t... I>
static void call(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<A*>(args[I])...);
}

// Runs `kernel` over the grid, block by block, each block's threads at once.
template <class... A>
static void run(void (*kernel)(A...), dim3 grid, dim3 block, void** args) {
    gridDim = grid;
    blockDim = block;
    const unsigned n = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                std::barrier<> barrier(n);
                block_barrier = &barrier;
                std::vector<std::thread> threads;
                threads.reserve(n);
                for (unsigned t = 0; t < n; ++t) {
                    threads.emplace_back([=] {
                        blockIdx = {bx, by, bz};
                        threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        call(kernel, args, std::index_sequence_for<A...>{});
                    });
                }
                for (auto& thread : threads) thread.join();
            }
}

// kernel_list.h holds one `KERNEL(name)` per kernel, written from `cuda::KERNELS` by
// whoever builds the emulator (crates/cells/tests/cuda.rs), so the list has one home.
#define KERNEL(name)                                  \
    if (std::strcmp(kernel, #name) == 0) {            \
        run(&name, grid, block, args);                \
        return 0;                                     \
    }

// The entry point the Rust side calls: 0, or 1 for an unknown kernel name.
extern "C" int rnnlab_emulate(const char* kernel, const unsigned* grid_block, void** args) {
    const dim3 grid{grid_block[0], grid_block[1], grid_block[2]};
    const dim3 block{grid_block[3], grid_block[4], grid_block[5]};
#include "kernel_list.h"
    return 1;
}
