// Runs .pte or .ptl models on the emulated target natively, through their runtimes' C++ APIs: the
// ExecuTorch runtime (Program, Method) of the aarch64 executorch wheel, or the lite interpreter
// (_load_for_mobile) of the aarch64 torch wheel, the calls a phone app makes. No Python: under QEMU,
// importing torch in Python took 34 s of the 45 s a Python runner needed before its first inference.
// Built twice by edgeq.qemu.native, with -DEDGEQ_PTE or -DEDGEQ_PTL.
//
//   model_run INPUTS.f32 COUNT WARMUP RUNS THREADS ENGINE DIM... -- MODEL OUTPUTS.f32 [MODEL OUTPUTS.f32]...
//
// INPUTS.f32: COUNT float32 inputs of shape DIM..., back to back. Each MODEL loads once, runs every
// input (its outputs to OUTPUTS.f32; "-" for none), then WARMUP + RUNS more times on the first input,
// timing the RUNS. stdout: "machine M", "startup_s S" (process start to main: the libraries'
// loading), "cpuinfo LINE" per line of /proc/cpuinfo, then per model i
// "model i load_ms X", "model i outputs K" (floats per input), "model i latency_ms T...", and
// "rss_mb X". A refusal prints "model i error WHAT" and exits 2.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <vector>

#if defined(EDGEQ_PTE)
#include <executorch/extension/data_loader/file_data_loader.h>
#include <executorch/runtime/executor/method.h>
#include <executorch/runtime/executor/program.h>
#include <executorch/runtime/platform/runtime.h>
using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::aten::TensorImpl;
using executorch::extension::FileDataLoader;
using namespace executorch::runtime;
// extension/threadpool/threadpool.h, which the wheel's headers leave out; libexecutorch_threadpool.so
// exports both.
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool *get_threadpool();
}  // namespace executorch::extension::threadpool
#elif defined(EDGEQ_PTL)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/jit/mobile/import.h>
#include <torch/csrc/jit/mobile/module.h>
#else
#error "build with -DEDGEQ_PTE or -DEDGEQ_PTL"
#endif

static double now_ms() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

// Straight out: the runtimes' static destructors (thread pools) are not what is under test.
[[noreturn]] static void finish(int code) {
  fflush(stdout);
  fflush(stderr);
  _exit(code);
}

[[noreturn]] static void refuse(int model, const char *what) {
  printf("model %d error %s\n", model, what);
  finish(2);
}

struct Run {
  FILE *out;
  int model;
  long count, warmup, runs;
  const float *inputs;
  size_t numel;
  std::vector<double> latencies;
};

#if defined(EDGEQ_PTE)
// One model: the planned buffers at the sizes the .pte asks for, a pool for the method itself.
static void run_model(const char *path, Run &r, const std::vector<int32_t> &dims, int threads, const char *) {
  static bool initialised = false;
  if (!initialised) {
    runtime_init();
    executorch::extension::threadpool::get_threadpool()->_unsafe_reset_threadpool(threads);
    initialised = true;
  }
  double start = now_ms();
  Result<FileDataLoader> loader = FileDataLoader::from(path);
  if (!loader.ok()) refuse(r.model, "open");
  Result<Program> program = Program::load(&loader.get(), Program::Verification::InternalConsistency);
  if (!program.ok()) refuse(r.model, "program");
  Result<MethodMeta> meta = program->method_meta("forward");
  if (!meta.ok()) refuse(r.model, "method_meta");
  size_t planned_count = meta->num_memory_planned_buffers();
  Span<uint8_t> *planned = (Span<uint8_t> *)calloc(planned_count + 1, sizeof(Span<uint8_t>));
  for (size_t i = 0; i < planned_count; ++i) {
    int64_t size = meta->memory_planned_buffer_size(i).get();
    planned[i] = Span<uint8_t>((uint8_t *)calloc(size ? size : 1, 1), (size_t)size);
  }
  HierarchicalAllocator *planned_memory = new HierarchicalAllocator({planned, planned_count});
  const uint32_t pool_size = 256u << 20, temp_size = 64u << 20;
  MemoryAllocator *method_allocator = new MemoryAllocator(pool_size, (uint8_t *)malloc(pool_size));
  MemoryAllocator *temp_allocator = new MemoryAllocator(temp_size, (uint8_t *)malloc(temp_size));
  MemoryManager *memory = new MemoryManager(method_allocator, planned_memory, temp_allocator);
  Result<Method> method = program->load_method("forward", memory);
  if (!method.ok()) refuse(r.model, "load_method");
  printf("model %d load_ms %.2f\n", r.model, now_ms() - start);
  if (method->inputs_size() != 1) refuse(r.model, "inputs");
  std::vector<int32_t> sizes(dims), strides(dims.size());
  std::vector<uint8_t> dim_order(dims.size());
  for (size_t d = dims.size(); d-- > 0;) {
    strides[d] = d + 1 == dims.size() ? 1 : strides[d + 1] * sizes[d + 1];
    dim_order[d] = (uint8_t)d;
  }
  long total = r.count + r.warmup + r.runs;
  for (long n = 0; n < total; ++n) {
    const float *x = r.inputs + (n < r.count ? n : 0) * r.numel;
    TensorImpl impl(ScalarType::Float, (ssize_t)dims.size(), sizes.data(), (void *)x, dim_order.data(),
                    strides.data());
    if (method->set_input(EValue(Tensor(&impl)), 0) != Error::Ok) refuse(r.model, "set_input");
    double t = now_ms();
    if (method->execute() != Error::Ok) refuse(r.model, "execute");
    double ms = now_ms() - t;
    const EValue &result = method->get_output(0);
    if (!result.isTensor() || result.toTensor().scalar_type() != ScalarType::Float) refuse(r.model, "output");
    const Tensor &y = result.toTensor();
    if (n < r.count) {
      if (n == 0) printf("model %d outputs %zd\n", r.model, (ssize_t)y.numel());
      if (r.out) fwrite(y.const_data_ptr<float>(), sizeof(float), y.numel(), r.out);
    } else if (n >= r.count + r.warmup) {
      r.latencies.push_back(ms);
    }
  }
}
#else
static void run_model(const char *path, Run &r, const std::vector<int32_t> &dims, int threads, const char *engine) {
  // torch's quantized engine: weights are repacked at load for it, and on aarch64 the default has no
  // arm kernels.
  at::globalContext().setQEngine(strcmp(engine, "x86") == 0 ? at::QEngine::X86 : at::QEngine::QNNPACK);
  at::set_num_threads(threads);
  double start = now_ms();
  torch::jit::mobile::Module module;
  try {
    module = torch::jit::_load_for_mobile(path);
  } catch (const std::exception &e) {
    fprintf(stderr, "%s\n", e.what());
    refuse(r.model, "load");
  }
  printf("model %d load_ms %.2f\n", r.model, now_ms() - start);
  std::vector<int64_t> shape(dims.begin(), dims.end());
  long total = r.count + r.warmup + r.runs;
  for (long n = 0; n < total; ++n) {
    float *x = (float *)r.inputs + (n < r.count ? n : 0) * r.numel;
    std::vector<c10::IValue> args{at::from_blob(x, shape, at::kFloat)};
    double t = now_ms();
    at::Tensor y;
    try {
      c10::InferenceMode guard;
      y = module.forward(args).toTensor().contiguous();
    } catch (const std::exception &e) {
      fprintf(stderr, "%s\n", e.what());
      refuse(r.model, "execute");
    }
    double ms = now_ms() - t;
    if (y.scalar_type() != at::kFloat) refuse(r.model, "output");
    if (n < r.count) {
      if (n == 0) printf("model %d outputs %lld\n", r.model, (long long)y.numel());
      if (r.out) fwrite(y.const_data_ptr<float>(), sizeof(float), y.numel(), r.out);
    } else if (n >= r.count + r.warmup) {
      r.latencies.push_back(ms);
    }
  }
}
#endif

