"""Training core shared by every ijtorch task (imports nothing heavy at package import).

Modules
-------
data
    Loading image/label pairs, ``percentile_normalize``, joint augmentation, foreground-balanced
    patches and the deterministic ``split_train_val``.
trainer
    ``Trainer``: AdamW, cosine/plateau schedules, early stopping, atomic per-epoch checkpoints
    (safetensors + JSON, no pickle), resume, progress events and cancellation.
tiling
    ``predict_tiled``: overlapping tiles for 2D/3D inference, stitched by cropping or blending.
progress
    ``ProgressEvent`` and ``emit`` (listener errors never stop a computation).
stardist_train
    ``train_stardist``: the StarDist training pipeline (also fine-tuning).
"""
