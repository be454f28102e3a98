"""`CompositeRows`: `composite.composite_rows` as one autograd node with a hand-derived backward pass.

Autograd through `composite_rows` keeps ~30 intermediates per pair and runs ~60 backward ops; this node keeps
α and recomputes the cheap geometry. `composite_rows` stays the pure-PyTorch reference that
tests/test_render_fused.py checks this backward against.

Measured on CPU (one thread, tensors of ~3·10⁴ elements): same-shape float ops cost ~8 µs, but broadcasting a
(R,1) column over a narrow (R,L) row is 4× slower, comparisons that make bool tensors 4–6×, `where` and
`masked_fill` ~25×. So chunks are laid out transposed, (L,R) (per-row values broadcast as (1,R)); the padding
surfel has c_z = 1 and opacity 0, so its α is exactly 0 with no mask; the min(ρ_3d, ρ_2d) choice is taken
with a sign, not a comparison; and the row length gives the median's index.

Per row (one pixel), pairs i front to back, all composited (padding has α = 0):
  T_i = Π_{j<i} (1 − α_j),  w_i = α_i·T_i,  A_i = Σ_{j<i} w_j = 1 − T_i,  B_i = Σ_{j>i} w_j,
  rgb = Σ w_i c_i,  normal = Σ w_i n_i,  D = Σ w_i z_i,  T = Π (1 − α_i),
  distortion = 2 Σ_i w_i (z_i A_i − P_i) = 2 Σ_{j<i} w_i w_j (z_i − z_j),  P_i = Σ_{j<i} w_j z_j,
  median = z_m, m the last pair with T_m > ½.
Backward, with upstream gradients g_rgb, g_n, g_D, g_T, g_d, g_med and Q_i = Σ_{j>i} w_j z_j:
  ∂L/∂w_i (w independent) G_i = g_rgb·c_i + g_n·n_i + g_D z_i + 2 g_d (z_i A_i − P_i + Q_i − z_i B_i),
  ∂L/∂z_i = w_i (g_D + 2 g_d (A_i − B_i)) + g_med [i = m],   ∂L/∂c_i = w_i g_rgb,   ∂L/∂n_i = w_i g_n,
  ∂L/∂α_k = G_k T_k − (Σ_{i>k} G_i w_i + g_T T) / (1 − α_k)   (w_i for i > k and T hold the factor
  1 − α_k ≥ 1e-3),
then α = min(0.999, o·e^{−σ}) (no gradient where clamped), σ = ½·min(ρ_3d, ρ_2d) (the smaller one gets it),
ρ_3d = (c_x² + c_y²)/c_z², c = p_x·P_0 + p_y·P_1 + P_2, ρ_2d = 2|p − μ|².
"""

from __future__ import annotations

import torch

from .composite import ALPHA_MAX, FEATURES


def _geometry(px, py, features):
    """c_x, c_y, c_z, ρ_3d, dx, dy, ρ_2d, each (L,R), for pixel centres px, py (1,R) and features (F,L,R)."""
    cx, cy, cz = (torch.addcmul(features[6 + c], px, features[c]).addcmul_(py, features[3 + c]) for c in range(3))
    rho3d = (cx * cx).addcmul_(cy, cy).div_(cz * cz)
    dx, dy = px - features[9], py - features[10]
    rho2d = (dx * dx).addcmul_(dy, dy).mul_(2.0)
    return cx, cy, cz, rho3d, dx, dy, rho2d


def _transmittance(alpha):
    """α (L,R) → (1 − α, T after each pair, T before each pair), each (L,R)."""
    one_minus = 1.0 - alpha
    after = torch.cumprod(one_minus, dim=0)
    return one_minus, after, torch.cat([torch.ones_like(after[:1]), after[:-1]])


def _forward_rows(px, py, length, features):
    """One chunk's forward: α (L,R) and `composite_rows`'s six outputs, plus the median's index m (R,) (−1: none).
    length (R,) real pairs per row."""
    *_, rho3d, _, _, rho2d = _geometry(px, py, features)
    alpha = features[11] * torch.minimum(rho3d, rho2d).mul_(-0.5).exp_()
    alpha.clamp_max_(ALPHA_MAX)
    _, after, before = _transmittance(alpha)
    depth = features[12]
    weight = alpha * before
    weighted_depth = weight * depth
    prior = torch.cumsum(weighted_depth, dim=0).sub_(weighted_depth)
    distortion = (weighted_depth * (1.0 - before)).sub_(weight * prior).sum(0).mul_(2.0)
    last = torch.minimum((before > 0.5).sum(0), length) - 1  # T only falls: pairs with T > ½ are a prefix
    median = depth.gather(0, last.clamp_min(0)[None])[0] * (last >= 0)
    rgb, normal = (weight * features[FEATURES:]).sum(1).T, (weight * features[13:16]).sum(1).T
    return alpha, (after[-1], weighted_depth.sum(0), median, rgb, normal, distortion), last


