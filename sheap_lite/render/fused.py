"""`CompositeRows`: `composite.composite_rows` as one autograd node with a hand-derived backward pass.

Autograd through `composite_rows` keeps ~30 intermediates per pair and runs ~60 backward ops; this node keeps
α (R,L) and recomputes the cheap geometry. `composite_rows` stays the pure-PyTorch reference that
tests/test_render_fused.py checks this backward against.

Per row (one pixel), pairs i front to back, all composited (padding has α = 0):
  T_i = Π_{j<i} (1 − α_j),  w_i = α_i·T_i,  A_i = Σ_{j<i} w_j = 1 − T_i,  B_i = Σ_{j>i} w_j,
  rgb = Σ w_i c_i,  normal = Σ w_i n_i,  D = Σ w_i z_i,  T = Π (1 − α_i),
  distortion = 2 Σ_i w_i (z_i A_i − P_i) = 2 Σ_{j<i} w_i w_j (z_i − z_j),  P_i = Σ_{j<i} w_j z_j,
  median = z_m, m the last pair with T_m > ½.
Backward, with upstream gradients g_rgb, g_n, g_D, g_T, g_d, g_med and Q_i = Σ_{j>i} w_j z_j:
  ∂L/∂w_i (w independent) G_i = g_rgb·c_i + g_n·n_i + g_D z_i + 2 g_d (z_i A_i − P_i + Q_i − z_i B_i),
  ∂L/∂z_i = w_i (g_D + 2 g_d (A_i − B_i)) + g_med [i = m],   ∂L/∂c_i = w_i g_rgb,   ∂L/∂n_i = w_i g_n,
  ∂L/∂α_k = G_k T_k − (Σ_{i>k} G_i w_i + g_T T) / (1 − α_k)   (w_i for i > k and T hold the factor 1 − α_k ≥ 1e-3),
then α = min(0.999, o·e^{−σ}) (no gradient where clamped), σ = ½·min(ρ_3d, ρ_2d) (the smaller one gets it),
ρ_3d = (c_x² + c_y²)/c_z², c = p_x·P_0 + p_y·P_1 + P_2, ρ_2d = 2|p − μ|².
"""

from __future__ import annotations

import torch

from .composite import ALPHA_MAX, FEATURES


def _geometry(pixels, features, real):
    """Shared by forward and backward: (cx, cy, cz, inverse c_z², ρ_3d, dx, dy, ρ_2d), each (R,L)."""
    px, py = pixels[:, None, 0], pixels[:, None, 1]
    cx, cy, cz = (px * features[c] + py * features[3 + c] + features[6 + c] for c in range(3))
    cz = torch.where(real, cz, 1.0)
    inverse = torch.reciprocal(cz * cz)
    rho3d = (cx * cx + cy * cy) * inverse
    dx, dy = px - features[9], py - features[10]
    rho2d = 2.0 * (dx * dx + dy * dy)
    return cx, cy, cz, inverse, rho3d, dx, dy, rho2d


def _gather(packed, ids):
    return packed.index_select(1, ids.reshape(-1)).view(len(packed), *ids.shape)  # (F,R,L)


def _forward_rows(pixels, ids, real, features):
    """One chunk's forward (no autograd): α (R,L) and `composite_rows`'s six outputs, plus the median's index."""
    *_, rho3d, _, _, rho2d = _geometry(pixels, features, real)
    raw = features[11] * torch.exp(-0.5 * torch.minimum(rho3d, rho2d))
    alpha = torch.where(real, raw.clamp_max(ALPHA_MAX), 0.0)
    after = torch.cumprod(1.0 - alpha, dim=-1)
    before = torch.cat([torch.ones_like(after[:, :1]), after[:, :-1]], dim=-1)
    weight = alpha * before
    depth = features[12]
    weighted_depth = weight * depth
    prior = torch.cumsum(weighted_depth, dim=-1) - weighted_depth
    distortion = 2.0 * (weighted_depth * (1.0 - before) - weight * prior).sum(-1)
    median_mask = real & (before > 0.5)
    last = torch.where(median_mask, torch.arange(1, ids.shape[1] + 1, device=ids.device), 0).argmax(-1)
    has_median = median_mask.any(-1)
    median = torch.where(has_median, depth.gather(1, last[:, None])[:, 0], 0.0)
    outputs = (after[:, -1], weighted_depth.sum(-1), median, torch.einsum("rl,crl->rc", weight, features[FEATURES:]),
               torch.einsum("rl,crl->rc", weight, features[13:16]), distortion)
    return alpha, outputs, last, has_median


