// Binning and per-pixel 2DGS compositing over tiles, forward and backward: the compiled half of the torch backend.
//
// Built and loaded by kernel.py (plain C ABI through ctypes; no torch headers). Semantics are rasterize.py's
// (gsplat's): per pixel centre p and surfel features f (row-major (S, F), F = 16 + C, as composite.pack):
//   c = p_x·P_0 + p_y·P_1 + P_2 (P_r = f[3r .. 3r+2]), ρ_3d = (c_x² + c_y²)/c_z², ρ_2d = 2|p − μ|²,
//   α = min(0.999, o·exp(−½·min(ρ_3d, ρ_2d))), skipped when α < 1/255 or c_z² is not a normal number;
//   front to back, stop before the pair that would bring T to ≤ 1e-4.
// The backward pass is fused.py's (its docstring derives it): a tile re-runs its forward sweep, keeping α, T and
// the prefix Σ w·z of each pixel's composited pairs, then walks each pixel's pairs back to front with the
// suffix sums.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <thread>
#include <vector>

namespace {

constexpr double kAlphaMax = 0.999, kAlphaMin = 1.0 / 255.0, kTransmittanceMin = 1e-4;
constexpr int kFeatures = 16;  // planes 9, centre 2, opacity, depth, normal 3; colours follow

struct Grid {
  int64_t batch, width, height, tile, tiles_x, tiles_y, channels;
  int64_t features() const { return kFeatures + channels; }
  int64_t tiles() const { return batch * tiles_x * tiles_y; }
};

template <typename T>
struct Pair {
  T cx, cy, cz, rho3d, dx, dy, rho2d, falloff, raw, alpha;
};

template <typename T>
inline bool evaluate(const T* f, T px, T py, Pair<T>& q) {
  q.cx = px * f[0] + py * f[3] + f[6];
  q.cy = px * f[1] + py * f[4] + f[7];
  q.cz = px * f[2] + py * f[5] + f[8];
  const T cz2 = q.cz * q.cz;
  if (!(cz2 >= std::numeric_limits<T>::min())) return false;
  q.rho3d = (q.cx * q.cx + q.cy * q.cy) / cz2;
  q.dx = px - f[9];
  q.dy = py - f[10];
  q.rho2d = T(2) * (q.dx * q.dx + q.dy * q.dy);
  q.falloff = std::exp(T(-0.5) * std::min(q.rho3d, q.rho2d));
  q.raw = f[11] * q.falloff;
  q.alpha = std::min(q.raw, T(kAlphaMax));
  return q.alpha >= T(kAlphaMin);
}

// Runs body(tile, worker) over all tiles on `threads` threads (blocks of tiles taken from a shared counter).
template <typename Body>
void parallel_tiles(int64_t tiles, int threads, Body body) {
  constexpr int64_t kBlock = 8;
  std::atomic<int64_t> next{0};
  auto work = [&](int worker) {
    for (int64_t first; (first = next.fetch_add(kBlock)) < tiles;)
      for (int64_t t = first; t < std::min(first + kBlock, tiles); ++t) body(t, worker);
  };
  std::vector<std::thread> pool;
  for (int w = 1; w < threads; ++w) pool.emplace_back(work, w);
  work(0);
  for (auto& thread : pool) thread.join();
}

// One tile's pixels inside the image (flat index (b,y,x), centre) and their compositing state.
template <typename T>
struct TilePixels {
  std::vector<int64_t> index;
  std::vector<T> px, py, t;  // centres, transmittance
  std::vector<unsigned char> near, done;

