"""Producing the teacher's outputs: batched inference over tokenised rows."""

from collections.abc import Callable

import torch


@torch.inference_mode()
def predict_logits(
    model: torch.nn.Module,
    rows: list[dict],
    collate: Callable[[list[dict]], dict],
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Run a model over tokenised rows in length-sorted batches (little padding); logits come back in row order.

    Args:
        rows: dicts with the model's input fields (input_ids, attention_mask, ...), unpadded.
        collate: pads a list of rows into a batch of tensors.
        progress: called with the number of rows done after each batch.
    """
    model.eval()
    device = next(model.parameters()).device
    # Text rows go shortest first, so each batch pads little; other rows keep their order.
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].get("input_ids", ())))
    out: torch.Tensor | None = None
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate([rows[i] for i in chunk]).items()}
        outputs = model(**batch)
        logits = (outputs["logits"] if isinstance(outputs, dict) else outputs[0]).float().cpu()
        if out is None:
            out = torch.empty((len(rows), *logits.shape[1:]), dtype=torch.float32)
        out[torch.tensor(chunk)] = logits
        if progress is not None:
            progress(len(chunk))
    assert out is not None, "no rows to label"
    return out
