"""D²4FAD: Dual Distillation for Few-Shot Anomaly Detection (Dong et al., ICLR 2026).

Reference implementation: https://github.com/ttttqz/D24FAD (``main.py``, ``test.py``, ``learn_to_weight.py``,
``resnet.py``, ``de_resnet.py``). Summary of the method as implemented there:

* teacher ``T``: ImageNet WideResNet50-2, frozen, inputs in ``[0, 1]`` without normalisation, 128 px;
* student ``S``: the reverse-distillation decoder (:class:`ReverseDistillationDecoder`) fed with ``T``'s ``layer4``
  (no OCBE bottleneck), producing ``[256@32, 512@16, 1024@8]`` features aligned with ``T``'s ``layer1..3``;
* learn-to-weight (L2W, ``Learn_to_weight``): per scale, a 1x1 conv maps each *support* student feature map to a
  key; ``logit_j = <vec(key_j), vec(S(query))> / sqrt(C)``; ``w = softmax_j(logit)``; the prototype is
  ``sum_j w_j S(support_j)`` (the un-projected support features);
* training (episodic, ``main.py::train``): ``loss = SSD + 0.1 * TSD`` (:class:`~medad_monai.losses.d24fad.D24FADLoss`
  over :meth:`D24FAD.episode_outputs`): student self-distillation against the prototype and teacher-student
  distillation of the query;
* inference (``test.py::evaluation``): ``map = sum_k up(1 - cos_c(S_k(query), prototype_k))`` (bilinear,
  ``align_corners=True``), Gaussian sigma 4, image score = max.
"""

import logging
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from medad_monai.anomaly_maps import GaussianBlur2d, multiscale_anomaly_map
from medad_monai.networks.body_extent import fill_missing_body_extent, register_body_extent
from medad_monai.networks.calibration import fill_missing_calibration_scores, register_calibration_scores
from medad_monai.networks.feature_cache import FeatureCache
from medad_monai.networks.rd_decoder import ReverseDistillationDecoder
from medad_monai.networks.teachers import WideResNetTeacher
from medad_monai.networks.volume_threshold import fill_missing_volume_calibration, register_volume_calibration

__all__ = ["D24FAD", "LearnToWeight", "convert_official_checkpoint", "l2w_prototype", "l2w_weights"]

logger = logging.getLogger("medad_monai")

_NUM_SCALES = 3
_SCALE_STRIDES = (4, 8, 16)  # teacher layer1..3 strides = sizes of the student outputs


def l2w_weights(query: Tensor, keys: Tensor, scale: float) -> Tensor:
    """Learn-to-weight attention weights (official ``Learn_to_weight.forward``: ``softmax(K Q^T * scale)``).

    Args:
        query: query student features ``(B, C, h, w)`` (not projected, as in the official code).
        keys: projected support features, shared ``(K, C, h, w)`` or per query ``(B, K, C, h, w)``.
        scale: logit scale, ``C ** -0.5`` in D²4FAD (channels only, although the dot product runs over ``C*h*w``).

    Returns:
        ``(B, K)`` float32 weights, each row summing to one.
    """
    b = query.shape[0]
    # The dot products run over C*h*w elements (262k at 128 px) and are only scaled by C**-0.5, so they can exceed
    # the float16 range: compute the logits in float32 even under autocast (eager; TorchScript ignores the context).
    with torch.autocast(device_type="cuda", enabled=False), torch.autocast(device_type="cpu", enabled=False):
        q = query.reshape(b, -1).float()
        if keys.dim() == 4:
            logits = q @ keys.reshape(keys.shape[0], -1).float().t()
        else:
            logits = torch.bmm(keys.reshape(b, keys.shape[1], -1).float(), q.unsqueeze(-1)).squeeze(-1)
        return torch.softmax(logits * scale, dim=1)