  void fill(const Grid& g, int64_t tile) {
    index.clear(), px.clear(), py.clear();
    const int64_t per_image = g.tiles_x * g.tiles_y, b = tile / per_image, row = (tile % per_image) / g.tiles_x;
    const int64_t col = tile % g.tiles_x;
    for (int64_t y = row * g.tile; y < std::min((row + 1) * g.tile, g.height); ++y)
      for (int64_t x = col * g.tile; x < std::min((col + 1) * g.tile, g.width); ++x) {
        index.push_back((b * g.height + y) * g.width + x);
        px.push_back(T(x) + T(0.5));
        py.push_back(T(y) + T(0.5));
      }
    t.assign(index.size(), T(1));
    near.assign(index.size(), 0);
    done.assign(index.size(), 0);
  }
};

// Front to back over a tile's list [begin, end), all its pixels in step: visit(p, f, surfel, pair, T before) for
// every composited pair of pixel p, whose transmittance then moves on. Each surfel's pixels are first screened
// by min(ρ_3d, ρ_2d) ≤ 2·(1.01·ln(255·o) + 1e-6) without exp or division (a loop the compiler vectorises;
// α ≥ 1/255 needs σ ≤ ln(255·o)); only those are evaluated exactly. The sweep ends when every pixel is done.
template <typename T, typename Visit>
void sweep(const T* features, int64_t nf, const int64_t* begin, const int64_t* end, TilePixels<T>& tp,
           Visit visit) {
  const int64_t n = static_cast<int64_t>(tp.index.size());
  const T *px = tp.px.data(), *py = tp.py.data();
  T* t = tp.t.data();
  unsigned char *near = tp.near.data(), *done = tp.done.data();
  int64_t active = n;
  Pair<T> q;
  for (const int64_t* k = begin; k != end && active > 0; ++k) {
    const T* f = features + *k * nf;
    if (!(f[11] * T(255) > T(1))) continue;  // o ≤ 1/255: α < 1/255 everywhere
    const T level = T(2) * (T(1.01) * std::log(f[11] * T(255)) + T(1e-6));
    for (int64_t p = 0; p < n; ++p) {
      const T cx = px[p] * f[0] + py[p] * f[3] + f[6], cy = px[p] * f[1] + py[p] * f[4] + f[7];
      const T cz = px[p] * f[2] + py[p] * f[5] + f[8], dx = px[p] - f[9], dy = py[p] - f[10];
      near[p] = (cx * cx + cy * cy <= level * cz * cz) | (T(2) * (dx * dx + dy * dy) <= level);
    }
    for (int64_t p = 0; p < n; ++p) {
      if (!near[p] || done[p] || !evaluate(f, px[p], py[p], q)) continue;
      const T next = t[p] * (T(1) - q.alpha);
      if (next <= T(kTransmittanceMin)) {  // this pair is excluded and the pixel is done
        done[p] = 1;
        --active;
        continue;
      }
      visit(p, f, *k, q, t[p]);
      t[p] = next;
    }
  }
}

template <typename T>
struct Maps {  // (B·H·W) per-pixel outputs, rgb (·, C), normal (·, 3)
  T *transmittance, *depth_sum, *median, *rgb, *normal, *distortion;
};

template <typename T>
void forward(const T* features, const int64_t* offsets, const int64_t* surfels, Grid g, Maps<T> out, int threads) {
  const int64_t nf = g.features();
  std::vector<TilePixels<T>> pixels(std::max(1, threads));
  std::vector<std::vector<T>> priors(pixels.size());  // Σ w·z so far, per pixel
  parallel_tiles(g.tiles(), threads, [&](int64_t tile, int worker) {
    if (offsets[tile] == offsets[tile + 1]) return;
    TilePixels<T>& tp = pixels[worker];
    tp.fill(g, tile);
    std::vector<T>& prior = priors[worker];
    prior.assign(tp.index.size(), T(0));
    sweep(features, nf, surfels + offsets[tile], surfels + offsets[tile + 1], tp,
          [&](int64_t p, const T* f, int64_t, const Pair<T>& q, T t) {
            const int64_t i = tp.index[p];
            const T w = q.alpha * t, wz = w * f[12];
            for (int64_t c = 0; c < g.channels; ++c) out.rgb[i * g.channels + c] += w * f[kFeatures + c];
            for (int c = 0; c < 3; ++c) out.normal[i * 3 + c] += w * f[13 + c];
            out.distortion[i] += T(2) * (wz * (T(1) - t) - w * prior[p]);
            prior[p] += wz;
            if (t > T(0.5)) out.median[i] = f[12];
          });
    for (size_t p = 0; p < tp.index.size(); ++p) {
      out.transmittance[tp.index[p]] = tp.t[p];
      out.depth_sum[tp.index[p]] = prior[p];
    }
  });
}

template <typename T>
struct Composited {  // one composited pair of a pixel, as the backward pass needs it
  int64_t surfel;
  Pair<T> q;
  T before, prior;  // T before the pair, Σ w·z of the pairs in front
};

// ∂L/∂features of one pixel's composited pairs (front to back in `list`, T_final after them) into gf_all.
template <typename T>
void backward_pixel(const T* features, int64_t nf, int64_t channels, const std::vector<Composited<T>>& list,
                    T px, T py, T t_final, const Maps<const T>& grad, int64_t i, T* gf_all) {
  int64_t median = -1;  // the last pair with T > ½ before it
  for (size_t j = 0; j < list.size() && list[j].before > T(0.5); ++j) median = static_cast<int64_t>(j);
  const T g_depth = grad.depth_sum[i], g_dist2 = T(2) * grad.distortion[i];
  const T* g_rgb = grad.rgb + i * channels;
  const T* g_normal = grad.normal + i * 3;
  T behind_w = 0, behind_wz = 0, behind_gw = grad.transmittance[i] * t_final;  // B_i, Q_i, Σ_{j>i} G_j w_j + g_T·T
  for (int64_t j = static_cast<int64_t>(list.size()) - 1; j >= 0; --j) {
    const Composited<T>& e = list[j];
    const Pair<T>& q = e.q;
    const T* f = features + e.surfel * nf;
    T* gf = gf_all + e.surfel * nf;
    const T w = q.alpha * e.before, z = f[12], spread = (T(1) - e.before) - behind_w;  // A_i − B_i
    T g_w = g_depth * z + g_dist2 * (z * spread - e.prior + behind_wz);
    for (int64_t c = 0; c < channels; ++c) {
      g_w += g_rgb[c] * f[kFeatures + c];
      gf[kFeatures + c] += w * g_rgb[c];
    }
    for (int c = 0; c < 3; ++c) {
      g_w += g_normal[c] * f[13 + c];
      gf[13 + c] += w * g_normal[c];
    }
    gf[12] += w * (g_depth + g_dist2 * spread) + (j == median ? grad.median[i] : T(0));
    const T g_alpha = g_w * e.before - behind_gw / (T(1) - q.alpha);
    behind_gw += g_w * w;
    behind_w += w;
    behind_wz += w * z;
    if (q.raw > T(kAlphaMax)) continue;  // α clamped: no gradient through it
    gf[11] += g_alpha * q.falloff;
    const T g_rho = T(-0.5) * g_alpha * q.raw;  // for the smaller ρ; half each on a tie (as torch.minimum)
    const T g_rho3d = q.rho3d < q.rho2d ? g_rho : q.rho3d > q.rho2d ? T(0) : T(0.5) * g_rho;
    const T g_rho2d = g_rho - g_rho3d;
    const T k3 = T(2) * g_rho3d / (q.cz * q.cz);
    const T g_c[3] = {k3 * q.cx, k3 * q.cy, -k3 * q.rho3d * q.cz};
    for (int c = 0; c < 3; ++c) {
      gf[c] += px * g_c[c];
      gf[3 + c] += py * g_c[c];
      gf[6 + c] += g_c[c];
    }
    gf[9] -= T(4) * q.dx * g_rho2d;
    gf[10] -= T(4) * q.dy * g_rho2d;
  }
}

template <typename T>
void backward(const T* features, const int64_t* offsets, const int64_t* surfels, Grid g, Maps<const T> grad,
              T* grad_features, int64_t n_surfels, int threads) {
  const int64_t nf = g.features();
  threads = std::max(1, threads);
  std::vector<std::vector<T>> buffers(threads - 1, std::vector<T>(n_surfels * nf, T(0)));
  std::vector<TilePixels<T>> pixels(threads);
  std::vector<std::vector<std::vector<Composited<T>>>> lists(threads);  // per worker, per pixel
  parallel_tiles(g.tiles(), threads, [&](int64_t tile, int worker) {
    if (offsets[tile] == offsets[tile + 1]) return;
    TilePixels<T>& tp = pixels[worker];
    tp.fill(g, tile);
    auto& list = lists[worker];
    list.resize(std::max(list.size(), tp.index.size()));
    std::vector<T> prior(tp.index.size(), T(0));
    for (size_t p = 0; p < tp.index.size(); ++p) list[p].clear();
    sweep(features, nf, surfels + offsets[tile], surfels + offsets[tile + 1], tp,
          [&](int64_t p, const T* f, int64_t surfel, const Pair<T>& q, T t) {
            list[p].push_back({surfel, q, t, prior[p]});
            prior[p] += q.alpha * t * f[12];
          });
    T* out = worker == 0 ? grad_features : buffers[worker - 1].data();
    for (size_t p = 0; p < tp.index.size(); ++p)
      backward_pixel(features, nf, g.channels, list[p], tp.px[p], tp.py[p], tp.t[p], grad, tp.index[p], out);
  });
  for (const auto& buffer : buffers)
    for (int64_t k = 0; k < n_surfels * nf; ++k) grad_features[k] += buffer[k];
}

// Tile lists from per-surfel tile ranges: lo, hi (S,2) inclusive tile columns/rows (empty when hi < lo), order (S,)
// the surfels front to back, n surfels per image. Pass 1 (surfels == nullptr) writes offsets (n_tiles + 1);
// pass 2 fills surfels (offsets[n_tiles]) in front-to-back order per tile.
void bin(const int64_t* lo, const int64_t* hi, const int64_t* order, int64_t n_surfels, int64_t n, Grid g,
         int64_t* offsets, int64_t* surfels) {
  const int64_t per_image = g.tiles_x * g.tiles_y;
  std::vector<int64_t> cursor;
  if (surfels == nullptr) std::fill(offsets, offsets + g.tiles() + 1, 0);
  else cursor.assign(offsets, offsets + g.tiles());
  for (int64_t k = 0; k < n_surfels; ++k) {
    const int64_t s = order[k], base = (s / n) * per_image;
    for (int64_t y = lo[2 * s + 1]; y <= hi[2 * s + 1]; ++y)
      for (int64_t x = lo[2 * s]; x <= hi[2 * s]; ++x) {
        const int64_t tile = base + y * g.tiles_x + x;
        if (surfels == nullptr) ++offsets[tile + 1];
        else surfels[cursor[tile]++] = s;
      }
  }
  if (surfels == nullptr)
    for (int64_t t = 0; t < g.tiles(); ++t) offsets[t + 1] += offsets[t];
}

}  // namespace

