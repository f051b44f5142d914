"""Loss terms on what the teacher computes inside: hidden states and self-attention, as pure functions of tensors.

Conventions (the logit terms' are in `logits.py`):

* Hidden states are ``[batch, seq, width]``, one per mapped layer; attention maps ``[batch, heads, seq, seq]``
  (rows are queries, each a distribution over keys). The student's states are already projected to the teacher's
  width when the two differ (`LayerProjections`).
* ``mask`` is the ``[batch, seq]`` attention mask (1 = a real token). Padding positions never count, as tokens or
  as attention queries.
* A term is the mean over the real tokens (or rows, for `pkd`) of one batch, averaged over the mapped layers, so
  its weight does not grow with the number of layers mapped (TinyBERT and PKD sum over layers: their weights
  correspond to ours divided by the layer count). The trainer scales these batch means so that gradient
  accumulation and several processes give the gradient of one large batch (see `DistillationTrainer`).
* Teacher tensors are constants: detached, never receiving grads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _pairs(student: list[Tensor], teacher: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
    if len(student) != len(teacher) or not student:
        raise ValueError(f"got {len(student)} student and {len(teacher)} teacher layers; map at least one pair")
    for s, t in zip(student, teacher):
        if s.shape != t.shape:
            raise ValueError(f"student states of shape {tuple(s.shape)} against teacher states of shape {tuple(t.shape)}; "
                             "project the student's to the teacher's width first")
    return list(zip(student, teacher))


def _token_mask(states: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return torch.ones(states.shape[:2], dtype=torch.bool, device=states.device)
    if tuple(mask.shape) != tuple(states.shape[:2]):
        raise ValueError(f"mask has shape {tuple(mask.shape)} but states have tokens of shape {tuple(states.shape[:2])}")
    return mask.to(device=states.device).bool()


def hidden_mse(student: list[Tensor], teacher: list[Tensor], mask: Tensor | None = None) -> Tensor:
    """Mean squared error between mapped hidden states: ``mean_layers mean_tokens mean_d (h_s W - h_t)^2``.

    The hidden-state loss of TinyBERT (Jiao et al. 2020, eq. 8) and of PKD's full-sequence variant (Sun et al. 2019),
    averaged over real tokens and width instead of summed.
    """
    losses = []
    for s, t in _pairs(student, teacher):
        keep = _token_mask(s, mask)
        diff = s.float()[keep] - t.detach().float()[keep]
        losses.append(diff.pow(2).mean() if diff.numel() else s.sum() * 0.0)
    return torch.stack(losses).mean()


def hidden_cosine(student: list[Tensor], teacher: list[Tensor], mask: Tensor | None = None) -> Tensor:
    """``mean_layers mean_tokens (1 - cos(h_s, h_t))``: DistilBERT's cosine embedding loss on hidden states (Sanh
    et al. 2019), which aligns the states' directions and leaves their norms free."""
    losses = []
    for s, t in _pairs(student, teacher):
        keep = _token_mask(s, mask)
        cos = F.cosine_similarity(s.float()[keep], t.detach().float()[keep], dim=-1, eps=1e-8)
        losses.append((1.0 - cos).mean() if cos.numel() else s.sum() * 0.0)
    return torch.stack(losses).mean()


def pkd(student: list[Tensor], teacher: list[Tensor], mask: Tensor | None = None) -> Tensor:
    """Patient knowledge distillation (Sun et al. 2019, eq. 4): the squared distance between the L2-normalised
    first-token ([CLS]) states of mapped layers, ``mean_layers mean_rows || h_s/|h_s| - h_t/|h_t| ||^2``.

    `mask` is unused (the first token is always real) and accepted for a uniform signature.
    """
    losses = []
    for s, t in _pairs(student, teacher):
        cls_s = F.normalize(s[:, 0].float(), dim=-1)
        cls_t = F.normalize(t[:, 0].detach().float(), dim=-1)
        losses.append((cls_s - cls_t).pow(2).sum(dim=-1).mean())
    return torch.stack(losses).mean()


