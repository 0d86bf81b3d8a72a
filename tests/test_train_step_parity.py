"""The training step's speed-ups (issue 16) against plain reference computations, in float32 on fixed inputs:
the encoder's max-pool over the points that carry gradient (encoder.py), the convolution taps that only meet
padding left out and the layers' own forward-mode tangents in the JVP (unet.py, meanflow.jvp_dudt), the fused
AdamW (training/optim.py). Each compares values and gradients (or updated weights) of the fast path with the
computation it replaces, written out here."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from mfp.demos.normalizer import MinMaxNormalizer
from mfp.policies import PolicyConfig, build_policy
from mfp.policies import meanflow
from mfp.policies.encoder import PointNetEncoderXYZ, max_over_points
from mfp.policies.training.optim import load_optimizer_state, make_adamw
from mfp.policies.unet import ConditionalUnet1D, GroupNorm, Linear, SequenceConv1d, group_norm, linear, live_taps

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- references ---------------------------------------------------------------------------------------------
def reference_point_encoder(enc: PointNetEncoderXYZ, points: torch.Tensor) -> torch.Tensor:
    """The encoder before issue 16: the per-point MLP over every point, then amax over the points."""
    return enc.projection(enc.point_mlp(points).amax(dim=1))


def reference_conv(conv: SequenceConv1d, x: torch.Tensor) -> torch.Tensor:
    """The zero-padded stride-1 convolution with every tap."""
    return F.conv1d(x, conv.weight, conv.bias, padding=conv.padding[0])


def reference_jvp_dudt(fn, z, r, t, dz_dt):
    """The JVP before issue 16: torch.func.jvp over (z, r, t) with tangents (dz_dt, 0, 1), PyTorch's own formulas."""
    z, r, t, dz_dt = (a.to(torch.promote_types(z.dtype, torch.float32)) for a in (z, r, t, dz_dt))
    with torch.autocast(device_type=z.device.type, enabled=False):
        return torch.func.jvp(fn, (z, r, t), (dz_dt, torch.zeros_like(r), torch.ones_like(t)), has_aux=True)


def use_reference_layers(monkeypatch) -> None:
    """Every fast path of the step replaced by its reference: encoder, convolutions, linear and group norm, JVP."""
    monkeypatch.setattr(PointNetEncoderXYZ, "forward", reference_point_encoder)
    monkeypatch.setattr(SequenceConv1d, "forward", reference_conv)
    monkeypatch.setattr(Linear, "forward", torch.nn.Linear.forward)
    monkeypatch.setattr(GroupNorm, "forward", torch.nn.GroupNorm.forward)
    monkeypatch.setattr(meanflow, "jvp_dudt", reference_jvp_dudt)


def grads(loss: torch.Tensor, module: torch.nn.Module) -> list[torch.Tensor]:
    """d loss / d parameter for every parameter of `module`, zeros where the loss does not reach it."""
    params = list(module.parameters())
    return [torch.zeros_like(p) if g is None else g
            for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True))]


def assert_all_close(a: list[torch.Tensor], b: list[torch.Tensor], **tol) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, **tol)


def clouds(batch: int = 6, n: int = 128, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, n, 3, generator=g) * 2 - 1


# --- encoder: the max-pool over the points that carry gradient -----------------------------------------------
def test_pooled_points_hold_every_positive_channels_maximising_point_once():
    """(A channel that is 0 at every point after the ReLU passes no gradient: any point will do for it.)"""
    torch.manual_seed(0)
    enc = PointNetEncoderXYZ((16, 32, 64), 8)
    points = clouds()
    kept = enc.pooled_points(points)
    assert kept.shape[0] == points.shape[0] and kept.shape[1] < points.shape[1]   # fewer points than the cloud
    with torch.no_grad():
        best = enc.point_mlp(points).max(dim=1)                                     # (B, C) values, indices
    for cloud, sub, value, index in zip(points, kept, best.values, best.indices):
        rows = [int((cloud == p).all(dim=1).nonzero()[0]) for p in sub]           # the cloud's own points
        assert len(set(rows)) == len(rows) and set(index[value > 0].tolist()) <= set(rows)


