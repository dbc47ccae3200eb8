"""Tiny SD3, FLUX.1 Kontext and LTX-2 backbones: saved, loaded back through diffusers' from_pretrained,
exactly the base without w, LoRA on the transformer only, sampling, gradient checkpointing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import diffusers_model
from infra.config import ModelConfig, SamplerConfig
from policies.batch import Condition, GroupSpec
from policies.policy import build_policy
from policies.rollout import rollout_groups

KINDS = ["sd3", "flux_kontext", "ltx2"]
PROMPTS = ["a red circle on a gray background", "make the square blue"]


def policy_of(tiny_pipeline, kind: str, encoders: bool = True, **diffusers):
    cfg = ModelConfig.model_validate(diffusers_model(kind, **diffusers))
    return build_policy(cfg, 2, tiny_pipeline(kind), encoders=encoders), cfg


def sources(kind: str, n: int) -> np.ndarray | None:
    return np.random.default_rng(0).random((n, 32, 32, 3), dtype=np.float32) if kind == "flux_kontext" else None


def plain_base_velocity(kind: str, path, x, t, cond, dtype=torch.float32) -> torch.Tensor:
    """What the unmodified diffusers transformer (weights in ``dtype``) predicts, called as its pipeline
    calls it: inputs in ``dtype``, timesteps float32."""
    import diffusers

    if kind == "sd3":
        tr = diffusers.SD3Transformer2DModel.from_pretrained(path, subfolder="transformer", dtype=dtype)
        return tr(hidden_states=x, timestep=t * 1000, encoder_hidden_states=cond.text,
                  pooled_projections=cond.pooled).sample
    if kind == "ltx2":
        return plain_ltx2_velocity(path, x, t, cond, dtype)
    pipe = diffusers.FluxKontextPipeline
    tr = diffusers.FluxTransformer2DModel.from_pretrained(path, subfolder="transformer", dtype=dtype)
    b, c, h, w = x.shape
    ids = pipe._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype)
    src_ids = ids.clone()
    src_ids[..., 0] = 1
    tokens = torch.cat([pipe._pack_latents(x, b, c, h, w), pipe._pack_latents(cond.source, b, c, h, w)], 1)
    out = tr(hidden_states=tokens, timestep=t, pooled_projections=cond.pooled, encoder_hidden_states=cond.text,
             txt_ids=torch.zeros(cond.text.shape[1], 3), img_ids=torch.cat([ids, src_ids])).sample
    # _unpack_latents takes the size in pixels and the VAE factor: any factor f with pixels = f * latent works.
    return pipe._unpack_latents(out[:, : (h // 2) * (w // 2)], 8 * h, 8 * w, 8)


def plain_ltx2_velocity(path, x, t, cond, dtype=torch.float32) -> torch.Tensor:
    """LTX2Pipeline.__call__'s transformer call (no guidance) on x = [packed video tokens | packed audio tokens]
    for the tiny model's 5 frames at 24 fps: 3 x 16 x 16 latents of 4 channels, 5 audio latents of 4 features."""
    import diffusers

    tr = diffusers.LTX2VideoTransformer3DModel.from_pretrained(path, subfolder="transformer", dtype=dtype)
    b, (f, h, w), audio_frames = x.shape[0], (3, 16, 16), 5
    n = f * h * w * 4
    video, audio = x[:, :n].reshape(b, -1, 4).contiguous(), x[:, n:].reshape(b, audio_frames, 4).contiguous()
    timestep = t * 1000
    out = tr(hidden_states=video, audio_hidden_states=audio, encoder_hidden_states=cond.text,
             audio_encoder_hidden_states=cond.audio_text, timestep=timestep, sigma=timestep,
             encoder_attention_mask=cond.text_mask, audio_encoder_attention_mask=cond.text_mask, num_frames=f,
             height=h, width=w, fps=24.0, audio_num_frames=audio_frames,
             video_coords=tr.rope.prepare_video_coords(b, f, h, w, x.device, fps=24.0),
             audio_coords=tr.audio_rope.prepare_audio_coords(b, audio_frames, x.device), isolate_modalities=False,
             spatio_temporal_guidance_blocks=None, perturbation_mask=None, use_cross_timestep=True, return_dict=False)
    return torch.cat([out[0].flatten(1), out[1].flatten(1)], dim=1)


