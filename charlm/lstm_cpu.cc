// The LSTM recurrence on a CPU as XLA FFI calls: the forward loop (saving what the backward
// pass needs, or every step's gates and cell state to look inside, or nothing) and the
// backward loop.
//
// They compute what lstm_kernel.py's loops compute (gates i, f, g, o; sigmoid(x) written as
// (1 + tanh(x / 2)) / 2; tanh as XLA:CPU computes it), in float32, time-major:
//   forward:  gx [T, B, 4H], w [H, 4H], c0, h0 [B, H] -> hs [T, B, H], cT, hT [B, H], and when
//             saving for the backward pass also ts [T, B, 4H] (the gates' tanh) and cs [T, B, H]
//             (each step's previous cell state); to look inside, it writes every step's h, new
//             cell state c and gates i, f, g, o into arrays [B, P, H] it is given (forward_into);
//   backward: dhs [T, B, H], ts, cs, cT, dcT, dhT, w -> dzs [T, B, 4H] (the gate gradients),
//             dc0, dh0 [B, H].
// Why not XLA's while loop: on a CPU each of its iterations runs a dozen small operations, each
// with a few microseconds of fixed cost, and the recurrent product goes through a library call
// that repacks its operands every step. Here one call runs the whole loop: the weights are packed
// once, the product and the gate arithmetic of a step run back to back on data in cache. The
// batch rows are independent, so the rows are split over XLA's CPU thread pool and each thread
// runs its rows through every step without waiting for the others.
#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SSE__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v8 __attribute__((vector_size(32)));  // 8 floats: one AVX register.
typedef float v16 __attribute__((vector_size(64)));  // 16 floats: one AVX-512 register.

// The widest vector the CPU computes in, and the product's register blocking: panels of two
// vectors' columns, blocks of at most kMaxRows rows (2 kMaxRows accumulators beside the
// operands: AVX-512 has 32 registers, AVX2 16).
#ifdef __AVX512F__
typedef v16 vec;
constexpr int kMaxRows = 12;
#else
typedef v8 vec;
constexpr int kMaxRows = 6;
#endif
constexpr int kLanes = sizeof(vec) / sizeof(float), kPanel = 2 * kLanes;

template <class V>
inline V Load(const float* p, V) { V v; std::memcpy(&v, p, sizeof v); return v; }
inline float Load(const float* p, float) { return *p; }
template <class V>
inline void Store(float* p, V x) { std::memcpy(p, &x, sizeof x); }
inline void Store(float* p, float x) { *p = x; }

// Store, past the caches where a whole aligned vector goes (for results read only later: the
// line is not fetched first). Needs Fence() before another thread reads it.
template <class V>
inline void StoreStream(float* p, V x) {
  if constexpr (std::is_same_v<V, vec>) {
    if (reinterpret_cast<uintptr_t>(p) % sizeof(vec) == 0) {
#if defined(__AVX512F__)
      _mm512_stream_ps(p, reinterpret_cast<__m512>(x));
      return;
#elif defined(__AVX__)
      _mm256_stream_ps(p, reinterpret_cast<__m256>(x));
      return;
#endif
    }
  }
  Store(p, x);
}

inline void Fence() {
#if defined(__SSE__)
  _mm_sfence();
#endif
}

// f(j, tag) for j = 0, kLanes, ... with a vec tag while kLanes remain, then 8 at a time (v8
// tag), then one at a time (float tag).
template <class F>
inline void ForEach(int64_t n, F f) {
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) f(j, vec{});
  if constexpr (kLanes > 8)
    for (; j + 8 <= n; j += 8) f(j, v8{});
  for (; j < n; ++j) f(j, 0.0f);
}

// tanh as XLA:CPU (and Eigen) computes it: a 13/6 rational function, clamped.
template <class V>
inline V Tanh(V x) {
  const float lim = 7.90531110763549805f;
  x = x < -lim ? -lim + V{} : x;
  x = x > lim ? lim + V{} : x;
  const V x2 = x * x;
  V p = -2.76076847742355e-16f + V{};
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 - 8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  V q = 1.19825839466702e-06f + V{};
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return p * x / q;
}