def test_encoder_training_pass_matches_full_cloud_amax_values_and_gradients():
    torch.manual_seed(1)
    enc = PointNetEncoderXYZ((16, 32, 64), 8)
    points = clouds(seed=1)
    w = torch.randn(points.shape[0], 8)
    out = enc(points)
    ref = reference_point_encoder(enc, points)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert_all_close(grads((out * w).sum(), enc), grads((ref * w).sum(), enc), rtol=1e-4, atol=1e-6)


def test_encoder_gradients_with_duplicated_points_match_amax():
    """Duplicated points tie every channel: amax splits the gradient between the copies, max(dim) gives it to one,
    and the weights' gradients (sums over the points) are the same."""
    torch.manual_seed(2)
    enc = PointNetEncoderXYZ((16, 32, 64), 8)
    points = clouds(seed=2)
    points = torch.cat([points, points[:, :40]], dim=1)[:, torch.randperm(168)]     # 40 points twice per cloud
    w = torch.randn(points.shape[0], 8)
    assert_all_close(grads((enc(points) * w).sum(), enc),
                     grads((reference_point_encoder(enc, points) * w).sum(), enc), rtol=1e-4, atol=1e-6)


def test_encoder_with_every_channel_off_after_the_relu_matches_amax():
    """No channel positive at any point: one point per cloud suffices, and no gradient reaches the point MLP."""
    torch.manual_seed(11)
    enc = PointNetEncoderXYZ((16, 32, 64), 8)
    with torch.no_grad():
        enc.point_mlp[-2].bias.fill_(-100.0)                 # the last LayerNorm's shift: every channel < 0
    points = clouds(seed=11)
    assert enc.pooled_points(points).shape[1] == 1
    w = torch.randn(points.shape[0], 8)
    out, ref = enc(points), reference_point_encoder(enc, points)
    torch.testing.assert_close(out, ref)
    assert_all_close(grads((out * w).sum(), enc), grads((ref * w).sum(), enc), rtol=1e-5, atol=1e-7)


def test_encoder_without_autograd_is_the_full_cloud_amax_exactly():
    torch.manual_seed(3)
    enc = PointNetEncoderXYZ((16, 32, 64), 8)
    points = clouds(seed=3)
    with torch.no_grad():
        assert torch.equal(enc(points), reference_point_encoder(enc, points))


def test_max_over_points_values_with_and_without_autograd():
    h = torch.randn(3, 50, 7)
    with torch.no_grad():
        assert torch.equal(max_over_points(h), h.amax(dim=1))
    hg = h.clone().requires_grad_()
    out = max_over_points(hg)
    assert torch.equal(out.detach(), h.amax(dim=1))
    out.sum().backward()
    assert torch.equal(hg.grad, (h == h.amax(dim=1, keepdim=True)).float())       # no ties in random data


