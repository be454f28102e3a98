// Face selection of the soft mesh rasteriser (mesh_raster.select_faces, pass 1), compiled with kernel.cpp by
// kernel.py into one library (plain C ABI through ctypes; no torch headers).
//
// Same pairs and the same arithmetic as the PyTorch path, operation by operation (kernel.py builds with
// -ffp-contract=off, so no product is fused into a sum), hence the same face ids: every pixel-face pair of a
// face's pixel box (computed by mesh_raster._pixel_boxes), per pixel centre p = (x + ½, y + ½):
//   λ_k = (a_k·p_x + b_k·p_y) + c_k (the coefficients of mesh_raster._edge_functions), inside ⇔ all λ_k ≥ 0;
//   soft mode keeps a pair when inside, or max_k(−λ_k·h_k) ≤ r and min_k d²_k ≤ r² (segment distances as
//   mesh_raster._dist2); depth = Σ max(λ,0) / Σ (max(λ,0)/z) (mesh_raster._clipped_depth).
// Per pixel: hard = the inside face of least depth; soft = the k kept faces of least depth, nearest first;
// cover = the inside face of greatest distance to its silhouette edges (not `interior`). All ties go to the lower
// face id, which is what the PyTorch path's stable merges give (they see faces in ascending id order). Faces are
// visited in ascending id within each image; images run in parallel (they share no pixel). Work the result
// cannot depend on is skipped: the segment distance of a pair outside its face is computed only when its depth
// would enter the pixel's list, and a face's interior edges are never measured.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <thread>
#include <vector>

namespace {

template <typename T>
struct Screen {  // per flat face: coef (n,3,3), h (n,3), xy (n,3,2), z (n,3), interior (n,3) or null
  const T *coef, *h, *xy, *z;
  const unsigned char* interior;
  const int64_t *lo, *size, *area;  // pixel boxes: lo, size (n,2), area (n,) (0: skipped)
};

template <typename T>
struct Selected {  // per flat pixel (B·H·W): hard (n_pix), soft (n_pix, k), cover (n_pix)
  T *hard_z, *soft_z, *cover_key;
  int64_t *hard_id, *soft_id, *cover_id;
};

// Squared distance from p to the edge segment q_k → q_{k+1} of the triangle q (3,2).
template <typename T>
inline T edge_dist2(const T* q, int k, T px, T py) {
  const int j = (k + 1) % 3;
  const T ex = q[2 * j] - q[2 * k], ey = q[2 * j + 1] - q[2 * k + 1];
  const T wx = px - q[2 * k], wy = py - q[2 * k + 1];
  const T t = std::min(std::max((wx * ex + wy * ey) / std::max(ex * ex + ey * ey, T(1e-30)), T(0)), T(1));
  const T dx = wx - t * ex, dy = wy - t * ey;
  return dx * dx + dy * dy;
}

template <typename T>
void select_image(const Screen<T>& s, int64_t first, int64_t last, int64_t pixel0, int64_t width, int64_t k,
                  bool soft, T radius, T blur2, const Selected<T>& out) {
  const T inf = std::numeric_limits<T>::infinity();
  for (int64_t f = first; f < last; ++f) {
    if (s.area[f] <= 0) continue;
    const T *c = s.coef + 9 * f, *h = s.h + 3 * f, *q = s.xy + 6 * f, *z = s.z + 3 * f;
    const unsigned char* interior = s.interior ? s.interior + 3 * f : nullptr;
    const int64_t x0 = s.lo[2 * f], y0 = s.lo[2 * f + 1];
    for (int64_t y = y0; y < y0 + s.size[2 * f + 1]; ++y)
      for (int64_t x = x0; x < x0 + s.size[2 * f]; ++x) {
        const T px = T(x) + T(0.5), py = T(y) + T(0.5);
        T lam[3];
        for (int e = 0; e < 3; ++e) lam[e] = (c[3 * e] * px + c[3 * e + 1] * py) + c[3 * e + 2];
        const bool inside = lam[0] >= T(0) && lam[1] >= T(0) && lam[2] >= T(0);
        const int64_t p = pixel0 + y * width + x;
        if (!inside) {
          if (!soft) continue;
          const T edge = std::max(std::max(-lam[0] * h[0], -lam[1] * h[1]), -lam[2] * h[2]);
          if (!(edge <= radius)) continue;
        }
        T lc[3], w[3];
        for (int e = 0; e < 3; ++e) {
          lc[e] = std::max(lam[e], T(0));
          w[e] = lc[e] / z[e];
        }
        const T depth = ((lc[0] + lc[1]) + lc[2]) / ((w[0] + w[1]) + w[2]);
        if (!inside) {  // only the soft list can take it: test the distance only when it would
          if (!(depth < out.soft_z[p * k + k - 1])) continue;
          const T d2 = std::min(std::min(edge_dist2(q, 0, px, py), edge_dist2(q, 1, px, py)), edge_dist2(q, 2, px, py));
          if (!(d2 <= blur2)) continue;
        }
        if (inside && depth < out.hard_z[p]) out.hard_z[p] = depth, out.hard_id[p] = f;
        if (soft && depth < out.soft_z[p * k + k - 1]) {  // insert after equal depths (lower ids stay first)
          T* zs = out.soft_z + p * k;
          int64_t* ids = out.soft_id + p * k;
          int64_t j = k - 1;
          for (; j > 0 && zs[j - 1] > depth; --j) zs[j] = zs[j - 1], ids[j] = ids[j - 1];
          zs[j] = depth, ids[j] = f;
        }
        if (inside && interior) {
          T nearest = inf;  // to the silhouette edges only
          for (int e = 0; e < 3; ++e)
            if (!interior[e]) nearest = std::min(nearest, edge_dist2(q, e, px, py));
          if (-nearest < out.cover_key[p]) out.cover_key[p] = -nearest, out.cover_id[p] = f;
        }
      }
  }
}

template <typename T>
void select(const Screen<T>& s, int64_t batch, int64_t n_faces, int64_t width, int64_t height, int64_t k,
            bool soft, double radius, double blur2, const Selected<T>& out, int threads) {
  std::atomic<int64_t> next{0};
  auto work = [&]() {
    for (int64_t b; (b = next.fetch_add(1)) < batch;)
      select_image(s, b * n_faces, (b + 1) * n_faces, b * height * width, width, k, soft, T(radius), T(blur2),
                   out);
  };
  std::vector<std::thread> pool;
  for (int w = 1; w < std::min<int64_t>(threads, batch); ++w) pool.emplace_back(work);
  work();
  for (auto& thread : pool) thread.join();
}

}  // namespace

extern "C" {

#define SHEAP_MESH_EXPORT(T, suffix)                                                                               \
  void select_faces_##suffix(const T* coef, const T* h, const T* xy, const T* z, const unsigned char* interior,     \
                             const int64_t* lo, const int64_t* size, const int64_t* area, int64_t batch,           \
                             int64_t n_faces, int64_t width, int64_t height, int64_t k, int soft, double radius,   \
                             double blur2, T* hard_z, int64_t* hard_id, T* soft_z, int64_t* soft_id,               \
                             T* cover_key, int64_t* cover_id, int threads) {                                       \
    select<T>({coef, h, xy, z, interior, lo, size, area}, batch, n_faces, width, height, k, soft != 0, radius,     \
              blur2, {hard_z, soft_z, cover_key, hard_id, soft_id, cover_id}, threads);                            \
  }

SHEAP_MESH_EXPORT(float, f32)
SHEAP_MESH_EXPORT(double, f64)

}  // extern "C"