// The matrix b [k, n] (element (p, j) at b[p * sk + j * sn]) as panels of kPanel columns, each
// [k, kPanel] contiguous and the last padded with zeros: the product reads it in order.
std::vector<float> Pack(const float* b, int64_t k, int64_t n, int64_t sk, int64_t sn) {
  const int64_t panels = (n + kPanel - 1) / kPanel;
  std::vector<float> packed(panels * k * kPanel, 0.0f);
  for (int64_t j = 0; j < panels; ++j)
    for (int64_t p = 0; p < k; ++p)
      for (int64_t c = 0; c < kPanel && kPanel * j + c < n; ++c)
        packed[(j * k + p) * kPanel + c] = b[p * sk + (kPanel * j + c) * sn];
  return packed;
}

// out [R, cols] = init + a [R, k] @ panel [k, cols], cols <= kPanel, in 2R accumulators.
template <int R>
inline void Block(const float* a, int64_t lda, const float* panel, int64_t k, const float* init,
                  int64_t ldi, float* out, int64_t ldo, int64_t cols) {
  vec acc[R][2];
  float edge[kPanel];
  for (int r = 0; r < R; ++r) {
    const float* row = init + r * ldi;
    if (cols < kPanel) {
      for (int c = 0; c < kPanel; ++c) edge[c] = c < cols ? row[c] : 0.0f;
      row = edge;
    }
    acc[r][0] = Load(row, vec{});
    acc[r][1] = Load(row + kLanes, vec{});
  }
  for (int64_t p = 0; p < k; ++p) {
    const vec b0 = Load(panel + kPanel * p, vec{}), b1 = Load(panel + kPanel * p + kLanes, vec{});
    for (int r = 0; r < R; ++r) {
      const float x = a[r * lda + p];
      acc[r][0] += x * b0;
      acc[r][1] += x * b1;
    }
  }
  for (int r = 0; r < R; ++r) {
    float* row = cols < kPanel ? edge : out + r * ldo;
    Store(row, acc[r][0]);
    Store(row + kLanes, acc[r][1]);
    if (cols < kPanel) std::memcpy(out + r * ldo, edge, cols * sizeof(float));
  }
}

// Block<R> for R = 1 .. kMaxRows, indexed by R - 1.
template <int... R>
constexpr auto MakeBlocks(std::integer_sequence<int, R...>) {
  return std::array{&Block<R + 1>...};
}
constexpr auto kBlocks = MakeBlocks(std::make_integer_sequence<int, kMaxRows>{});

// out [m, n] = init [m, n] + a [m, k] @ b [k, n], b packed by Pack; rows at the given strides.
void Gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* packed,
          const float* init, int64_t ldi, float* out, int64_t ldo) {
  for (int64_t j = 0; j < n; j += kPanel) {
    const float* panel = packed + (j / kPanel) * k * kPanel;
    const int64_t cols = std::min<int64_t>(kPanel, n - j);
    for (int64_t r = 0; r < m;) {
      // At most kMaxRows rows, in blocks of even size: 16 rows as 6, 5, 5 rather than 6, 6,
      // 4, whose last block has too few independent sums to keep both FMA units busy
      // (measured: docs/speed.md).
      const int64_t left = m - r, blocks = (left + kMaxRows - 1) / kMaxRows;
      const int64_t rows = (left + blocks - 1) / blocks;
      kBlocks[rows - 1](a + r * lda, lda, panel, k, init + r * ldi + j, ldi, out + r * ldo + j,
                        ldo, cols);
      r += rows;
    }
  }
}

