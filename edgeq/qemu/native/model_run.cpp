// Runs .pte or .ptl models on the emulated target natively, through their runtimes' C++ APIs: the
// ExecuTorch runtime (Program, Method) of the aarch64 executorch wheel, or the lite interpreter
// (_load_for_mobile) of the aarch64 torch wheel, the calls a phone app makes. No Python: under QEMU,
// importing torch in Python took 34 s of the 45 s a Python runner needed before its first inference.
// Built twice by edgeq.qemu.native, with -DEDGEQ_PTE or -DEDGEQ_PTL.
//
//   model_run COUNT WARMUP RUNS THREADS ENGINE INPUT... -- MODEL OUTPUTS.f32 [MODEL OUTPUTS.f32]...
//
// INPUT: FILE:DTYPE:D0xD1x... for each of the model's inputs in order: FILE holds COUNT samples of
// shape D0xD1x... (the batch of one first) back to back, DTYPE f32, i64, i32, u8 or b8 (bool).
// Each MODEL loads once, runs every sample (every output of each, float32, back to back, to
// OUTPUTS.f32; "-" for none), then WARMUP + RUNS more times on the first sample, timing the RUNS.
// stdout: "machine M", "startup_s S" (process start to main: the libraries' loading), "cpuinfo
// LINE" per line of /proc/cpuinfo, then per model i "model i load_ms X", "model i outputs K..."
// (floats per sample of each output), "model i latency_ms T...", and "rss_mb X". A refusal prints
// "model i error WHAT" and exits 2.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <deque>
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

// One input of the model: every sample's bytes, its element type and its shape (batch of one first).
struct Input {
  char dtype[4];
  std::vector<int32_t> dims;
  size_t bytes;  // per sample
  std::vector<uint8_t> data;
  const void *sample(long n) const { return data.data() + n * bytes; }
};

struct Run {
  FILE *out;
  int model;
  long count, warmup, runs;
  const std::vector<Input> *inputs;
  std::vector<double> latencies;

  // Outputs of sample n (the first sample again for warm-up and timed runs): counted at the first,
  // written while there are samples, timed after the warm-up.
  void record(long n, const std::vector<const float *> &data, const std::vector<size_t> &sizes, double ms) {
    if (n < count) {
      if (n == 0) {
        printf("model %d outputs", model);
        for (size_t k : sizes) printf(" %zu", k);
        printf("\n");
      }
      for (size_t i = 0; out && i < data.size(); ++i) fwrite(data[i], sizeof(float), sizes[i], out);
    } else if (n >= count + warmup) {
      latencies.push_back(ms);
    }
  }
};

static size_t element_bytes(const char *dtype) {
  if (!strcmp(dtype, "f32") || !strcmp(dtype, "i32")) return 4;
  if (!strcmp(dtype, "i64")) return 8;
  if (!strcmp(dtype, "u8") || !strcmp(dtype, "b8")) return 1;
  return 0;
}

#if defined(EDGEQ_PTE)
// One model: the planned buffers at the sizes the .pte asks for, a pool for the method itself.
static ScalarType scalar_type(const char *dtype) {
  if (!strcmp(dtype, "i64")) return ScalarType::Long;
  if (!strcmp(dtype, "i32")) return ScalarType::Int;
  if (!strcmp(dtype, "u8")) return ScalarType::Byte;
  if (!strcmp(dtype, "b8")) return ScalarType::Bool;
  return ScalarType::Float;
}

static void run_model(const char *path, Run &r, int threads, const char *) {
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
  const std::vector<Input> &inputs = *r.inputs;
  if (method->inputs_size() != inputs.size()) refuse(r.model, "inputs");
  // Contiguous strides and the default dim order of each input (the tensors are views of the samples).
  std::vector<std::vector<int32_t>> sizes, strides;
  std::vector<std::vector<uint8_t>> dim_orders;
  for (const Input &in : inputs) {
    size_t rank = in.dims.size();
    sizes.push_back(in.dims);
    strides.emplace_back(rank);
    dim_orders.emplace_back(rank);
    for (size_t d = rank; d-- > 0;) {
      strides.back()[d] = d + 1 == rank ? 1 : strides.back()[d + 1] * in.dims[d + 1];
      dim_orders.back()[d] = (uint8_t)d;
    }
  }
  long total = r.count + r.warmup + r.runs;
  for (long n = 0; n < total; ++n) {
    std::deque<TensorImpl> impls;  // a deque: the tensors point at them, and they never move
    for (size_t i = 0; i < inputs.size(); ++i) {
      impls.emplace_back(scalar_type(inputs[i].dtype), (ssize_t)sizes[i].size(), sizes[i].data(),
                         (void *)inputs[i].sample(n < r.count ? n : 0), dim_orders[i].data(), strides[i].data());
      if (method->set_input(EValue(Tensor(&impls.back())), i) != Error::Ok) refuse(r.model, "set_input");
    }
    double t = now_ms();
    if (method->execute() != Error::Ok) refuse(r.model, "execute");
    double ms = now_ms() - t;
    std::vector<const float *> data;
    std::vector<size_t> counts;
    for (size_t o = 0; o < method->outputs_size(); ++o) {
      const EValue &result = method->get_output(o);
      if (!result.isTensor() || result.toTensor().scalar_type() != ScalarType::Float) refuse(r.model, "output");
      data.push_back(result.toTensor().const_data_ptr<float>());
      counts.push_back((size_t)result.toTensor().numel());
    }
    r.record(n, data, counts, ms);
  }
}
#else
static at::ScalarType scalar_type(const char *dtype) {
  if (!strcmp(dtype, "i64")) return at::kLong;
  if (!strcmp(dtype, "i32")) return at::kInt;
  if (!strcmp(dtype, "u8")) return at::kByte;
  if (!strcmp(dtype, "b8")) return at::kBool;
  return at::kFloat;
}