def l2w_prototype(weights: Tensor, values: Tensor) -> Tensor:
    """Weighted sum of support features: ``sum_j w[b, j] * values[(b,) j]`` -> ``(B, C, h, w)``.

    Args:
        weights: ``(B, K)`` from :func:`l2w_weights`.
        values: support student features, shared ``(K, C, h, w)`` or per query ``(B, K, C, h, w)``.
    """
    b = weights.shape[0]
    weights = weights.to(values.dtype)
    if values.dim() == 4:
        k, c, h, w = values.shape
        return (weights @ values.reshape(k, -1)).reshape(b, c, h, w)
    c, h, w = values.shape[2], values.shape[3], values.shape[4]
    return torch.bmm(weights.unsqueeze(1), values.reshape(b, values.shape[1], -1)).reshape(b, c, h, w)


class LearnToWeight(nn.Module):
    """Learn-to-weight prototype module of D²4FAD (official ``learn_to_weight.py::Learn_to_weight``).

    One ``Conv2d(C, C, 1)`` (with bias, PyTorch default initialisation as in the official code) per scale turns
    the support student features into keys; the query side is the raw query student feature map.

    Args:
        channels: channels per scale (student output order), default ``(256, 512, 1024)``.
    """

    def __init__(self, channels: Sequence[int] = (256, 512, 1024)) -> None:
        super().__init__()
        self.proj = nn.ModuleList([nn.Conv2d(c, c, kernel_size=1) for c in channels])
        self.scales: list[float] = [float(c) ** -0.5 for c in channels]

    def keys(self, support: list[Tensor]) -> list[Tensor]:
        """Project support features ``(K, C, h, w)`` or ``(B, K, C, h, w)`` per scale (shape preserved)."""
        out: list[Tensor] = []
        for i, proj in enumerate(self.proj):
            s = support[i]
            out.append(proj(s.flatten(0, s.dim() - 4)).reshape(s.shape))
        return out

    def forward(self, query: list[Tensor], support: list[Tensor], keys: list[Tensor] | None = None) -> list[Tensor]:
        """Per-scale prototypes ``(B, C, h, w)``; ``keys`` may be precomputed with :meth:`keys` (cached support)."""
        if keys is None:
            keys = self.keys(support)
        out: list[Tensor] = []
        for i in range(len(query)):
            w = l2w_weights(query[i], keys[i], self.scales[i])
            out.append(l2w_prototype(w, support[i]))
        return out