// fn(b0, b1) over the rows [0, B) in one chunk per thread of XLA's pool. The calling thread
// runs every chunk that no pool thread has started: the pool's threads may all be busy (other
// devices' calls run on them too), so waiting for a task that has not started could deadlock.
template <class F>
void ParallelRows(ffi::ThreadPool& pool, int64_t B, F fn) {
  if (B <= 0) return;
  struct Chunks {
    int64_t count, rows;
    std::atomic<int64_t> next{0};
    int64_t done = 0;
    std::mutex mu;
    std::condition_variable all_done;
    F* fn;
    void Run() {
      for (int64_t k; (k = next++) < count;) {
        (*fn)(rows * k / count, rows * (k + 1) / count);
        std::lock_guard<std::mutex> lock(mu);
        if (++done == count) all_done.notify_all();
      }
    }
  };
  auto chunks = std::make_shared<Chunks>();
  chunks->count = std::clamp<int64_t>(pool.num_threads(), 1, B);
  chunks->rows = B;
  chunks->fn = &fn;
  for (int64_t k = 1; k < chunks->count; ++k) pool.Schedule([chunks] { chunks->Run(); });
  chunks->Run();
  std::unique_lock<std::mutex> lock(chunks->mu);
  chunks->all_done.wait(lock, [&] { return chunks->done == chunks->count; });
}

// Where the forward loop writes what each step computed besides hs, for looking inside: h, the
// new cell state c and the gates i, f, g, o (after their sigmoid or tanh), each null or an
// array that holds step t of batch row b at offset + b * per_b + t * per_t (floats), H floats.
struct States {
  float *h = nullptr, *c = nullptr, *i = nullptr, *f = nullptr, *g = nullptr, *o = nullptr;
  int64_t per_b = 0, per_t = 0, offset = 0;
};

// ts and cs are null when not saving for the backward pass.
void Forward(ffi::ThreadPool pool, const float* gx, const float* w, const float* c0,
             const float* h0, int64_t T, int64_t B, int64_t H, float* hs, float* ts, float* cs,
             float* c, float* h_last, States states = {}) {
  const int64_t G = 4 * H;
  const std::vector<float> packed = Pack(w, H, G, G, 1);
  std::memcpy(c, c0, B * H * sizeof(float));
  ParallelRows(pool, B, [&](int64_t b0, int64_t b1) {
    std::vector<float> z((b1 - b0) * G);
    for (int64_t t = 0; t < T; ++t) {
      const float* h = t ? hs + ((t - 1) * B + b0) * H : h0 + b0 * H;
      Gemm(b1 - b0, G, H, h, H, packed.data(), gx + (t * B + b0) * G, G, z.data(), G);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t row = (t * B + b) * H;
        const int64_t at = states.offset + b * states.per_b + t * states.per_t;
        const float* zb = z.data() + (b - b0) * G;
        float* tb = ts ? ts + (t * B + b) * G : z.data() + (b - b0) * G;
        float* cb = c + b * H;
        float* hb = hs + row;
        if (cs) std::memcpy(cs + row, cb, H * sizeof(float));
        for (int k = 0; k < 4; ++k) {
          const float s = k == 2 ? 1.0f : 0.5f;
          ForEach(H, [&](int64_t j, auto v) {
            Store(tb + k * H + j, Tanh(Load(zb + k * H + j, v) * s));
          });
        }
        ForEach(H, [&](int64_t j, auto v) {
          const auto i = 0.5f * Load(tb + j, v) + 0.5f, f = 0.5f * Load(tb + H + j, v) + 0.5f;
          const auto g = Load(tb + 2 * H + j, v), o = 0.5f * Load(tb + 3 * H + j, v) + 0.5f;
          const auto cj = f * Load(cb + j, v) + i * g;
          const auto hj = o * Tanh(cj);
          Store(cb + j, cj);
          Store(hb + j, hj);
          for (auto [out, value] : {std::pair{states.h, hj}, {states.c, cj}, {states.i, i},
                                    {states.f, f}, {states.g, g}, {states.o, o}})
            if (out) StoreStream(out + at + j, value);
        });
      }
    }
    Fence();  // The states streamed past the caches are in memory before the call returns.
  });
  std::memcpy(h_last, T ? hs + (T - 1) * B * H : h0, B * H * sizeof(float));
}

