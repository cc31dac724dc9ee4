// Runs a .pte with an ExecuTorch runtime library through its C++ API (Program, Method), the
// calls the runtime's own Java Module makes beneath JNI: one load, then one forward per input.
//
//   pte_check MODEL.pte INPUTS.f32 COUNT OUTPUTS.f32
//
// INPUTS.f32 holds COUNT float32 inputs of the method's input shape, back to back; OUTPUTS.f32
// gets the COUNT float32 outputs. stdout gets one "key value..." line per fact (shapes, times);
// a refusal prints "error STAGE CODE" and exits 2. The runtime's own log lines go to stderr.
#include <executorch/extension/data_loader/file_data_loader.h>
#include <executorch/runtime/executor/method.h>
#include <executorch/runtime/executor/program.h>
#include <executorch/runtime/platform/runtime.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::aten::TensorImpl;
using executorch::extension::FileDataLoader;
using namespace executorch::runtime;

// Built against the compiler's libc++ headers in the NDK's namespace (std::__ndk1), so that the
// library's exported templates match; the one libc++ function those headers need and the
// runtime's older libc++ lacks is defined here.
namespace std {
inline namespace __ndk1 {
[[noreturn]] void __libcpp_verbose_abort(const char *format, ...) noexcept {
  va_list args;
  va_start(args, format);
  vfprintf(stderr, format, args);
  abort();
}
}  // namespace __ndk1
}  // namespace std

// Straight out, always: tearing down a runtime built for bionic on glibc (its thread pool's static
// destructors) is not what is under test, and crashes.
[[noreturn]] static void finish(int code) {
  fflush(stdout);
  fflush(stderr);
  _exit(code);
}

[[noreturn]] static void refuse(const char *stage, Error error) {
  printf("error %s 0x%x\n", stage, (unsigned)error);
  finish(2);
}

static double now_ms() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: pte_check MODEL.pte INPUTS.f32 COUNT OUTPUTS.f32\n");
    return 64;
  }
  long count = atol(argv[3]);
  runtime_init();
  double start = now_ms();
  Result<FileDataLoader> loader = FileDataLoader::from(argv[1]);
  if (!loader.ok()) refuse("open", loader.error());
  Result<Program> program = Program::load(&loader.get(), Program::Verification::InternalConsistency);
  if (!program.ok()) refuse("program", program.error());
  Result<MethodMeta> meta = program->method_meta("forward");
  if (!meta.ok()) refuse("method_meta", meta.error());

  // Memory: the planned buffers at the sizes the .pte asks for, and a pool for the method itself.
  size_t planned_count = meta->num_memory_planned_buffers();
  Span<uint8_t> *planned = (Span<uint8_t> *)calloc(planned_count + 1, sizeof(Span<uint8_t>));
  for (size_t i = 0; i < planned_count; ++i) {
    int64_t size = meta->memory_planned_buffer_size(i).get();
    planned[i] = Span<uint8_t>((uint8_t *)calloc(size ? size : 1, 1), (size_t)size);
  }
  HierarchicalAllocator planned_memory({planned, planned_count});
  const uint32_t pool_size = 256u << 20, temp_size = 64u << 20;
  MemoryAllocator method_allocator(pool_size, (uint8_t *)malloc(pool_size));
  MemoryAllocator temp_allocator(temp_size, (uint8_t *)malloc(temp_size));
  MemoryManager memory(&method_allocator, &planned_memory, &temp_allocator);
  Result<Method> method = program->load_method("forward", &memory);
  if (!method.ok()) refuse("load_method", method.error());
  printf("load_ms %.1f\n", now_ms() - start);

  if (method->inputs_size() != 1 || meta->input_tag(0).get() != Tag::Tensor)
    refuse("inputs", Error::InvalidProgram);
  auto input = meta->input_tensor_meta(0).get();
  if (input.scalar_type() != ScalarType::Float) refuse("input_dtype", Error::InvalidProgram);
  int32_t sizes[16], strides[16];
  uint8_t dim_order[16];
  size_t dims = input.sizes().size(), numel = 1;
  if (dims > 16) refuse("input_rank", Error::InvalidProgram);
  printf("input");
  for (size_t d = 0; d < dims; ++d) {
    sizes[d] = input.sizes()[d];
    dim_order[d] = (uint8_t)d;
    numel *= (size_t)sizes[d];
    printf(" %d", sizes[d]);
  }
  printf("\n");
  for (size_t d = dims; d-- > 0;) strides[d] = d + 1 == dims ? 1 : strides[d + 1] * sizes[d + 1];

  FILE *in = fopen(argv[2], "rb"), *out = fopen(argv[4], "wb");
  if (!in || !out) {
    fprintf(stderr, "pte_check: cannot open %s or %s\n", argv[2], argv[4]);
    finish(66);
  }
  float *x = (float *)malloc(numel * sizeof(float));
  for (long n = 0; n < count; ++n) {
    if (fread(x, sizeof(float), numel, in) != numel) {
      fprintf(stderr, "pte_check: %s holds fewer than %ld inputs\n", argv[2], count);
      finish(66);
    }
    TensorImpl impl(ScalarType::Float, (ssize_t)dims, sizes, x, dim_order, strides);
    Error error = method->set_input(EValue(Tensor(&impl)), 0);
    if (error != Error::Ok) refuse("set_input", error);
    double t = now_ms();
    error = method->execute();
    if (error != Error::Ok) refuse("execute", error);
    double ms = now_ms() - t;
    const EValue &result = method->get_output(0);
    if (!result.isTensor() || result.toTensor().scalar_type() != ScalarType::Float)
      refuse("output", Error::InvalidProgram);
    const Tensor &y = result.toTensor();
    fwrite(y.const_data_ptr<float>(), sizeof(float), y.numel(), out);
    printf("sample %ld outputs %zd execute_ms %.2f\n", n, (ssize_t)y.numel(), ms);
  }
  fclose(out);
  finish(0);
}