# --- UNet: convolution taps that only meet the padding -------------------------------------------------------
@pytest.mark.parametrize("k,T", [(5, 1), (5, 2), (5, 3), (5, 4), (5, 8), (3, 1), (3, 2), (1, 1), (1, 4)])
def test_sequence_conv_with_live_taps_matches_full_convolution(k, T):
    torch.manual_seed(4)
    conv = SequenceConv1d(12, 10, k)
    x = torch.randn(5, 12, T, requires_grad=True)
    w = torch.randn(5, 10, T)
    out, ref = conv(x), reference_conv(conv, x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g_out = torch.autograd.grad((out * w).sum(), (x, conv.weight, conv.bias))
    g_ref = torch.autograd.grad((ref * w).sum(), (x, conv.weight, conv.bias))
    assert_all_close(list(g_out), list(g_ref), rtol=1e-4, atol=1e-5)
    lo, hi = live_taps(k, k // 2, T)
    dead = [j for j in range(k) if not lo <= j < hi]
    assert all(abs(j - k // 2) >= T for j in dead)          # only taps that read padding alone are left out
    assert torch.equal(g_out[1][:, :, dead], torch.zeros_like(g_out[1][:, :, dead]))


def test_live_taps():
    assert live_taps(5, 2, 1) == (2, 3) and live_taps(5, 2, 2) == (1, 4) and live_taps(5, 2, 3) == (0, 5)
    assert live_taps(5, 2, 64) == (0, 5) and live_taps(1, 0, 1) == (0, 1) and live_taps(3, 1, 1) == (1, 2)


# --- forward-mode tangents of the UNet's layers ---------------------------------------------------------------
def _dual_apply(f, x: torch.Tensor, x_t: torch.Tensor):
    """f(x) and its tangent along x_t with the layers' own formulas (dual tensors, as meanflow.jvp_dudt runs)."""
    with fwAD.dual_level():
        return tuple(fwAD.unpack_dual(f(fwAD.make_dual(x, x_t))))


@pytest.mark.parametrize("shape,groups", [((5, 16, 4), 8), ((5, 32, 1), 8), ((4, 12, 3), 3), ((3, 8, 2), 1)])
def test_group_norm_tangent_matches_torch_func_jvp(shape, groups):
    torch.manual_seed(6)
    gn = torch.nn.GroupNorm(groups, shape[1]).double()
    with torch.no_grad():
        gn.weight.normal_(), gn.bias.normal_()
    x, x_t = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    out, tangent = _dual_apply(lambda y: group_norm(y, groups, gn.weight, gn.bias, gn.eps), x, x_t)
    ref_out, ref_tangent = torch.func.jvp(gn, (x,), (x_t,))
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(tangent, ref_tangent)


def test_linear_tangent_matches_torch_func_jvp():
    torch.manual_seed(7)
    lin = torch.nn.Linear(20, 6).double()
    x, x_t = torch.randn(4, 3, 20, dtype=torch.float64), torch.randn(4, 3, 20, dtype=torch.float64)
    out, tangent = _dual_apply(lambda y: linear(y, lin.weight, lin.bias), x, x_t)
    ref_out, ref_tangent = torch.func.jvp(lin, (x,), (x_t,))
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(tangent, ref_tangent)


def test_dual_weights_take_torchs_formula():
    """A JVP along the weights too (not MeanFlow's) still gets the full tangent."""
    torch.manual_seed(10)
    lin = torch.nn.Linear(5, 4).double()
    x, x_t = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    w_t = torch.randn(4, 5, dtype=torch.float64)
    with fwAD.dual_level():
        out = linear(fwAD.make_dual(x, x_t), fwAD.make_dual(lin.weight.detach(), w_t), lin.bias.detach())
        tangent = fwAD.unpack_dual(out).tangent
    torch.testing.assert_close(tangent, x_t @ lin.weight.detach().T + x @ w_t.T)


def test_layers_outside_forward_mode_are_the_torch_layers():
    torch.manual_seed(8)
    x = torch.randn(4, 16, 3)
    gn, ref_gn = GroupNorm(8, 16), torch.nn.GroupNorm(8, 16)
    lin, ref_lin = Linear(3, 5), torch.nn.Linear(3, 5)
    ref_gn.load_state_dict(gn.state_dict())
    ref_lin.load_state_dict(lin.state_dict())
    assert torch.equal(gn(x), ref_gn(x)) and torch.equal(lin(x), ref_lin(x))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, dict(rtol=1e-9, atol=1e-9)),
                                       (torch.float32, dict(rtol=1e-4, atol=1e-4))])
def test_unet_jvp_matches_torch_func_jvp_values_tangents_and_gradients(dtype, tol, monkeypatch):
    """u, du/dt, the features and the gradients of a loss on u and the features, for a UNet whose deepest levels
    run at T = 1 and 2, by meanflow.jvp_dudt against torch.func.jvp with PyTorch's layers."""
    torch.manual_seed(9)
    net = ConditionalUnet1D(3, 10, down_dims=(16, 32, 64), time_embed_dim=16, two_times=True).to(dtype)
    g = torch.Generator().manual_seed(9)
    z, v = (torch.randn(6, 4, 3, generator=g, dtype=dtype) for _ in range(2))
    cond = torch.randn(6, 10, generator=g, dtype=dtype)
    t = torch.rand(6, generator=g, dtype=dtype)
    r = t * torch.rand(6, generator=g, dtype=dtype)
    w = torch.randn(6, 4, 3, generator=g, dtype=dtype)

    def run(jvp):
        u, dudt, feats = jvp(lambda z_, r_, t_: net(z_, t_, r_, cond=cond, return_features=True), z, r, t, v)
        loss = (u * w).sum() + sum(f.square().mean() for f in feats)
        return [u.detach(), dudt.detach(), *(f.detach() for f in feats)], grads(loss, net)

    out, g_out = run(meanflow.jvp_dudt)
    use_reference_layers(monkeypatch)
    ref, g_ref = run(reference_jvp_dudt)
    assert_all_close(out, ref, **tol)
    assert_all_close(g_out, g_ref, **tol)


# --- the whole MeanFlow step ---------------------------------------------------------------------------------
def _policy_and_batch(seed: int = 0):
    cfg = PolicyConfig(head="meanflow", n_points=256, agent_dim=5, action_dim=3, unet={"preset": "tiny"})
    torch.manual_seed(seed)
    policy = build_policy(cfg)
    g = torch.Generator().manual_seed(seed)
    batch = {"obs": {"point_cloud": torch.rand(8, 4, 256, 3, generator=g),
                     "agent_pos": torch.randn(8, 4, 5, generator=g)},
             "action": torch.tanh(torch.randn(8, 4, 3, generator=g))}
    policy.set_normalizer(MinMaxNormalizer().fit({"action": batch["action"].numpy(),
                                                  "agent_pos": batch["obs"]["agent_pos"].numpy(),
                                                  "point_cloud": batch["obs"]["point_cloud"].numpy().reshape(-1, 3)}))
    return policy.train(), batch


def _loss_and_grads(policy, batch, seed: int = 5):
    torch.manual_seed(seed)                                  # the head's times and noise
    loss, _ = policy.compute_loss(batch)
    return loss.detach(), grads(loss, policy)


def test_meanflow_step_loss_and_gradients_match_the_reference_step(monkeypatch):
    """MeanFlow (x-prediction, JVP) on the tiny preset: loss and every parameter's gradient of a step with every
    fast path, against the same step with the references (full-cloud amax encoder, full-tap convolutions,
    torch.func.jvp through PyTorch's layers)."""
    policy, batch = _policy_and_batch()
    loss, g = _loss_and_grads(policy, batch)
    use_reference_layers(monkeypatch)
    loss_ref, g_ref = _loss_and_grads(policy, batch)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    assert_all_close(g, g_ref, rtol=1e-3, atol=1e-6)
    assert any(x.abs().sum() > 0 for x in g[:4])             # the encoder does get gradient


# --- the optimiser ---------------------------------------------------------------------------------------------
def _params_with_grads(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(*shape, generator=g)) for shape in ((7, 3), (3,), (4, 4, 2))]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    return params


