"""ComfyUI-EMO node pack. ComfyUI imports this file; it only exports the node mappings and WEB_DIRECTORY."""
# ComfyUI (and tests' load_pack) import this file as a package, so the relative import works. pytest also
# imports it, as a package named after the checkout's folder when that is a valid name, and as a bare
# top-level module when it is not (a clone named "ComfyUI-EMO"): then there is no package to import from.
if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