@pytest.mark.parametrize("kind", KINDS)
def test_without_w_is_exactly_the_diffusers_base(tiny_pipeline, kind):
    policy, _ = policy_of(tiny_pipeline, kind)
    cond = policy.encode_condition(PROMPTS, sources(kind, 2))
    torch.manual_seed(0)
    x, t = torch.randn(2, *policy.sample_shape), torch.rand(2)
    with torch.no_grad():
        for _, p in policy.trainable_named():  # a trained adapter and trained preference modules
            p.add_(0.05 * torch.randn_like(p))
        base = plain_base_velocity(kind, tiny_pipeline(kind), x, t, cond)
        assert torch.equal(policy.reference_velocity(x, t, cond), base)
        with policy.net.disable_adapter():
            assert torch.equal(policy.velocity(x, t, None, cond), base)
        w = torch.tensor([[0.2, 0.8], [1.0, 0.0]])
        assert not torch.allclose(policy.velocity(x, t, w, cond), base, atol=1e-4)


@pytest.mark.parametrize("kind", ["sd3", "ltx2"])
def test_bf16_weights_keep_float32_timesteps_as_the_pipelines_do(tiny_pipeline, kind):
    policy, _ = policy_of(tiny_pipeline, kind, dtype="bf16")
    cond = policy.encode_condition(PROMPTS)
    torch.manual_seed(0)
    x, t = torch.randn(2, *policy.sample_shape), torch.rand(2)
    half = Condition(**{k: None if v is None else v.bfloat16() for k, v in vars(cond).items()})
    with torch.no_grad():
        base = plain_base_velocity(kind, tiny_pipeline(kind), x.bfloat16(), t, half, torch.bfloat16).float()
        assert torch.equal(policy.reference_velocity(x, t, cond), base)


