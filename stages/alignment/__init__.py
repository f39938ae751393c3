"""Building blocks of stage II (`vla align`, ch07 §7.5–7.9, ch05 §5.2–5.8):

- `clusters`: the data side of the token buckets — per-sample difficulty of the demo data, which
  training samples each bucket cluster draws from, which objectives a cluster's samples serve;
- `bucket_loader`: training batches whose composition the token buckets decide (ch07 §7.6);
- `terms`: the loss terms the alignment recipe knows (which registered loss computes each, which
  modalities it needs) and the schedule checks against them;
- `retrieval`: held-out cross-modal retrieval with task-level relevance and the InfoNCE MI bound (ch05 §5.8).

The recipe that drives them is `stages.align`.
"""
