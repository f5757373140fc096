"""ComfyUI node classes of the pack (thin adapters over emo_core). Filled by the ComfyUI-nodes issue."""
NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