@pytest.mark.parametrize("kind", KINDS)
def test_lora_on_transformer_attention_only_and_learner_build_matches(tiny_pipeline, kind):
    policy, _ = policy_of(tiny_pipeline, kind)
    names = [n for n, _ in policy.trainable_named()]
    assert any(".pref." in n for n in names) and any("lora_A" in n for n in names)
    assert all(".transformer." in n or ".pref." in n for n in names)
    assert all(any(p in n for p in ("to_q", "to_k", "to_v", "to_out", "add_", "pref.")) for n in names)
    if kind == "ltx2":  # video, audio, text cross- and audio<->video attention all adapted
        for attn in ("attn1", "attn2", "audio_attn1", "audio_attn2", "audio_to_video_attn", "video_to_audio_attn"):
            assert any(f".{attn}.to_q.lora_A" in n for n in names), attn
    learner, _ = policy_of(tiny_pipeline, kind, encoders=False)
    a, b = policy.trainable_state(), learner.trainable_state()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any("encoders" in n for n, _ in learner.named_parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_rollout_samples_decode_and_reproduce(tiny_pipeline, kind):
    policy, _ = policy_of(tiny_pipeline, kind)
    src = sources(kind, 2)
    groups = [GroupSpec(0, i, 0, seed=10 + i, preference=(0.5, 0.5), prompt=PROMPTS[i],
                        source_image=None if src is None else src[i]) for i in range(2)]
    for sampler in (SamplerConfig(kind="ode", num_steps=3), SamplerConfig(kind="sde", num_steps=3),
                    SamplerConfig(kind="ode", num_steps=2, guidance_scale=3.0, shift=3.0)):
        batch = rollout_groups(policy, groups, 3, sampler, policy_version=2)
        assert batch.samples.shape == (6, *policy.sample_shape)
        frames = (5,) if kind == "ltx2" else ()  # video: [B, F, H, W, 3]
        assert batch.images.shape == (6, *frames, 32, 32, 3) and batch.images.dtype == torch.uint8
        assert batch.reward_samples().shape == (6, *frames, 3, 32, 32)  # what the reward boundary gets
        assert batch.conditions.text.shape[0] == 2 and batch.reward_samples().max() <= 1.0
        payload = batch.reward_payload()  # what training sends: the uint8 images, channels first
        assert payload.dtype == np.uint8 and np.array_equal(payload / np.float32(255.0), batch.reward_samples())
        again = rollout_groups(policy, groups[1:], 3, sampler, policy_version=2)
        assert torch.allclose(batch.samples[3:], again.samples, atol=1e-5)
        if sampler.kind == "sde":
            assert batch.trajectory.log_probs.shape == (6, 3)
    if src is not None:
        assert np.array_equal(batch.source_images()[4], np.moveaxis(src[1], -1, 0))  # reward layout [3, H, W]
        other = [GroupSpec(0, 0, 0, seed=10, preference=(0.5, 0.5), prompt=PROMPTS[0], source_image=src[1])]
        swapped = rollout_groups(policy, other, 3, SamplerConfig(kind="ode", num_steps=2), 0)
        first = rollout_groups(policy, groups[:1], 3, SamplerConfig(kind="ode", num_steps=2), 0)
        assert not torch.allclose(swapped.samples, first.samples)  # the source image conditions the edit


@pytest.mark.parametrize("kind", ["sd3", "ltx2"])
def test_micro_batched_rollout_is_the_whole_batch_in_chunks(tiny_pipeline, kind):
    """Three groups of 3 through the model 1 group (micro-batch 4 -> 1 group) at a time: the same samples,
    images, conditions and group layout as one batch. Per-sample results differ only by how the kernels
    block a larger batch (float32 rounding, ~1e-6 after 3 steps); uint8 images by at most one level."""
    policy, _ = policy_of(tiny_pipeline, kind)
    groups = [GroupSpec(0, i, 0, seed=20 + i, preference=(i / 2, 1 - i / 2), prompt=PROMPTS[i % 2]) for i in range(3)]
    sampler = SamplerConfig(kind="ode", num_steps=3)
    whole = rollout_groups(policy, groups, 3, sampler, policy_version=4)
    chunked = rollout_groups(policy, groups, 3, sampler, policy_version=4, micro_batch_size=4)
    assert torch.allclose(chunked.samples, whole.samples, atol=1e-5)
    assert (chunked.images.int() - whole.images.int()).abs().max() <= 1
    assert torch.equal(chunked.group_index, whole.group_index) and chunked.groups == whole.groups
    assert torch.allclose(chunked.conditions.text, whole.conditions.text, atol=1e-6)
    assert chunked.policy_version == 4 and torch.equal(chunked.preferences, whole.preferences)


@pytest.mark.parametrize("kind", ["sd3", "ltx2"])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_pipeline, kind):
    grads = []
    for gc in (False, True):
        policy, _ = policy_of(tiny_pipeline, kind, gradient_checkpointing=gc)
        policy.train()
        cond = policy.encode_condition(PROMPTS)
        torch.manual_seed(0)
        x, t, w = torch.randn(2, *policy.sample_shape), torch.rand(2), torch.tensor([[0.3, 0.7], [0.9, 0.1]])
        with torch.no_grad():
            for _, p in policy.trainable_named():
                p.add_(0.05 * torch.randn_like(p))
        # The reference call in between clears the hooks' w: the recompute must still see the right one.
        loss = policy.velocity(x, t, w, cond).square().mean()
        with torch.no_grad():
            policy.reference_velocity(x, t, cond)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in policy.trainable_named()})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][k], grads[1][k], atol=1e-6) for k in grads[0])
    assert any(grads[0][k].abs().sum() > 0 for k in grads[0] if "pref.slider.gate" in k)