ffi::Error ForwardCall(ffi::Buffer<ffi::F32> gx, ffi::Buffer<ffi::F32> w,
                       ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> h0,
                       ffi::ResultBuffer<ffi::F32> hs, ffi::ResultBuffer<ffi::F32> c,
                       ffi::ResultBuffer<ffi::F32> h, ffi::ThreadPool pool) {
  const auto d = gx.dimensions();
  Forward(pool, gx.typed_data(), w.typed_data(), c0.typed_data(), h0.typed_data(), d[0], d[1],
          d[2] / 4, hs->typed_data(), nullptr, nullptr, c->typed_data(), h->typed_data());
  return ffi::Error::Success();
}

ffi::Error ForwardSavingCall(ffi::Buffer<ffi::F32> gx, ffi::Buffer<ffi::F32> w,
                             ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> h0,
                             ffi::ResultBuffer<ffi::F32> hs, ffi::ResultBuffer<ffi::F32> c,
                             ffi::ResultBuffer<ffi::F32> h, ffi::ResultBuffer<ffi::F32> ts,
                             ffi::ResultBuffer<ffi::F32> cs, ffi::ThreadPool pool) {
  const auto d = gx.dimensions();
  Forward(pool, gx.typed_data(), w.typed_data(), c0.typed_data(), h0.typed_data(), d[0], d[1],
          d[2] / 4, hs->typed_data(), ts->typed_data(), cs->typed_data(), c->typed_data(),
          h->typed_data());
  return ffi::Error::Success();
}

// The forward loop writing every step's states into arrays [B, P, H] the caller passes (and gets
// back, aliased), from step `begin` of each row on: h, c, i, f, g, o, each empty where not
// wanted.
ffi::Error ForwardIntoCall(ffi::Buffer<ffi::F32> gx, ffi::Buffer<ffi::F32> w,
                           ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> h0,
                           ffi::Buffer<ffi::S32> begin, ffi::RemainingArgs,
                           ffi::ResultBuffer<ffi::F32> hs, ffi::ResultBuffer<ffi::F32> c,
                           ffi::ResultBuffer<ffi::F32> h, ffi::RemainingRets into,
                           ffi::ThreadPool pool) {
  const auto d = gx.dimensions();
  const int64_t T = d[0], B = d[1], H = d[2] / 4, at = *begin.typed_data();
  float* out[6] = {};
  int64_t steps = 0;
  if (into.size() != 6) return ffi::Error::InvalidArgument("forward_into takes 6 state arrays");
  for (size_t k = 0; k < 6; ++k) {
    auto buffer = into.get<ffi::AnyBuffer>(k);
    if (buffer.has_error()) return buffer.error();
    const auto dims = (*buffer)->dimensions();
    if ((*buffer)->element_count() == 0) continue;
    if (dims.size() != 3 || dims[0] != B || dims[2] != H || (steps && dims[1] != steps))
      return ffi::Error::InvalidArgument("forward_into: state arrays must be [B, P, H]");
    steps = dims[1];
    out[k] = static_cast<float*>((*buffer)->untyped_data());
  }
  if (at < 0 || at + T > steps && steps)
    return ffi::Error::InvalidArgument("forward_into: begin + T exceeds the state arrays");
  const States states{out[0], out[1], out[2], out[3], out[4], out[5], steps * H, H, at * H};
  Forward(pool, gx.typed_data(), w.typed_data(), c0.typed_data(), h0.typed_data(), T, B, H,
          hs->typed_data(), nullptr, nullptr, c->typed_data(), h->typed_data(), states);
  return ffi::Error::Success();
}