def _backward_rows(px, py, features, alpha, last, g_t, g_depth, g_median, g_rgb, g_normal, g_dist, out):
    """One chunk's backward: writes ∂L/∂features (F,L,R) into `out` from its rows' upstream gradients (R,…)."""
    cx, cy, cz, rho3d, dx, dy, rho2d = _geometry(px, py, features)
    depth = features[12]
    one_minus, after, before = _transmittance(alpha)
    weight = alpha * before
    weighted_depth = weight * depth
    inclusive_w, inclusive_wz = torch.cumsum(weight, 0), torch.cumsum(weighted_depth, 0)
    prior = inclusive_wz - weighted_depth  # P_i
    spread = (1.0 - before).sub_(inclusive_w[-1:] - inclusive_w)  # A_i − B_i
    behind_wz = inclusive_wz[-1:] - inclusive_wz  # Q_i
    g_d2 = 2.0 * g_dist[None]
    g_w = (depth * spread).sub_(prior).add_(behind_wz).mul_(g_d2).addcmul_(g_depth[None], depth)
    for c, g in enumerate(g_rgb.T):
        g_w.addcmul_(g[None], features[FEATURES + c])
    for c, g in enumerate(g_normal.T):
        g_w.addcmul_(g[None], features[13 + c])
    g_z = spread.mul_(g_d2).add_(g_depth[None]).mul_(weight)
    g_z.scatter_add_(0, last.clamp_min(0)[None], (g_median * (last >= 0))[None])
    gw_w = g_w * weight
    behind_gw = gw_w.sum(0, keepdim=True) - torch.cumsum(gw_w, 0)
    g_alpha = (g_w * before).sub_(behind_gw.add_((g_t * after[-1])[None]).div_(one_minus))
    falloff = torch.minimum(rho3d, rho2d).mul_(-0.5).exp_()
    raw = features[11] * falloff
    if bool((raw > ALPHA_MAX).any()):  # no gradient where α is clamped (rare: opacity ≥ 0.999 at the centre)
        g_alpha.mul_(raw <= ALPHA_MAX)
    torch.mul(g_alpha, falloff, out=out[11])  # ∂L/∂o
    g_sigma_half = g_alpha.mul_(raw).mul_(-0.5)  # ∂L/∂ρ for the smaller ρ (half each on a tie, as torch.minimum)
    g_rho3d = torch.sign(rho2d - rho3d).add_(1.0).mul_(0.5).mul_(g_sigma_half)
    g_rho2d = g_sigma_half.sub_(g_rho3d)
    k3 = (2.0 * g_rho3d).div_(cz * cz)
    g_c = (k3 * cx, k3 * cy, k3.mul_(rho3d).mul_(cz).neg_())
    for c, g in enumerate(g_c):
        torch.mul(px, g, out=out[c])
        torch.mul(py, g, out=out[3 + c])
        out[6 + c] = g
    torch.mul(dx, g_rho2d, out=out[9]).mul_(-4.0)
    torch.mul(dy, g_rho2d, out=out[10]).mul_(-4.0)
    out[12] = g_z
    for c, g in enumerate(g_normal.T):
        torch.mul(weight, g[None], out=out[13 + c])
    for c, g in enumerate(g_rgb.T):
        torch.mul(weight, g[None], out=out[FEATURES + c])


class CompositeRows(torch.autograd.Function):
    """apply(pixels (R,2), length (R,), ids (n,), layout, packed (F,S)) → `composite_rows`'s six outputs (R,…)
    for all rows; gradients for `packed` only. Rows come in chunks: `layout` lists (first row, rows, width,
    offset in `ids`); chunk c's ids are ids[offset : offset + rows·width] as (rows, width), padded with id S − 1,
    which must have opacity 0 and c_z = 1. Chunks keep every intermediate small enough for the CPU's cache
    (tensors of a few 10⁴ elements run several times faster per element than tensors of 10⁶)."""

    @staticmethod
    def forward(ctx, pixels, length, ids, layout, packed):
        rows = len(pixels)
        outputs = [packed.new_empty(rows), packed.new_empty(rows), packed.new_empty(rows),
                   packed.new_empty(rows, len(packed) - FEATURES), packed.new_empty(rows, 3), packed.new_empty(rows)]
        alpha, last = packed.new_empty(ids.shape), ids.new_empty(rows)
        px, py = pixels[:, 0].contiguous(), pixels[:, 1].contiguous()
        for first, count, width, offset in layout:
            span, flat = slice(first, first + count), slice(offset, offset + count * width)
            features = _gather(packed, ids[flat].view(count, width).T)
            a, outs, last[span] = _forward_rows(px[None, span], py[None, span], length[span], features)
            alpha[flat] = a.reshape(-1)
            for out, value in zip(outputs, outs):
                out[span] = value
        ctx.layout = layout
        ctx.save_for_backward(px, py, ids, packed, alpha, last)
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *upstream):
        px, py, ids, packed, alpha, last = ctx.saved_tensors
        g_packed = torch.zeros_like(packed)
        for first, count, width, offset in ctx.layout:
            span, flat = slice(first, first + count), slice(offset, offset + count * width)
            chunk = ids[flat].view(count, width).T.contiguous()
            g_features = packed.new_empty(len(packed), width, count)
            _backward_rows(px[None, span], py[None, span], _gather(packed, chunk), alpha[flat].view(width, count),
                           last[span], *(g[span] for g in upstream), out=g_features)
            g_packed.index_add_(1, chunk.reshape(-1), g_features.view(len(packed), -1))
        return None, None, None, None, g_packed


def _gather(packed, ids):
    """packed (F,S), ids (L,R) → features (F,L,R)."""
    return packed.index_select(1, ids.reshape(-1)).view(len(packed), *ids.shape)
