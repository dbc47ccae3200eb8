"""Scoring services: the ``Reward`` protocol, the registry, the rewards, and their Ray Serve deployments.

- ``base``: ``Reward``, ``RewardInputs`` (what a reward scores), ``RewardInfo``, ``RewardServerError``.
- ``registry``: ``@register(name)`` and ``build_reward(spec)``.
- ``toy2d``: analytic rewards on 2-D points.
- ``shapes``: the shapes world: prompt adherence (analytic), shape area, SSIM and a feature distance to the source.
- ``serve_app``: one ``RewardDeployment`` per objective behind a ``RewardRouter`` (imports Ray Serve).
- ``client``: ``RewardClient``, what the training driver calls (Serve or in-process).

Submodules are imported on use, so importing this package does not import Ray Serve.
"""