ffi::Error BackwardCall(ffi::Buffer<ffi::F32> dhs_buf, ffi::Buffer<ffi::F32> ts_buf,
                        ffi::Buffer<ffi::F32> cs_buf, ffi::Buffer<ffi::F32> c_last,
                        ffi::Buffer<ffi::F32> dc_last, ffi::Buffer<ffi::F32> dh_last,
                        ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dzs_buf,
                        ffi::ResultBuffer<ffi::F32> dc0, ffi::ResultBuffer<ffi::F32> dh0,
                        ffi::ThreadPool pool) {
  const auto d = ts_buf.dimensions();
  const int64_t T = d[0], B = d[1], G = d[2], H = G / 4;
  const float *dhs = dhs_buf.typed_data(), *ts = ts_buf.typed_data(), *cs = cs_buf.typed_data();
  float* dzs = dzs_buf->typed_data();
  float *dh = dh0->typed_data(), *dc = dc0->typed_data();
  const std::vector<float> packed = Pack(w.typed_data(), G, H, 1, G);  // w^T [4H, H]
  const std::vector<float> zero(B * H, 0.0f);
  std::memcpy(dh, dh_last.typed_data(), B * H * sizeof(float));
  std::memcpy(dc, dc_last.typed_data(), B * H * sizeof(float));
  ParallelRows(pool, B, [&](int64_t b0, int64_t b1) {
    for (int64_t t = T - 1; t >= 0; --t) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t tb = t * B + b;
        const float *ti = ts + tb * G, *tf = ti + H, *tg = ti + 2 * H, *to = ti + 3 * H;
        const float* c_prev = cs + tb * H;
        const float* c = t == T - 1 ? c_last.typed_data() + b * H : cs + (tb + B) * H;
        const float* dh_out = dhs + tb * H;
        float* dz = dzs + tb * G;
        float *dhb = dh + b * H, *dcb = dc + b * H;
        ForEach(H, [&](int64_t j, auto v) {
          const auto i = Load(ti + j, v), f = Load(tf + j, v);
          const auto g = Load(tg + j, v), o = Load(to + j, v);
          const auto dh_j = Load(dhb + j, v) + Load(dh_out + j, v);
          const auto tc = Tanh(Load(c + j, v));
          const auto dc_j = Load(dcb + j, v) + dh_j * (0.5f * o + 0.5f) * (1.0f - tc * tc);
          // d/dz of tanh(s z) s + 1 - s is s^2 (1 - tanh^2): s = 1/2 but for the g gate.
          Store(dz + j, dc_j * g * 0.25f * (1.0f - i * i));
          Store(dz + H + j, dc_j * Load(c_prev + j, v) * 0.25f * (1.0f - f * f));
          Store(dz + 2 * H + j, dc_j * (0.5f * i + 0.5f) * (1.0f - g * g));
          Store(dz + 3 * H + j, dh_j * tc * 0.25f * (1.0f - o * o));
          Store(dcb + j, dc_j * (0.5f * f + 0.5f));
        });
      }
      Gemm(b1 - b0, H, G, dzs + (t * B + b0) * G, G, packed.data(), zero.data(), H, dh + b0 * H,
           H);
    }
  });
  return ffi::Error::Success();
}

// Leaves its result as XLA allocated it, unwritten: arrays that forward_into will fill, without
// a pass that writes zeros first.
ffi::Error UnwrittenCall(ffi::Result<ffi::AnyBuffer>) { return ffi::Error::Success(); }

using F32 = ffi::Buffer<ffi::F32>;

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    CharlmLstmForward, ForwardCall,
    ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
        .Ret<F32>().Ret<F32>().Ret<F32>().Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    CharlmLstmForwardSaving, ForwardSavingCall,
    ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
        .Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>().Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    CharlmLstmForwardInto, ForwardIntoCall,
    ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<ffi::Buffer<ffi::S32>>()
        .RemainingArgs().Ret<F32>().Ret<F32>().Ret<F32>().RemainingRets()
        .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CharlmUnwritten, UnwrittenCall,
                              ffi::Ffi::Bind().Ret<ffi::AnyBuffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    CharlmLstmBackward, BackwardCall,
    ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
        .Ret<F32>().Ret<F32>().Ret<F32>().Ctx<ffi::ThreadPool>());