@pytest.mark.parametrize("kind", ["sd3", "ltx2"])
def test_trainable_state_roundtrip_through_a_file(tiny_pipeline, tmp_path, kind):
    policy, cfg = policy_of(tiny_pipeline, kind)
    with torch.no_grad():
        for _, p in policy.trainable_named():
            p.add_(0.05 * torch.randn_like(p))
    torch.save(policy.trainable_state(), tmp_path / "adapter.pt")
    fresh = build_policy(cfg, 2, tiny_pipeline(kind))
    fresh.load_trainable_state(torch.load(tmp_path / "adapter.pt", weights_only=True))
    cond = policy.encode_condition(PROMPTS)
    x, t, w = torch.randn(2, *policy.sample_shape), torch.rand(2), torch.full((2, 2), 0.5)
    with torch.no_grad():
        assert torch.equal(policy.velocity(x, t, w, cond), fresh.velocity(x, t, w, cond))
    size = (tmp_path / "adapter.pt").stat().st_size
    assert size < 0.5 * sum(p.numel() * 4 for p in policy.backbone.transformer.parameters())


def test_ltx2_geometry_and_conditioning_follow_the_pipeline(tiny_pipeline):
    """Latent grid, audio length and prompt encoding are what LTX2Pipeline computes for the same call."""
    policy, cfg = policy_of(tiny_pipeline, "ltx2")
    backbone, pipe = policy.backbone, policy.backbone._pipe
    frames, fps = cfg.diffusers.num_frames, cfg.diffusers.frame_rate
    assert backbone.latent_grid == ((frames - 1) // pipe.vae_temporal_compression_ratio + 1,
                                    32 // pipe.vae_spatial_compression_ratio, 32 // pipe.vae_spatial_compression_ratio)
    assert backbone.audio_frames == round(frames / fps * pipe.audio_sampling_rate / pipe.audio_hop_length
                                          / pipe.audio_vae_temporal_compression_ratio)
    embeds, mask, _, _ = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False, max_sequence_length=16)
    video, audio, mask = pipe.connectors(embeds, mask, padding_side="left")
    cond = policy.encode_condition(PROMPTS)
    assert torch.equal(cond.text, video) and torch.equal(cond.audio_text, audio) and torch.equal(cond.text_mask, mask.float())
    with pytest.raises(ValueError, match="num_frames"):
        policy_of(tiny_pipeline, "ltx2", num_frames=4)


def test_ltx2_rejects_editing_data_and_in_repo_pretraining(tmp_path):
    from infra.config import Config
    from pipelines.pretrain import pretrain_base

    with pytest.raises(ValueError, match="text-to-video"):
        Config.model_validate({"model": diffusers_model("ltx2"), "data": {"kind": "shapes_edit"}})
    cfg = Config.model_validate({"model": diffusers_model("ltx2"), "data": {"kind": "shapes"}})
    with pytest.raises(ValueError, match="model.diffusers.pretrained"):
        pretrain_base(cfg, tmp_path / "base", progress=False)