class D24FAD(nn.Module):
    """D²4FAD model: frozen WRN50-2 teacher, RD student decoder, learn-to-weight prototypes.

    Args:
        teacher_weights: ``"imagenet"``, a local ``.pth`` path, or ``"random"``/``None`` (see
            :class:`~medad_monai.networks.teachers.WideResNetTeacher`). The default ``"random"`` keeps construction
            offline and cheap (tests, or before ``load_state_dict`` of a trained checkpoint, which includes the
            teacher); use ``"imagenet"`` to train.
        image_size: square input size (multiple of 32); 128 in the paper.
        num_support: number of support (normal reference) images K per query; the paper uses 2, 4, 8.
        sigma: Gaussian smoothing of the inference map in pixels (4 in the official code; 0 disables).
        align_corners: bilinear upsampling flag of the inference map (``True`` in the official ``test.py``).

    Buffers (all in ``state_dict``, hence carried by checkpoints and TorchScript export):

    * ``support_feat_{0,1,2}``: ``(K, C_k, H/s_k, W/s_k)`` student features of the support set
      (``C = 256, 512, 1024``, ``s = 4, 8, 16``), zeros until :meth:`set_support`;
    * ``support_keys_{0,1,2}``: the L2W keys of those features (they do not depend on the query);
    * ``has_support``: bool scalar;
    * ``threshold``: float scalar decision threshold on the anomaly score, ``nan`` = not calibrated (set by
      calibration code; ``score > nan`` is always False).

    Loading a state dict whose support buffers have another K or image size resizes them and updates
    ``num_support``/``image_size``, so a checkpoint always loads into a default ``D24FAD()``.
    """

    __jit_ignored_attributes__ = ["teacher_cache"]  # a training-time Python object, not part of the model

    def __init__(
        self,
        teacher_weights: str | None = "random",
        image_size: int = 128,
        num_support: int = 4,
        sigma: float = 4.0,
        align_corners: bool = True,
    ) -> None:
        super().__init__()
        if image_size <= 0 or image_size % 32 != 0:
            raise ValueError(f"D24FAD: image_size must be a positive multiple of 32 (teacher stride), got {image_size}")
        if num_support < 1:
            raise ValueError(f"D24FAD: num_support must be >= 1, got {num_support}")
        self.image_size = int(image_size)
        self.num_support = int(num_support)
        self.align_corners = bool(align_corners)
        self.score_reduction = "max"  # the image score is the map's maximum (official test.py; medad_monai.scores)
        self.teacher = WideResNetTeacher(weights=teacher_weights, normalize=False)
        self.teacher_cache: FeatureCache | None = None  # set for a training run (handlers.teacher_cache)
        self.student = ReverseDistillationDecoder(in_channels=2048, num_blocks=(3, 4, 6), width_per_group=128)
        self.l2w = LearnToWeight(self.student.out_channels)
        self.blur = GaussianBlur2d(sigma)
        for i, (c, s) in enumerate(zip(self.student.out_channels, _SCALE_STRIDES)):
            shape = (self.num_support, c, self.image_size // s, self.image_size // s)
            self.register_buffer(f"support_feat_{i}", torch.zeros(shape))
            self.register_buffer(f"support_keys_{i}", torch.zeros(shape))
        self.register_buffer("has_support", torch.tensor(False))
        self.register_buffer("threshold", torch.tensor(float("nan")))
        register_body_extent(self)  # the body fraction of the slices it is served on, set with the threshold
        register_calibration_scores(self)  # the validation-normal scores the threshold came from
        register_volume_calibration(self)  # the threshold for 3D volumes, from normal volumes (NaN: none)

    # ------------------------------------------------------------------ helpers
    def _check_images(self, x: Tensor, name: str, expected_dim: int) -> None:
        if x.dim() != expected_dim:
            raise ValueError(f"D24FAD: {name} must have {expected_dim} dimensions, got shape {list(x.shape)}")
        if x.shape[-3] != 3:
            raise ValueError(
                f"D24FAD: {name} must have 3 channels (grayscale is replicated by the data pipeline), got {x.shape[-3]}"
            )
        if x.shape[-2] != self.image_size or x.shape[-1] != self.image_size:
            raise ValueError(
                f"D24FAD: {name} must be {self.image_size}x{self.image_size} pixels, got {x.shape[-2]}x{x.shape[-1]}"
            )

    def _check_num_support(self, k: int, name: str) -> None:
        if k != self.num_support:
            raise ValueError(f"D24FAD: {name} has {k} support images, the model expects num_support={self.num_support}")

    def _student_features(self, x: Tensor) -> list[Tensor]:
        """``S(T_layer4(x))``: student features in teacher order (the teacher runs without autograd)."""
        with torch.no_grad():
            emb = self.teacher(x)[3]
        return self.student(emb)

    def _anomaly_map(self, query: list[Tensor], prototype: list[Tensor], out_h: int, out_w: int) -> Tensor:
        amap = multiscale_anomaly_map(query, prototype, [out_h, out_w], "sum", self.align_corners)
        return self.blur(amap)

    def support_buffers(self) -> list[Tensor]:
        """Cached support student features ``[support_feat_0, support_feat_1, support_feat_2]``."""
        return [self.support_feat_0, self.support_feat_1, self.support_feat_2]

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Student and L2W parameters (the official optimiser: ``Adam(decoder + learning_weight)``)."""
        yield from self.student.parameters()
        yield from self.l2w.parameters()

    # ------------------------------------------------------------------ training
    @torch.jit.ignore
    def cached_teacher(self, images: Tensor) -> list[Tensor]:
        """The frozen teacher's features, through ``teacher_cache`` when one is set (training only,
        :class:`~medad_monai.networks.feature_cache.FeatureCache`)."""
        return self.teacher(images) if self.teacher_cache is None else self.teacher_cache(images, self.teacher)

    def episode_outputs(self, query: Tensor, support: Tensor) -> dict[str, list[Tensor]]:
        """The features of one episode (official ``main.py::train`` loop body) that
        :class:`~medad_monai.losses.d24fad.D24FADLoss` reads.

        Follows the official code: the support images go through the student *with* gradients, the prototype is
        not detached, and the student sees the query batch and each support slot ``k`` in separate calls, so in
        train mode BatchNorm uses per-call batch statistics exactly as there.

        Args:
            query: ``(B, 3, H, W)`` normal images in ``[0, 1]``.
            support: ``(B, K, 3, H, W)`` normal images of the same category, K = ``num_support``.

        Returns:
            ``{"query": S(query), "prototype": L2W prototype, "teacher": T(query) layer1..3}``, 3 scales each
            (the first two with a graph).
        """
        self._check_images(query, "query", 4)
        self._check_images(support, "support", 5)
        b, k = support.shape[0], support.shape[1]
        if b != query.shape[0]:
            raise ValueError(f"D24FAD: support batch size {b} does not match query batch size {query.shape[0]}")
        self._check_num_support(k, "support")
        with torch.no_grad():
            t_query = self.cached_teacher(query)
            # The frozen teacher is in eval mode, so batching all supports together is exact.
            t_support = self.cached_teacher(support.flatten(0, 1))[3].unflatten(0, (b, k))
        s_query = self.student(t_query[3])
        per_slot = [self.student(t_support[:, j]) for j in range(k)]
        s_support = [torch.stack([feats[i] for feats in per_slot], dim=1) for i in range(_NUM_SCALES)]
        prototype = self.l2w(s_query, s_support)
        return {"query": s_query, "prototype": prototype, "teacher": t_query[:_NUM_SCALES]}

    # ------------------------------------------------------------------ support cache
    @torch.no_grad()
    def set_support(self, support: Tensor) -> None:
        """Compute and store the support student features and L2W keys (``(K, 3, H, W)``, K = ``num_support``).

        Runs in eval mode (BatchNorm running statistics, as the official evaluation) and restores the previous
        mode. Call again after any change of the student/L2W weights (e.g. more training); loading a state dict
        restores the support stored with it.
        """
        self._check_images(support, "support", 4)
        self._check_num_support(support.shape[0], "support")
        was_training = self.training
        self.eval()
        try:
            feats = self._student_features(support)
            keys = self.l2w.keys(feats)
        finally:
            self.train(was_training)
        for i in range(_NUM_SCALES):
            setattr(self, f"support_feat_{i}", feats[i].detach().clone())
            setattr(self, f"support_keys_{i}", keys[i].detach().clone())
        self.has_support.fill_(True)

    def clear_support(self) -> None:
        """Forget the support set (buffers zeroed, ``has_support`` False)."""
        for i in range(_NUM_SCALES):
            getattr(self, f"support_feat_{i}").zero_()
            getattr(self, f"support_keys_{i}").zero_()
        self.has_support.fill_(False)

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Tensor],
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # The support buffers' shape depends on (num_support, image_size); adopt the incoming shape so that a
        # checkpoint saved with another K/size loads into a default D24FAD() instead of failing on a size mismatch.
        resized = False
        for i in range(_NUM_SCALES):
            for kind in ("feat", "keys"):
                name = f"support_{kind}_{i}"
                incoming = state_dict.get(prefix + name)
                current = getattr(self, name)
                if isinstance(incoming, Tensor) and incoming.dim() == 4 and incoming.shape != current.shape:
                    setattr(self, name, torch.zeros(incoming.shape, dtype=current.dtype, device=current.device))
                    resized = True
        fill_missing_body_extent(state_dict, prefix)  # type: ignore[arg-type]
        fill_missing_calibration_scores(state_dict, prefix)  # type: ignore[arg-type]
        fill_missing_volume_calibration(state_dict, prefix)  # type: ignore[arg-type]
        if resized:
            feat0 = self.support_feat_0
            if any(getattr(self, f"support_feat_{i}").shape[0] != feat0.shape[0] for i in range(_NUM_SCALES)):
                error_msgs.append(f"{type(self).__name__}: support buffers with different K in the state dict")
            self.num_support = int(feat0.shape[0])
            self.image_size = int(feat0.shape[-1]) * _SCALE_STRIDES[0]
            logger.info(
                "D24FAD: support buffers resized from the state dict: num_support=%d, image_size=%d",
                self.num_support,
                self.image_size,
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # ------------------------------------------------------------------ inference
    def forward(self, image: Tensor) -> Tensor:
        """Anomaly map ``(B, 1, H, W)`` of ``image`` ``(B, 3, H, W)`` against the stored support set.

        ``map = Gaussian_sigma(sum_k up(1 - cos_c(S_k(image), prototype_k)))``; the image score is its max
        (:func:`medad_monai.scores.image_score`).
        """
        self._check_images(image, "image", 4)
        if not bool(self.has_support):
            raise RuntimeError(
                "D24FAD: no support set stored; call set_support(support) first or use forward_with_support()"
            )
        query = self._student_features(image)
        support = [self.support_feat_0, self.support_feat_1, self.support_feat_2]
        keys = [self.support_keys_0, self.support_keys_1, self.support_keys_2]
        prototype = self.l2w(query, support, keys)
        return self._anomaly_map(query, prototype, image.shape[-2], image.shape[-1])

    def forward_with_support(self, image: Tensor, support: Tensor) -> Tensor:
        """Anomaly map recomputing the support features in this call, as the official ``test.py`` does.

        Args:
            image: ``(B, 3, H, W)``.
            support: ``(K, 3, H, W)`` shared by the batch, or ``(B, K, 3, H, W)`` per query (the official
                evaluation repeats the support set for every query of the batch, i.e. ``B * K`` support passes).
        """
        self._check_images(image, "image", 4)
        if support.dim() == 5:
            self._check_images(support, "support", 5)
            if support.shape[0] != image.shape[0]:
                raise ValueError(
                    f"D24FAD: support batch size {support.shape[0]} does not match image batch size {image.shape[0]}"
                )
            self._check_num_support(support.shape[1], "support")
            b, k = support.shape[0], support.shape[1]
            s_support = [f.unflatten(0, (b, k)) for f in self._student_features(support.flatten(0, 1))]
        else:
            self._check_images(support, "support", 4)
            self._check_num_support(support.shape[0], "support")
            s_support = self._student_features(support)
        query = self._student_features(image)
        prototype = self.l2w(query, s_support)
        return self._anomaly_map(query, prototype, image.shape[-2], image.shape[-1])


def convert_official_checkpoint(checkpoint: Mapping[str, Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Map an official D²4FAD checkpoint ``{'decoder': ..., 'weight': ...}`` to :class:`D24FAD` keys.

    ``decoder.layer{i}.*`` -> ``student.stages.{i-1}.*`` and ``weight.proj_in{i}.*`` -> ``l2w.proj.{i-1}.*``
    (``module.`` prefixes of ``nn.DataParallel`` are stripped). The official checkpoint has no teacher (it is the
    ImageNet WRN50-2), so load the result with ``strict=False`` into a model built with ``teacher_weights="imagenet"``.
    """
    out: dict[str, Tensor] = {}
    for key, value in checkpoint["decoder"].items():
        key = key[len("module.") :] if key.startswith("module.") else key
        layer, rest = key.split(".", 1)
        if not layer.startswith("layer"):
            raise KeyError(f"unexpected official decoder key {key!r}")
        out[f"student.stages.{int(layer[len('layer') :]) - 1}.{rest}"] = value
    for key, value in checkpoint["weight"].items():
        key = key[len("module.") :] if key.startswith("module.") else key
        proj, rest = key.split(".", 1)
        if not proj.startswith("proj_in"):
            raise KeyError(f"unexpected official learn-to-weight key {key!r}")
        out[f"l2w.proj.{int(proj[len('proj_in') :]) - 1}.{rest}"] = value
    return out