def test_fused_adamw_matches_the_default_loop_over_steps():
    fast, ref = _params_with_grads(0), _params_with_grads(0)
    kw = dict(lr=1e-3, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    opt_fast = make_adamw(fast, **kw)
    opt_ref = torch.optim.AdamW(ref, foreach=False, **kw)
    assert opt_fast.param_groups[0]["fused"] is True
    for step in range(5):
        for p, q in zip(fast, ref):
            p.grad = q.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step))
        opt_fast.step()
        opt_ref.step()
    assert_all_close([p.detach() for p in fast], [q.detach() for q in ref], rtol=1e-6, atol=1e-7)


def test_loading_an_unfused_optimisers_state_keeps_the_fused_kernel():
    ref = _params_with_grads(1)
    opt_ref = torch.optim.AdamW(ref, lr=1e-3, foreach=False)
    opt_ref.step()
    saved = copy.deepcopy(opt_ref.state_dict())            # as read from a checkpoint: no shared buffers
    fast = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    opt_fast = make_adamw(fast, lr=5e-4, betas=(0.9, 0.99), weight_decay=0.0)
    load_optimizer_state(opt_fast, saved)
    group = opt_fast.param_groups[0]
    assert group["fused"] is True and group["lr"] == 1e-3 and group["betas"] == (0.9, 0.999)
    for p, q in zip(fast, ref):
        p.grad = q.grad = torch.ones_like(p)
    opt_fast.step()
    opt_ref.step()
    assert_all_close([p.detach() for p in fast], [q.detach() for q in ref], rtol=1e-6, atol=1e-7)
