"""vlm4vla: turn a Hugging Face vision-language model into a vision-language-action policy."""

__version__ = "0.1.0.dev0"