static void run_model(const char *path, Run &r, int threads, const char *engine) {
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
  const std::vector<Input> &inputs = *r.inputs;
  long total = r.count + r.warmup + r.runs;
  for (long n = 0; n < total; ++n) {
    std::vector<c10::IValue> args;
    for (const Input &in : inputs)
      args.emplace_back(at::from_blob((void *)in.sample(n < r.count ? n : 0),
                                      std::vector<int64_t>(in.dims.begin(), in.dims.end()), scalar_type(in.dtype)));
    double t = now_ms();
    std::vector<at::Tensor> ys;
    try {
      c10::InferenceMode guard;
      c10::IValue out = module.forward(args);
      if (out.isTuple()) {
        for (const c10::IValue &item : out.toTupleRef().elements()) ys.push_back(item.toTensor().contiguous());
      } else {
        ys.push_back(out.toTensor().contiguous());
      }
    } catch (const std::exception &e) {
      fprintf(stderr, "%s\n", e.what());
      refuse(r.model, "execute");
    }
    double ms = now_ms() - t;
    std::vector<const float *> data;
    std::vector<size_t> counts;
    for (const at::Tensor &y : ys) {
      if (y.scalar_type() != at::kFloat) refuse(r.model, "output");
      data.push_back(y.const_data_ptr<float>());
      counts.push_back((size_t)y.numel());
    }
    r.record(n, data, counts, ms);
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
  if (sep < 7 || sep == argc || (argc - sep - 1) % 2 != 0) {
    fprintf(stderr, "usage: model_run COUNT WARMUP RUNS THREADS ENGINE FILE:DTYPE:DIMS... -- MODEL OUTPUTS.f32...\n");
    return 64;
  }
  long count = atol(argv[1]), warmup = atol(argv[2]), runs = atol(argv[3]);
  int threads = atoi(argv[4]);
  utsname uts;
  printf("machine %s\nstartup_s %.2f\n", uname(&uts) == 0 ? uts.machine : "unknown", startup_s);
  FILE *cpuinfo = fopen("/proc/cpuinfo", "r");
  char line[512];
  while (cpuinfo && fgets(line, sizeof line, cpuinfo)) printf("cpuinfo %s", line);
  if (cpuinfo) fclose(cpuinfo);

  long have = count > 0 ? count : 1;  // the timed runs use the first sample
  std::vector<Input> inputs;
  for (int i = 6; i < sep; ++i) {  // FILE:DTYPE:D0xD1x...
    char *spec = argv[i], *dims = strrchr(spec, ':'), *dtype = nullptr;  // from the end: FILE may hold ':'
    if (dims) {
      *dims = 0;
      dtype = strrchr(spec, ':');
    }
    if (!dtype || dims - dtype - 1 >= 4) {
      fprintf(stderr, "model_run: input %s is not FILE:DTYPE:DIMS\n", spec);
      finish(64);
    }
    *dtype++ = 0;
    ++dims;
    Input in{};
    strcpy(in.dtype, dtype);
    in.bytes = element_bytes(dtype);
    for (char *d = dims; *d; d += strcspn(d, "x") + (d[strcspn(d, "x")] ? 1 : 0)) {
      in.dims.push_back(atoi(d));
      in.bytes *= (size_t)in.dims.back();
    }
    in.data.resize(in.bytes * have);
    FILE *f = fopen(spec, "rb");
    if (!in.bytes || !f || fread(in.data.data(), 1, in.data.size(), f) != in.data.size()) {
      fprintf(stderr, "model_run: %s holds fewer than %ld %s samples\n", spec, have, dtype);
      finish(66);
    }
    fclose(f);
    inputs.push_back(std::move(in));
  }
  for (int m = 0; sep + 1 + 2 * m < argc; ++m) {
    const char *model = argv[sep + 1 + 2 * m], *outputs = argv[sep + 2 + 2 * m];
    Run r{strcmp(outputs, "-") ? fopen(outputs, "wb") : nullptr, m, count, warmup, runs, &inputs, {}};
    if (strcmp(outputs, "-") && !r.out) {
      fprintf(stderr, "model_run: cannot write %s\n", outputs);
      finish(73);
    }
    run_model(model, r, threads, argv[5]);
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
