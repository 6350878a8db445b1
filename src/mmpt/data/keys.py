"""Which config keys each data reader takes (read by the config checks and by the readers' caller)."""

# SourceConfig keys each reader takes (besides on_error / limit / prompt template); all required but OPTIONAL
READER_KEYS = {
    "coco-karpathy": ("path", "images", "split"), "flickr30k-karpathy": ("path", "images", "split"),
    "vqav2": ("questions", "annotations", "images"), "snli-ve": ("path", "images"),
    "refcoco": ("refs", "instances", "images", "split"), "llava": ("path", "images"), "jsonl": ("path", "images"),
    "hf": ("path", "split"),
}
OPTIONAL_KEYS = {("vqav2", "annotations"), ("jsonl", "images"), ("hf", "split")}  # test-dev has no answers; JSONL paths may be absolute

__all__ = ["OPTIONAL_KEYS", "READER_KEYS"]