// Seconds since this process started, from the kernel's clock (10 ms ticks).
static double since_start_s() {
  FILE *stat = fopen("/proc/self/stat", "r"), *uptime = fopen("/proc/uptime", "r");
  char text[1024];
  double up = -1, started = -1;
  if (stat && fgets(text, sizeof text, stat)) {
    const char *p = strrchr(text, ')');  // the command name may hold spaces; fields follow it
    unsigned long long ticks = 0;
    for (int field = 2; p && field < 22; ++field) p = strchr(p + 1, ' ');
    if (p && sscanf(p + 1, "%llu", &ticks) == 1) started = (double)ticks / sysconf(_SC_CLK_TCK);
  }
  if (uptime && fscanf(uptime, "%lf", &up) != 1) up = -1;
  if (stat) fclose(stat);
  if (uptime) fclose(uptime);
  return up >= 0 && started >= 0 ? up - started : -1;
}

int main(int argc, char **argv) {
  double startup_s = since_start_s();
  prctl(PR_SET_PDEATHSIG, SIGKILL);  // gone with edgeq: an orphan under QEMU would run on
  int sep = 1;
  while (sep < argc && strcmp(argv[sep], "--") != 0) ++sep;
  if (sep < 8 || sep == argc || (argc - sep - 1) % 2 != 0) {
    fprintf(stderr, "usage: model_run INPUTS.f32 COUNT WARMUP RUNS THREADS ENGINE DIM... -- MODEL OUTPUTS.f32...\n");
    return 64;
  }
  long count = atol(argv[2]), warmup = atol(argv[3]), runs = atol(argv[4]);
  int threads = atoi(argv[5]);
  std::vector<int32_t> dims;
  size_t numel = 1;
  for (int i = 7; i < sep; ++i) {
    dims.push_back(atoi(argv[i]));
    numel *= (size_t)dims.back();
  }
  utsname uts;
  printf("machine %s\nstartup_s %.2f\n", uname(&uts) == 0 ? uts.machine : "unknown", startup_s);
  FILE *cpuinfo = fopen("/proc/cpuinfo", "r");
  char line[512];
  while (cpuinfo && fgets(line, sizeof line, cpuinfo)) printf("cpuinfo %s", line);
  if (cpuinfo) fclose(cpuinfo);

  size_t have = count > 0 ? count : 1;  // the timed runs use the first input
  std::vector<float> inputs(numel * have);
  FILE *in = fopen(argv[1], "rb");
  if (!in || fread(inputs.data(), sizeof(float), numel * have, in) != numel * have) {
    fprintf(stderr, "model_run: %s holds fewer than %zu inputs\n", argv[1], have);
    finish(66);
  }
  fclose(in);
  for (int m = 0; sep + 1 + 2 * m < argc; ++m) {
    const char *model = argv[sep + 1 + 2 * m], *outputs = argv[sep + 2 + 2 * m];
    Run r{strcmp(outputs, "-") ? fopen(outputs, "wb") : nullptr, m, count, warmup, runs, inputs.data(), numel, {}};
    if (strcmp(outputs, "-") && !r.out) {
      fprintf(stderr, "model_run: cannot write %s\n", outputs);
      finish(73);
    }
    run_model(model, r, dims, threads, argv[6]);
    if (r.out) fclose(r.out);
    printf("model %d latency_ms", m);
    for (double t : r.latencies) printf(" %.4f", t);
    printf("\n");
    fflush(stdout);
  }
  rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  printf("rss_mb %.1f\n", usage.ru_maxrss / 1024.0);
  finish(0);
}
