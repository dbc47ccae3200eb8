"""Scoring services: the ``Reward`` protocol, the registry, the rewards, and their Ray Serve deployments.

- ``base``: ``Reward``, ``RewardInputs`` (what a reward scores), ``RewardInfo``, ``RewardServerError``.
- ``registry``: ``@register(name)`` and ``build_reward(spec)``.
- ``toy2d``: analytic rewards on 2-D points.
- ``vlm_judge``: a VLM's expected rubric score (transformers / OpenAI-compatible HTTP / vLLM engine).
- ``clip_scores``: CLIP score, PickScore, aesthetic head; ``fidelity``: SSIM / MS-SSIM, perceptual
  distance; ``ocr``: text rendering (RapidOCR).
- ``codecs``: the image layout (``[B, 3, H, W]`` in [0, 1]) and PNG / ``.npz`` bytes for HTTP.
- ``tiny_models``: tiny Qwen2-VL and CLIP built from configs (tests, benchmark, CPU runs).
- ``shapes``: the shapes world: prompt adherence (analytic), shape area, SSIM and a feature distance to the source.
- ``serve_app``: one ``RewardDeployment`` per objective behind a ``RewardRouter`` (imports Ray Serve).
- ``client``: ``RewardClient``, what the training driver calls (Serve or in-process).

Submodules are imported on use, so importing this package does not import Ray Serve.
"""