extern "C" {

int64_t bin_tiles(const int64_t* lo, const int64_t* hi, const int64_t* order, int64_t n_surfels, int64_t n,
                  int64_t batch, int64_t tiles_x, int64_t tiles_y, int64_t* offsets, int64_t* surfels) {
  bin(lo, hi, order, n_surfels, n, {batch, 0, 0, 0, tiles_x, tiles_y, 0}, offsets, surfels);
  return offsets[batch * tiles_x * tiles_y];
}

#define SHEAP_EXPORT(T, suffix)                                                                                    \
  void forward_##suffix(const T* features, const int64_t* offsets, const int64_t* surfels, int64_t batch,          \
                        int64_t width, int64_t height, int64_t tile, int64_t tiles_x, int64_t tiles_y,             \
                        int64_t channels, T* transmittance, T* depth_sum, T* median, T* rgb, T* normal,            \
                        T* distortion, int threads) {                                                             \
    forward<T>(features, offsets, surfels, {batch, width, height, tile, tiles_x, tiles_y, channels},              \
               {transmittance, depth_sum, median, rgb, normal, distortion}, threads);                             \
  }                                                                                                                \
  void backward_##suffix(const T* features, const int64_t* offsets, const int64_t* surfels, int64_t batch,         \
                         int64_t width, int64_t height, int64_t tile, int64_t tiles_x, int64_t tiles_y,            \
                         int64_t channels, const T* g_transmittance, const T* g_depth_sum, const T* g_median,      \
                         const T* g_rgb, const T* g_normal, const T* g_distortion, T* grad_features,               \
                         int64_t n_surfels, int threads) {                                                         \
    backward<T>(features, offsets, surfels, {batch, width, height, tile, tiles_x, tiles_y, channels},             \
                {g_transmittance, g_depth_sum, g_median, g_rgb, g_normal, g_distortion}, grad_features, n_surfels, \
                threads);                                                                                          \
  }

SHEAP_EXPORT(float, f32)
SHEAP_EXPORT(double, f64)

}  // extern "C"