def _backward_rows(pixels, real, features, alpha, last, has_median, g_t, g_depth, g_median, g_rgb, g_normal,
                   g_dist):
    """One chunk's backward: ∂L/∂features (F,R,L) from the upstream gradients of its rows (module docstring)."""
    cx, cy, cz, inverse, rho3d, dx, dy, rho2d = _geometry(pixels, features, real)
    depth, color, normal = features[12], features[FEATURES:], features[13:16]
    one_minus = 1.0 - alpha
    after = torch.cumprod(one_minus, dim=-1)
    before = torch.cat([torch.ones_like(after[:, :1]), after[:, :-1]], dim=-1)
    weight = alpha * before
    weighted_depth = weight * depth
    inclusive_w, inclusive_wz = torch.cumsum(weight, -1), torch.cumsum(weighted_depth, -1)
    prior = inclusive_wz - weighted_depth  # P_i
    behind_w = inclusive_w[:, -1:] - inclusive_w  # B_i
    behind_wz = inclusive_wz[:, -1:] - inclusive_wz  # Q_i
    front_w = 1.0 - before  # A_i
    g_d2 = 2.0 * g_dist[:, None]
    g_w = (torch.einsum("rc,crl->rl", g_rgb, color) + torch.einsum("rc,crl->rl", g_normal, normal)
           + g_depth[:, None] * depth + g_d2 * (depth * (front_w - behind_w) - prior + behind_wz))
    g_z = weight * (g_depth[:, None] + g_d2 * (front_w - behind_w))
    g_z.scatter_add_(1, last[:, None], (g_median * has_median)[:, None].to(g_z.dtype))
    gw_w = g_w * weight
    behind_gw = gw_w.sum(-1, keepdim=True) - torch.cumsum(gw_w, -1)
    g_alpha = g_w * before - (behind_gw + (g_t * after[:, -1])[:, None]) / one_minus
    falloff = torch.exp(-0.5 * torch.minimum(rho3d, rho2d))
    raw = features[11] * falloff
    g_raw = torch.where(real & (raw <= ALPHA_MAX), g_alpha, 0.0)
    g_sigma_half = -0.5 * g_raw * raw  # ∂L/∂ρ of the smaller ρ
    from_3d = rho3d <= rho2d
    g_rho3d = torch.where(from_3d, g_sigma_half, 0.0)
    g_rho2d = torch.where(from_3d, 0.0, g_sigma_half)
    g_cx, g_cy = 2.0 * g_rho3d * inverse * cx, 2.0 * g_rho3d * inverse * cy
    g_cz = -2.0 * g_rho3d * rho3d / cz
    px, py = pixels[:, None, 0], pixels[:, None, 1]
    g_c = (g_cx, g_cy, g_cz)
    grads = ([px * g for g in g_c] + [py * g for g in g_c] + list(g_c)
             + [-4.0 * g_rho2d * dx, -4.0 * g_rho2d * dy, g_raw * falloff, g_z]
             + [weight * g[:, None] for g in g_normal.T] + [weight * g[:, None] for g in g_rgb.T])
    return torch.stack(grads)


class CompositeRows(torch.autograd.Function):
    """apply(pixels (R,2), ids (n,), layout, packed (F,S)) → `composite_rows`'s six outputs (R,…) for all rows;
    gradients for `packed` only. Rows come in chunks: `layout` lists (first row, rows, width, offset in `ids`);
    chunk c's ids are ids[offset : offset + rows·width] as (rows, width), padded with id S − 1.
    Chunks keep every intermediate small enough for the CPU's cache (tensors of a few 10⁴ elements run several
    times faster per element than tensors of 10⁶, whose fresh pages the allocator faults in each time)."""

    @staticmethod
    def forward(ctx, pixels, ids, layout, packed):
        rows, pad = len(pixels), packed.shape[1] - 1
        outputs = [packed.new_empty(rows), packed.new_empty(rows), packed.new_empty(rows),
                   packed.new_empty(rows, len(packed) - FEATURES), packed.new_empty(rows, 3), packed.new_empty(rows)]
        alpha = packed.new_empty(ids.shape)
        last = ids.new_empty(rows)
        has_median = torch.empty(rows, dtype=torch.bool, device=ids.device)
        for first, count, width, offset in layout:
            chunk = ids[offset:offset + count * width].view(count, width)
            span = slice(first, first + count)
            a, outs, last[span], has_median[span] = _forward_rows(pixels[span], chunk, chunk != pad,
                                                                  _gather(packed, chunk))
            alpha[offset:offset + count * width] = a.reshape(-1)
            for out, value in zip(outputs, outs):
                out[span] = value
        ctx.layout = layout
        ctx.save_for_backward(pixels, ids, packed, alpha, last, has_median)
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *upstream):
        pixels, ids, packed, alpha, last, has_median = ctx.saved_tensors
        pad = packed.shape[1] - 1
        g_packed = torch.zeros_like(packed)
        for first, count, width, offset in ctx.layout:
            flat = ids[offset:offset + count * width]
            chunk = flat.view(count, width)
            span = slice(first, first + count)
            g_features = _backward_rows(pixels[span], chunk != pad, _gather(packed, chunk),
                                        alpha[offset:offset + count * width].view(count, width), last[span],
                                        has_median[span], *(g[span] for g in upstream))
            g_packed.index_add_(1, flat, g_features.view(len(packed), -1))
        return None, None, None, g_packed