def attention_kl(student: list[Tensor], teacher: list[Tensor], mask: Tensor | None = None, eps: float = 1e-12) -> Tensor:
    """KL(teacher || student) between self-attention distributions of mapped layers, per head and query:
    ``mean_layers mean_(heads, real queries) sum_keys a_t log(a_t / a_s)``.

    The attention transfer of MiniLM (Wang et al. 2020, eq. 4: its last layer) and TinyBERT's attention loss
    (Jiao et al. 2020), which compares scores by MSE instead. Heads are compared one to one; when their numbers
    differ, the head-averaged distributions are. Keys the teacher gives no mass (padding) contribute 0; student
    probabilities are clamped at `eps` so a zero never gives an infinite loss. The student's attention must be
    taken before dropout (the trainer turns attention dropout off when this term is used).
    """
    losses = []
    for s, t in zip(student, teacher):
        if s.dim() != 4 or t.dim() != 4 or s.shape[0] != t.shape[0] or s.shape[2:] != t.shape[2:]:
            raise ValueError(f"attention maps of shape {tuple(s.shape)} (student) and {tuple(t.shape)} (teacher) "
                             "do not match: both must be [batch, heads, seq, seq] over the same tokens")
        if s.shape[1] != t.shape[1]:
            s, t = s.mean(dim=1, keepdim=True), t.mean(dim=1, keepdim=True)
        p_t = t.detach().float()
        log_s = s.float().clamp(min=eps).log()
        terms = torch.where(p_t > 0, p_t * (p_t.clamp(min=eps).log() - log_s), torch.zeros_like(p_t))
        per_query = terms.sum(dim=-1)  # [batch, heads, seq]
        keep = _token_mask(s[:, 0], mask)  # [batch, seq]: the queries that are real tokens
        keep = keep[:, None, :].expand_as(per_query)
        losses.append(per_query[keep].mean() if keep.any() else s.sum() * 0.0)
    if not losses:
        raise ValueError("got no attention maps; map at least one pair of layers")
    return torch.stack(losses).mean()


def embedding_mse(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """The embedding layer's outputs by MSE, the student's projected (TinyBERT's embedding loss, Jiao et al. 2020)."""
    return hidden_mse([student], [teacher], mask)


# Layer maps: which teacher layer each student layer learns from (0-based transformer layers, not counting the
# embeddings; hidden_states[i + 1] is layer i's output in transformers models).
LAYER_MAP_RULES = ("uniform", "last")


def layer_map(spec, student_layers: int, teacher_layers: int, copied_from: list[int] | None = None) -> dict[int, int]:
    """`{student_layer: teacher_layer}` from a config's `layer_map`: an explicit mapping, a rule, or None.

    None: the layers a `from_teacher` student was copied from (`copied_from`), else `uniform`.
    `uniform`: student layer j learns from teacher layer ``(j + 1) * teacher_layers // student_layers - 1``, every
    k-th layer ending at the last (PKD-skip, Sun et al. 2019). `last`: the student's layers learn from the
    teacher's last ones (PKD-last).
    """
    if spec is None:
        if copied_from is not None:
            return {j: int(t) for j, t in enumerate(copied_from)}
        spec = "uniform"
    if isinstance(spec, str):
        if spec == "uniform":
            return {j: (j + 1) * teacher_layers // student_layers - 1 for j in range(student_layers)}
        if spec == "last":
            return {j: teacher_layers - student_layers + j for j in range(student_layers)}
        raise ValueError(f"layer_map must be {' or '.join(LAYER_MAP_RULES)} or a mapping {{student_layer: teacher_layer}}, "
                         f"got {spec!r}")
    if not isinstance(spec, dict) or not spec:
        raise ValueError(f"layer_map must be {' or '.join(LAYER_MAP_RULES)} or a non-empty mapping "
                         f"{{student_layer: teacher_layer}}, got {spec!r}")
    out = {}
    for s, t in spec.items():
        try:
            s_i, t_i = int(s), int(t)
        except (TypeError, ValueError):
            raise ValueError(f"layer_map: {s!r}: {t!r} is not a pair of layer numbers") from None
        if str(s_i) != str(s).strip() or isinstance(t, bool) or float(t) != t_i:
            raise ValueError(f"layer_map: {s!r}: {t!r} is not a pair of layer numbers")
        if not 0 <= s_i < student_layers:
            raise ValueError(f"layer_map: student layer {s_i} is not in 0..{student_layers - 1}")
        if not 0 <= t_i < teacher_layers:
            raise ValueError(f"layer_map: teacher layer {t_i} is not in 0..{teacher_layers - 1}")
        out[s_i] = t_i
    return dict(sorted(out.items()))


class LayerProjections(nn.Module):
    """Learned linear maps from the student's width to the teacher's, one per mapped layer and one for the
    embeddings (TinyBERT's W_h and W_e), for students narrower than their teacher.

    They train with the student (the trainer attaches them to it, so the optimizer, checkpoints and DDP see them)
    and are removed before the student is saved, so a saved or exported student has the same size with or without.
    """

    def __init__(self, student_width: int, teacher_width: int, student_layers: list[int]):
        super().__init__()
        self.maps = nn.ModuleDict({str(j): nn.Linear(student_width, teacher_width) for j in student_layers})
        self.embeddings = nn.Linear(student_width, teacher_width)

    def forward(self, states: Tensor, layer: int | None) -> Tensor:
        """`states` of student layer `layer` (None: the embeddings) in the teacher's width."""
        return (self.embeddings if layer is None else self.maps[str(layer)])(states)