@pytest.mark.parametrize("encoders", [True, False], ids=["rollout", "learner"])
def test_sd3_time_grid_is_the_schedulers_sigmas(tiny_pipeline, encoders):
    """SD3.5's 25 steps at shift 3 as ``FlowMatchEulerDiscreteScheduler(shift=3).set_timesteps(25)`` sets them;
    the learner (no pipeline loaded) reads the same grid from the base's scheduler config."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    policy, _ = policy_of(tiny_pipeline, "sd3", encoders=encoders)
    sampler = SamplerConfig(num_steps=25, shift=3.0, time_grid="scheduler")
    reference = FlowMatchEulerDiscreteScheduler(shift=3.0)
    reference.set_timesteps(25)
    grid = policy.time_grid(sampler)
    assert grid.shape == (26,) and torch.allclose(grid, reference.sigmas)  # both float32 from the same numpy math
    # Hand check of diffusers' double shift: 1/1000 shifted once at init, spaced, shifted again.
    s_min = 3 * 1e-3 / (1 + 2 * 1e-3)
    last = 3 * s_min / (1 + 2 * s_min)
    assert abs(float(grid[-2]) - last) < 1e-6 and float(grid[-1]) == 0.0 and float(grid[0]) == 1.0
    assert abs(last - 0.0089) < 1e-4  # vs 0.111 on the plain grid (policies.samplers.time_grid)


def test_flux_time_grid_is_its_pipelines_dynamic_shift(tiny_pipeline):
    """FLUX pipelines pass ``sigmas=linspace(1, 1/N, N)`` and ``mu``; a static shift ``exp(mu)`` is the same grid."""
    import math

    from diffusers import FlowMatchEulerDiscreteScheduler

    policy, _ = policy_of(tiny_pipeline, "flux_kontext")
    reference = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    reference.set_timesteps(sigmas=np.linspace(1.0, 1 / 25, 25), mu=math.log(1.88))
    grid = policy.time_grid(SamplerConfig(num_steps=25, shift=1.88, time_grid="scheduler"))
    # exp(mu) / (exp(mu) + 1/t - 1) vs s t / (1 + (s - 1) t): equal in exact arithmetic, float32 apart.
    assert torch.allclose(grid, reference.sigmas, atol=1e-6)


def test_sd3_lora_adapts_the_joint_attention_only_as_the_reference():
    """A tiny SD3.5-style transformer with dual-attention blocks: LoRA on the 8 projections of ``attn`` (the
    context stream's ``to_add_out`` absent in the last, context-pre-only block), never on ``attn2``; gaussian
    init as the reference, still exactly the base at init (B = 0)."""
    from diffusers import SD3Transformer2DModel

    from policies.diffusers_backbones import SD3Backbone
    from policies.policy import Policy

    cfg = ModelConfig.model_validate({**diffusers_model("sd3"), "lora_init": "gaussian"})
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8,
                                        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                        pooled_projection_dim=16, out_channels=4, pos_embed_max_size=8,
                                        dual_attention_layers=(0, 1), qk_norm="rms_norm")
    # Independent count: walk the modules, keep Linear layers whose parent is a block's ``attn``.
    projections = {"to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"}
    expected = {f"transformer.{n}" for n, m in transformer.named_modules()
                if isinstance(m, torch.nn.Linear) and n.split(".attn.", 1)[-1] in projections and ".attn." in n}
    assert len(expected) == 8 * 3 - 1
    assert any(".attn2." in n for n, _ in transformer.named_modules())
    vae_config = {"block_out_channels": [16, 32], "latent_channels": 4}
    policy = Policy(SD3Backbone(transformer, None, vae_config, 2, cfg), cfg)
    adapted = {n.removeprefix("base_model.model.") for n, m in policy.net.named_modules() if hasattr(m, "lora_A")}
    assert adapted == expected
    lora_a = [p for n, p in policy.trainable_named() if "lora_A" in n]
    lora_b = [p for n, p in policy.trainable_named() if "lora_B" in n]
    assert all(float(b.detach().abs().max()) == 0.0 for b in lora_b) and len(lora_a) == len(expected)
    # gaussian: A ~ N(0, (1/r)^2), std 0.25 at r = 4; peft's default Kaiming-uniform is U(-1/4, 1/4) here
    # (fan-in 16), std 0.144. ~1.5k draws estimate the std to ~2%, so 0.03 separates the two.
    a = torch.cat([p.detach().flatten() for p in lora_a])
    assert abs(float(a.std()) - 1 / 4) < 0.03 and float(a.abs().max()) > 0.25
