"""Data: shards on disk -> decoded RGB images -> multi-crop views -> batches."""
